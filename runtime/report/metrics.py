"""Sparse utilisation of a run, MoE-CAP's S-MBU and S-MFU with its public code's defects fixed (torch-free).

How it works: docs/design.md, `runtime/report/metrics.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.hardware.profile import HardwareProfile
from planner.perf.costs import ModelCosts
from planner.perf.rates import Rates


def sum_of_range(first: int, last: int) -> int:
    """first + (first + 1) + ... + last (0 when last < first)."""
    return 0 if last < first else (first + last) * (last - first + 1) // 2


def sum_of_capped_range(first: int, last: int, cap: int | None) -> int:
    """sum of min(c, cap) for c in first..last."""
    if cap is None or last <= cap:
        return sum_of_range(first, last)
    if first > cap:
        return (last - first + 1) * cap
    return sum_of_range(first, cap) + (last - cap) * cap


@dataclass
class ContextTally:
    window: int | None = None  # the spec's sliding window (None: no sliding layers)
    decode_tokens: int = 0  # tokens produced by decode steps (all but each first token)
    decode_context: int = 0  # sum over decode tokens of the context they attend over
    decode_window_context: int = 0  # the same, capped at the window
    prefill_tokens: int = 0
    prefill_context: int = 0  # sum over prompt tokens of their causal context (1..p)
    prefill_window_context: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)  # completions per finish reason

    def add(self, prompt_len: int, generated: int, finish_reason: str | None = None) -> None:
        if finish_reason is not None:
            self.finish_reasons[finish_reason] = self.finish_reasons.get(finish_reason, 0) + 1
        decoded = max(generated - 1, 0)
        self.decode_tokens += decoded
        self.decode_context += sum_of_range(prompt_len + 1, prompt_len + decoded)
        self.decode_window_context += sum_of_capped_range(prompt_len + 1, prompt_len + decoded, self.window)
        self.prefill_tokens += prompt_len
        self.prefill_context += sum_of_range(1, prompt_len)
        self.prefill_window_context += sum_of_capped_range(1, prompt_len, self.window)


def _context_weighted(costs: ModelCosts, full: int, windowed: int, per_layer) -> float:
    """sum over layers of per_layer(layer) x (the full or the windowed context sum)."""
    spec = costs.spec
    return sum(
        per_layer(layer) * (windowed if spec.is_sliding_layer(layer) else full)
        for layer in range(spec.num_layers)
    )


def decode_bytes(
    costs: ModelCosts, steps: int, tokens: int, activated_experts: float, context: int, window_context: int
) -> dict[str, float]:
    """Bytes read by `steps` decode steps of `tokens` tokens in all; `activated_experts` is the sum over
    steps and MoE layers of the distinct experts hit."""
    spec, by_module = costs.spec, costs.module_bytes()
    shared = sum(v for m, v in by_module.items() if m not in ("experts", "embed"))
    if spec.tie_word_embeddings:
        shared += by_module["embed"]  # the tied table is read whole as the lm_head
    kv_per_token = costs.kv_bytes_per_token_per_layer()
    return {
        "weights": float(steps * shared + tokens * spec.hidden_size * spec.dtype_bytes),
        "experts": float(activated_experts * costs.expert_bytes()),
        "kv": _context_weighted(costs, context, window_context, lambda _layer: kv_per_token),
    }


def token_flops(costs: ModelCosts, tokens: int, context: int, window_context: int) -> dict[str, float]:
    """FLOPs of `tokens` tokens whose contexts sum to `context` (`window_context` capped at the window)."""
    return {
        "matmul": tokens * costs.flops_per_token(0),  # attention term is 0 at context 0
        "attention": _context_weighted(
            costs, context, window_context, lambda layer: costs.attention_flops_per_token(1, layer)
        ),
    }


def machine_peaks(profile: HardwareProfile, costs: ModelCosts) -> tuple[float, float]:
    """(peak memory bytes/s, peak dense FLOP/s) for this model on this profile, as the planner uses them."""
    rates = Rates.build(profile, costs)
    return (rates.device_read_bps if profile.has_device else rates.host_read_bps), rates.peak_flops


def utilisation(amount: float, seconds: float, peak_per_second: float) -> float | None:
    """amount / seconds / peak, or None when there is nothing to divide by."""
    if seconds <= 0 or peak_per_second <= 0:
        return None
    return amount / seconds / peak_per_second


@dataclass(frozen=True)
class SparseUtilisation:
    decode_bytes: dict[str, float]
    decode_flops: dict[str, float]
    prefill_flops: dict[str, float]
    s_mbu: float | None
    s_mfu: float | None
    prefill_s_mfu: float | None
    peak_memory_gbps: float
    peak_dense_tflops: float

    def to_dict(self) -> dict:
        return {
            "s_mbu": self.s_mbu,
            "s_mfu": self.s_mfu,
            "prefill_s_mfu": self.prefill_s_mfu,
            "decode_bytes": self.decode_bytes,
            "decode_flops": self.decode_flops,
            "prefill_flops": self.prefill_flops,
            "peak_memory_gbps": self.peak_memory_gbps,
            "peak_dense_tflops": self.peak_dense_tflops,
        }


def sparse_utilisation(
    costs: ModelCosts,
    profile: HardwareProfile,
    tally: ContextTally,
    decode_steps: int,
    activated_experts: float,
    decode_seconds: float,
    prefill_seconds: float,
) -> SparseUtilisation:
    bytes_per_s, flops_per_s = machine_peaks(profile, costs)
    read = decode_bytes(
        costs,
        decode_steps,
        tally.decode_tokens,
        activated_experts,
        tally.decode_context,
        tally.decode_window_context,
    )
    flops = token_flops(costs, tally.decode_tokens, tally.decode_context, tally.decode_window_context)
    prefill = token_flops(costs, tally.prefill_tokens, tally.prefill_context, tally.prefill_window_context)
    return SparseUtilisation(
        decode_bytes=read,
        decode_flops=flops,
        prefill_flops=prefill,
        s_mbu=utilisation(sum(read.values()), decode_seconds, bytes_per_s),
        s_mfu=utilisation(sum(flops.values()), decode_seconds, flops_per_s),
        prefill_s_mfu=utilisation(sum(prefill.values()), prefill_seconds, flops_per_s),
        peak_memory_gbps=bytes_per_s / 1e9,
        peak_dense_tflops=flops_per_s / 1e12,
    )

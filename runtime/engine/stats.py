"""What the engine hands back: one `Completion` per finished request and `RunStats` for the whole run.

`RunStats.module_seconds[phase][module]` sums measured seconds over the run (phase "decode": decode steps,
"prefill": packed prefill forwards). `per_decode_step()` / `per_prefill_chunk()` give means in the shape of
the plan's `module_times["decode_step"]` / `["prefill_chunk"]` (module names of docs/contracts.md; the
decode step's `prefill` is prefill wall time amortised per decode step, as the planner predicts it).
`activated_experts_per_layer` is the mean number of distinct experts the router hit per MoE layer per
decode step (from its real outputs, for S-MBU / S-MFU); `decode_batch_sizes_sum / decode_steps` is the mean
number of sequences per decode step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from runtime.sampling import GenerationState


@dataclass
class Completion:
    id: Any
    prompt_token_ids: list[int]
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    num_preemptions: int
    state: GenerationState


@dataclass
class RunStats:
    wall_seconds: float = 0.0
    prefill_seconds: float = 0.0  # wall time inside prefill forwards (sampling included)
    decode_seconds: float = 0.0  # wall time inside decode steps (sampling included)
    num_requests: int = 0
    prompt_tokens: int = 0  # of finished requests
    generated_tokens: int = 0  # of finished requests
    prefill_tokens: int = 0  # tokens prefilled, recomputation after preemption included
    decode_tokens: int = 0  # tokens decoded (one per sequence per step)
    decode_steps: int = 0  # steps that decoded at least one sequence
    prefill_forwards: int = 0  # steps that prefilled at least one chunk
    steps: int = 0  # passes over the layers (a step may both prefill and decode)
    decode_batch_sizes_sum: int = 0
    num_preemptions: int = 0
    module_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    activated_experts_sum: list[int] = field(default_factory=list)  # per layer, over decode steps
    activated_experts_per_step: list[float] = field(default_factory=list)  # mean over MoE layers, per step
    peak_host_bytes: int = 0
    peak_device_bytes: int = 0
    kv_cache_bytes: int = 0
    kv_capacity_tokens: int = 0
    resident_weight_bytes: int = 0
    streamed_weight_bytes: int = 0
    link_busy_seconds: float = 0.0  # emulated link: seconds it carried traffic inside decode steps
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def output_tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def total_tokens_per_second(self) -> float:
        return (self.prompt_tokens + self.generated_tokens) / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def requests_per_second(self) -> float:
        return self.num_requests / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def mean_decode_batch(self) -> float:
        return self.decode_batch_sizes_sum / self.decode_steps if self.decode_steps else 0.0

    @property
    def activated_experts_per_layer(self) -> list[float]:
        steps = max(self.decode_steps, 1)
        return [total / steps for total in self.activated_experts_sum]

    def per_decode_step(self) -> dict[str, float]:
        """Mean measured seconds per decode step by module; `prefill` is prefill time amortised per step."""
        if not self.decode_steps:
            return {}
        per_step = {
            module: seconds / self.decode_steps
            for module, seconds in self.module_seconds.get("decode", {}).items()
        }
        per_step["prefill"] = self.prefill_seconds / self.decode_steps
        return per_step

    def per_prefill_chunk(self) -> dict[str, float]:
        """Mean measured seconds per prefill forward (one packed chunk) by module, and in all (`prefill`)."""
        if not self.prefill_forwards:
            return {}
        per_chunk = {
            module: seconds / self.prefill_forwards
            for module, seconds in self.module_seconds.get("prefill", {}).items()
        }
        per_chunk["prefill"] = self.prefill_seconds / self.prefill_forwards
        return per_chunk

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            output_tokens_per_second=self.output_tokens_per_second,
            total_tokens_per_second=self.total_tokens_per_second,
            requests_per_second=self.requests_per_second,
            mean_decode_batch=self.mean_decode_batch,
            activated_experts_per_layer=self.activated_experts_per_layer,
            per_decode_step=self.per_decode_step(),
            per_prefill_chunk=self.per_prefill_chunk(),
        )
        return data

"""Memory budgets and the memory model: what each decision costs on the host and on the device.

How it works: docs/design.md, `planner/perf/memory.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.errors import UserError
from planner.hardware.profile import HardwareProfile
from planner.perf.gemm_dtype import upcast_extra_bytes
from planner.perf.layout import ModelLayout
from planner.plans.workload import Workload
from planner.units import KV_BLOCK_SIZE, GiB

HOST_RESERVE_BYTES = 2 * GiB
# the sampler's workspace per logit (`runtime.sampler`): where rows sample, fp32 probabilities, sorted fp32 and
# int64 ids; where every row is greedy, only the fp32 logits argmax reads
SAMPLING_BYTES_PER_LOGIT = 16.0
GREEDY_BYTES_PER_LOGIT = 4.0
HOST_RESERVE_FRACTION = 0.05
DEVICE_RESERVE_BYTES = 1 * GiB
DEVICE_RESERVE_FRACTION = 0.05
MAX_MEMORY_GIB = 1 << 20  # 1 PiB: anything above is a typo
STREAM_PARTS = (1, 2, 4, 8)  # the parts a streamed layer's experts may split into (emulated link)


@dataclass(frozen=True)
class Budgets:
    kv_bytes: float
    host_bytes: float
    device_bytes: float  # 0 without a device

    @classmethod
    def from_args(
        cls,
        profile: HardwareProfile,
        kv_gb: float,
        host_gb: float | None = None,
        device_gb: float | None = None,
    ) -> Budgets:
        m = profile.machine
        if device_gb is not None and not profile.has_device:
            raise UserError(
                f"--device-gb {device_gb} given but profile {profile.name} has no device",
                "drop --device-gb or pick a profile with a device",
            )
        host = m.host_memory_gib if host_gb is None else host_gb
        device = (m.device_free_gib or m.device_memory_gib) if device_gb is None else device_gb
        for flag, value in (
            ("--kv-gb", kv_gb),
            ("--host-gb", host),
            ("--device-gb", device if profile.has_device else 1.0),
        ):
            if not isinstance(value, (int, float)) or not 0 < value <= MAX_MEMORY_GIB:
                raise UserError(
                    f"{flag} {value!r} is not a plausible size in GiB",
                    f"pass {flag} between 0 and {MAX_MEMORY_GIB}",
                )
        return cls(
            kv_bytes=kv_gb * GiB,
            host_bytes=host * GiB,
            device_bytes=device * GiB if profile.has_device else 0.0,
        )

    def scaled(self, kv: float = 1.0, host: float = 1.0, device: float = 1.0) -> Budgets:
        return Budgets(self.kv_bytes * kv, self.host_bytes * host, self.device_bytes * device)


class _PerToken:
    """Decisions of one token per attention micro-batch and expert chunk: the transients per batch row."""

    attn_batch = 1.0
    expert_batch = 1.0


class MemoryModel:
    def __init__(
        self,
        layout: ModelLayout,
        workload: Workload,
        budgets: Budgets,
        has_device: bool,
        emulated: bool = False,
        kv_on_device: bool = False,
        gemm_dtype: str | None = None,
    ):
        self.layout, self.workload, self.budgets, self.has_device = layout, workload, budgets, has_device
        self.kv_on_device = kv_on_device and has_device
        spec, bp = layout.spec, layout.spec.dtype_bytes
        real_device = has_device and not emulated
        self.real_device = real_device
        self.groups = 2 if real_device else 1
        self.host_reserve = HOST_RESERVE_BYTES + HOST_RESERVE_FRACTION * budgets.host_bytes
        self.device_reserve = (
            DEVICE_RESERVE_BYTES + DEVICE_RESERVE_FRACTION * budgets.device_bytes if real_device else 0.0
        )
        self.per_seq_activations = spec.hidden_size * (2 * bp + 4) + 8 * spec.top_k + 8
        self.per_seq_staging = (layout.qkv_out_dim + layout.attn_out_dim) * bp if real_device else 0.0
        self.router_per_token = spec.num_experts * 4.0
        self.upcast_bytes = upcast_extra_bytes(spec, gemm_dtype)  # GEMM weights held wider (`gemm_dtype`)

    # ----- pieces -----
    def host_weights(self, c) -> np.ndarray:
        """Weight bytes the engine keeps in host memory: with a real device the streamed ones (the pinned arena of
        `runtime.engine.host_arena`, counted exactly), else all of them (GEMM weights at the plan's gemm_dtype)."""
        lay = self.layout
        if not self.real_device:
            return np.full(np.shape(c.residency), lay.total_bytes + self.upcast_bytes)
        return lay.total_bytes - lay.resident_bytes[c.residency.astype(int)]

    def pinned_weights(self, c) -> np.ndarray:
        """Weight bytes page-locked on the host: the streamed weights' arena (nothing without a real device)."""
        return self.host_weights(c) if self.real_device else np.zeros(np.shape(c.residency))

    def logits_bytes(self, rows) -> np.ndarray:
        """lm_head logits of `rows` rows and the sampler's workspace over them."""
        s = self.layout.spec
        sampler = SAMPLING_BYTES_PER_LOGIT if self.workload.sampled_share > 0 else GREEDY_BYTES_PER_LOGIT
        return rows * s.vocab_size * (s.dtype_bytes + sampler)

    def prefill_attention_bytes(self, keys) -> np.ndarray:
        """One layer's prefill attention over `keys` keys: cached K/V as read, plus K/V expanded to the query
        heads (MLA: the latent rows per head, values padded to the key width) for the fused kernels."""
        s, lay, bp = self.layout.spec, self.layout, self.layout.spec.dtype_bytes
        if s.attention == "mla":
            expanded = 2 * s.num_heads * (s.kv_lora_rank + s.qk_rope_head_dim) * bp
        else:
            expanded = 2 * s.num_heads * s.head_dim * bp
        return keys * (lay.prefill_kv_bytes_per_token_layer + expanded)

    def transients(self, c) -> np.ndarray:
        s, lay, bp = self.layout.spec, self.layout, self.layout.spec.dtype_bytes
        h = s.hidden_size
        parts = [
            c.attn_batch * (lay.qkv_out_dim + lay.attn_out_dim) * bp,
            self.logits_bytes(c.attn_batch),
            c.expert_batch * (2 * s.moe_intermediate_size + 2 * h) * bp,
        ]
        if s.shared_intermediate_size:
            parts.append(c.expert_batch * (2 * s.shared_intermediate_size + 2 * h) * bp)
        if lay.num_dense_layers:
            parts.append(c.expert_batch * (2 * s.dense_intermediate_size + 2 * h) * bp)
        return np.maximum.reduce(parts)

    def prefill_tokens(self, c) -> np.ndarray:
        return np.minimum(c.prefill_chunk, max(self.workload.prompt_tokens, 1.0))

    def prefill_workspace(self, c) -> np.ndarray:
        s, lay, w, bp = self.layout.spec, self.layout, self.workload, self.layout.spec.dtype_bytes
        tokens = self.prefill_tokens(c)
        h = s.hidden_size
        parts = [
            c.expert_batch * (2 * s.moe_intermediate_size + 2 * h) * bp,
            tokens * self.router_per_token,
            self.prefill_attention_bytes(tokens + w.prompt_len_max),
            self.logits_bytes(np.minimum(tokens / w.prompt_len_mean + 1, c.attn_batch)),
        ]
        if s.shared_intermediate_size:
            parts.append(c.expert_batch * (2 * s.shared_intermediate_size + 2 * h) * bp)
        if lay.num_dense_layers:
            parts.append(c.expert_batch * (2 * s.dense_intermediate_size + 2 * h) * bp)
        per_token = self.per_seq_activations + (lay.qkv_out_dim + lay.attn_out_dim) * bp
        return tokens * per_token + np.maximum.reduce(parts)

    def decode_activations(self, c, num_seqs) -> np.ndarray:
        return num_seqs * self.per_seq_activations + np.maximum(
            self.transients(c), num_seqs / self.groups * self.router_per_token
        )

    def stream_parts(self, c) -> np.ndarray:
        """Parts each streamed layer's experts stream in (`EngineConfig.stream_parts`): 1 where two whole layers
        fit beside everything else with one sequence; else the fewest of `STREAM_PARTS` that fit, or the most
        when none does (one token group only, and only when nothing but routed experts streams per layer: the engine hands each part back
        after its experts ran)."""
        lay, rho = self.layout, c.residency.astype(int)
        parts = np.ones(np.shape(rho))
        if self.real_device or not self.has_device:
            return parts
        rest = (
            lay.resident_bytes[rho]
            + lay.streamed_per_step[rho]
            + self.pass_workspace(c)
            + self.decode_activations(c, 1.0)
            + (lay.kv_bytes_one_sequence + lay.kv_bytes_per_slot if self.kv_on_device else 0.0)
        )
        split = lay.splits_in_parts(rho) & (
            rest + 2 * lay.stream_slot_bytes(rho, 1) > self.budgets.device_bytes
        )
        parts = np.where(split, STREAM_PARTS[-1], parts)  # none fits: the finest (the refusal names it)
        for p in reversed(STREAM_PARTS[1:]):  # the fewest parts that fit wins
            fits = rest + 2 * lay.stream_slot_bytes(rho, p) <= self.budgets.device_bytes
            parts = np.where(split & fits, p, parts)
        return parts

    def stream_buffers(self, c, slots: int = 2) -> np.ndarray:
        lay, rho = self.layout, c.residency.astype(int)
        return slots * lay.stream_slot_bytes(rho, self.stream_parts(c)) + lay.streamed_per_step[rho]

    def device_fixed(self, c, slots: int = 2) -> np.ndarray:
        """Device bytes that do not depend on N: weights, stream buffers, reserve."""
        if not self.has_device:
            return np.zeros(np.shape(c.residency))
        return (
            self.layout.resident_bytes[c.residency.astype(int)]
            + self.stream_buffers(c, slots)
            + self.device_reserve
        )

    def pass_workspace(self, c) -> np.ndarray:
        """Transients of the merged pass: decode micro-batch and FFN transients beside the prefill chunk's."""
        return self.transients(c) + self.prefill_workspace(c)

    def stream_slots(self, c, num_seqs) -> int:
        """3 when a third stream slot fits in the device budget beside everything else at N, else 2."""
        if not self.has_device or self.kv_on_device:
            return 2
        lay, rho = self.layout, int(np.ravel(c.residency)[0])
        slot = float(np.ravel(lay.stream_slot_bytes(rho, self.stream_parts(c)))[0])
        if slot <= 0 or self.layout.spec.num_layers <= 2:
            return 2
        used = float(
            np.ravel(self.device_fixed(c) + self.decode_activations(c, num_seqs) + self.prefill_workspace(c))[
                0
            ]
        )
        return 3 if used + slot <= self.budgets.device_bytes else 2

    # ----- capacity -----
    def max_num_seqs(self, c) -> np.ndarray:
        lay, b = self.layout, self.budgets
        kv_slot, kv_one = lay.kv_bytes_per_slot, lay.kv_bytes_one_sequence
        work = self.pass_workspace(c)
        n_kv = (b.kv_bytes - kv_one) / kv_slot
        host_left = b.host_bytes - self.host_weights(c) - self.host_reserve - kv_one
        a, r = self.per_seq_activations, self.router_per_token / self.groups
        if self.kv_on_device:  # one batch everywhere: KV and transients on the device grow with N, beside
            # the transients that do not (the expert batch's: as large as a prefill chunk; `work`)
            a = a + kv_slot + self.transients(_PerToken)
            dev_left = b.device_bytes - self.device_fixed(c) - kv_one
            n_host = (host_left + kv_one) / max(self.per_seq_staging, 1.0)
            n_mem = np.minimum(n_host, np.minimum((dev_left - work) / a, dev_left / (a + r)))
        elif self.has_device:
            n_host = host_left / (kv_slot + self.per_seq_staging)
            dev_left = b.device_bytes - self.device_fixed(c)
            n_mem = np.minimum(n_host, np.minimum((dev_left - work) / a, dev_left / (a + r)))
        else:
            n_mem = np.minimum((host_left - work) / (kv_slot + a), host_left / (kv_slot + a + r))
        return np.minimum(np.minimum(n_kv, n_mem), float(self.workload.num_prompts))

    def fixed_parts_fit(self, c) -> np.ndarray:
        work = self.pass_workspace(c)
        if self.has_device:
            return self.device_fixed(c) + work <= self.budgets.device_bytes
        return np.full(np.shape(c.residency), True)

    def kv_budget_bytes(self, num_seqs) -> np.ndarray:
        return num_seqs * self.layout.kv_bytes_per_slot + self.layout.kv_bytes_one_sequence

    def breakdown(self, c, num_seqs: float, slots: int = 2) -> tuple[dict[str, float], dict[str, float]]:
        """Bytes by category on the host and on the device for one decision (scalars), `slots` stream slots."""
        lay, b = self.layout, self.budgets
        decode = float(np.ravel(self.decode_activations(c, num_seqs))[0])
        prefill = float(np.ravel(self.prefill_workspace(c))[0])
        kv = float(np.ravel(self.kv_budget_bytes(num_seqs))[0])
        host = {
            "weights": float(np.ravel(self.host_weights(c))[0]),
            "kv_cache": 0.0 if self.kv_on_device else kv,
            "staging_buffers": num_seqs * self.per_seq_staging,
            "activations": 0.0 if self.has_device else decode + prefill,
            "reserve": self.host_reserve,
        }
        host["total"] = sum(host.values())
        host["budget"] = b.host_bytes
        host["pinned_weights"] = float(np.ravel(self.pinned_weights(c))[0])  # part of `weights`
        if not self.has_device:
            return host, {}
        rho = int(np.ravel(c.residency)[0])
        device = {
            "resident_weights": float(lay.resident_bytes[rho]),
            "stream_buffers": float(np.ravel(self.stream_buffers(c, slots))[0]),
            "decode_activations": decode,
            "prefill_workspace": prefill,
            "reserve": self.device_reserve,
        }
        if self.kv_on_device:
            device["kv_cache"] = kv
        device["total"] = (
            device["resident_weights"]
            + device["stream_buffers"]
            + decode
            + prefill
            + device["reserve"]
            + device.get("kv_cache", 0.0)
        )
        device["budget"] = b.device_bytes
        return host, device


def kv_budget_gib(spec, workload: Workload, num_seqs: int, block_size: int = KV_BLOCK_SIZE) -> float:
    """The KV budget (GiB) with which `MemoryModel.max_num_seqs` allows exactly `num_seqs` sequences: one
    longest sequence whole plus `num_seqs + 0.5` slots (the half slot keeps the floor at `num_seqs`)."""
    layout = ModelLayout.build(spec, workload, block_size)
    return (layout.kv_bytes_one_sequence + (num_seqs + 0.5) * layout.kv_bytes_per_slot) / GiB

"""The decisions a plan makes and the engine runs: one frozen value, validated once, in its constructor.
Embedded in both `Plan` and the runtime's `EngineConfig`; the defaults are a small engine's (tests build one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from planner.errors import UserError
from planner.modules import DEFAULT_RESIDENT, WEIGHT_MODULES, module_names
from planner.perf.gemm_dtype import WIDE
from planner.units import KV_BLOCK_SIZE
from planner.values import is_int

SCHEDULING = ("refill",)
BATCHING = ("module", "model")
_POSITIVE = ("num_seqs", "attn_batch", "expert_batch", "kv_budget_bytes", "kv_block_size", "prefill_chunk")


@dataclass(frozen=True)
class Decisions:
    num_seqs: int = 16  # N: sequences in flight
    attn_batch: int = 16  # b_a: attention micro-batch (sequences)
    expert_batch: int = 1024  # b_e: most routed rows one expert GEMM window sees
    kv_budget_bytes: int = 256 << 20  # KV cache, all layers
    kv_block_size: int = KV_BLOCK_SIZE  # tokens per KV block
    resident_modules: tuple[str, ...] = DEFAULT_RESIDENT  # weight modules kept on the device
    resident_experts_per_layer: int = 0  # routed experts 0..r-1 of every MoE layer kept there too
    stream_weights: bool = False  # stream the other weights to the device every step
    prefill_chunk: int = 512  # most prompt tokens per prefill forward
    attention_threads: int | None = None  # CPU threads of decode attention (None: torch's)
    compute_threads: int | None = None  # torch intra-op threads for GEMMs (None: unchanged)
    token_groups: int = 1  # 2: CPU attention of one group overlaps device work of the other
    scheduling: str = "refill"  # a finished slot takes the next prompt
    batching: str = "module"  # module (module-based batching) | model (one batch of N everywhere)
    emulated_link_gbps: float | None = None  # the device is the CPU behind a link paced to this
    stream_slots: int = 2  # device slots of streamed layers (3 when the device has room)
    stream_parts: int = 1  # a streamed layer's experts in this many parts, a slot each
    gemm_dtype: str | None = (
        None  # GEMM weights held in this dtype (planner.perf.gemm_dtype); None: the model's
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "resident_modules", tuple(self.resident_modules))
        _check(self)

    @property
    def overlaps(self) -> bool:
        """Two token groups alternate (module-based batching only)."""
        return self.token_groups == 2 and self.batching == "module"

    def is_resident(self, module: str, expert: int | None = None, streams: bool | None = None) -> bool:
        """Whether a weight module (routed expert `expert` of a MoE layer) lives on the device: everything does
        unless weights stream (`streams` overrides `stream_weights`: the engine streams only with a device, or
        when forced); then the resident modules and routed experts 0..resident_experts_per_layer-1."""
        streams = self.stream_weights if streams is None else streams
        if not streams or module in self.resident_modules:
            return True
        return module == "experts" and expert is not None and expert < self.resident_experts_per_layer


DECISION_FIELDS = tuple(f.name for f in fields(Decisions))


def _check(d: Decisions) -> None:
    def fail(name: str, why: str) -> UserError:
        return UserError(
            f"decision {name}={getattr(d, name)!r}: {why}", "re-create the plan with `planner solve`"
        )

    for name in _POSITIVE:
        if not is_int(getattr(d, name)) or getattr(d, name) < 1:
            raise fail(name, "must be a positive integer")
    for name in ("attention_threads", "compute_threads"):
        value = getattr(d, name)
        if value is not None and (not is_int(value) or value < 1):
            raise fail(name, "must be a positive integer (or null: torch's)")
    unknown = sorted(set(d.resident_modules) - set(WEIGHT_MODULES))
    if unknown:
        raise fail("resident_modules", f"unknown modules {unknown} (known: {module_names(WEIGHT_MODULES)})")
    if not is_int(d.resident_experts_per_layer) or d.resident_experts_per_layer < 0:
        raise fail("resident_experts_per_layer", "must be 0 or more")
    if not isinstance(d.stream_weights, bool):
        raise fail("stream_weights", "must be true or false")
    if d.token_groups not in (1, 2):
        raise fail("token_groups", "must be 1 or 2")
    if d.scheduling not in SCHEDULING:
        raise fail("scheduling", f"must be one of {list(SCHEDULING)}")
    if d.batching not in BATCHING:
        raise fail("batching", f"must be one of {list(BATCHING)}")
    if d.emulated_link_gbps is not None and not 0 < d.emulated_link_gbps < math.inf:
        raise fail("emulated_link_gbps", "must be a positive link speed in GB/s")
    if d.stream_slots not in (2, 3):
        raise fail("stream_slots", "must be 2 or 3")
    if d.gemm_dtype not in (None, WIDE):
        raise fail("gemm_dtype", f"must be null (the model's dtype) or {WIDE}")
    if not is_int(d.stream_parts) or d.stream_parts < 1:
        raise fail("stream_parts", "must be a positive integer")
    if d.stream_parts > 1 and d.overlaps:
        raise fail(
            "stream_parts",
            "each part is handed back after its experts ran, which two token groups cannot do (their FFNs "
            "both read every part): plan one token group or stream whole layers (stream_parts 1)",
        )

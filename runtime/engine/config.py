"""Engine configuration: the decisions a Plan makes, as the engine consumes them.

`EngineConfig` is a frozen dataclass. `EngineConfig.from_plan(plan)` copies the Plan's decision fields
(names in docs/contracts.md "Plan") without re-deriving any of them; tests and benchmarks build one
directly. The Plan's `token_groups` (1 or 2) sets `overlap`, its `batching` sets `module_batching`, and an
emulated-link plan sets `link_gbps` (copies across the link paced to it) and `device_memory_bytes` (the
device memory the engine holds its device-side allocations to, `runtime.engine.emulated_device`) with
`device_activation_bytes` (the plan's activation allowance inside it). Other fields the Plan does not carry
(`force_streaming`, `device`, `max_model_len`, `grouped_experts`) are engine switches with defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from planner import settings
from planner.errors import UserError
from planner.modules import DEFAULT_RESIDENT, WEIGHT_MODULES, module_names
from planner.plans.residency import is_resident
from planner.units import KV_BLOCK_SIZE, GiB

_PLAN_FIELDS = (
    "num_seqs",
    "attn_batch",
    "expert_batch",
    "kv_budget_bytes",
    "kv_block_size",
    "resident_modules",
    "resident_experts_per_layer",
    "stream_weights",
    "prefill_chunk",
    "attention_threads",
    "compute_threads",
)


@dataclass(frozen=True)
class EngineConfig:
    num_seqs: int = 16  # N: sequences in flight
    attn_batch: int = 16  # b_a: attention micro-batch (sequences)
    expert_batch: int = 1024  # b_e: most tokens one expert GEMM sees at once
    kv_budget_bytes: int = 256 << 20  # host KV cache, all layers
    kv_block_size: int = KV_BLOCK_SIZE  # tokens per KV block
    resident_modules: tuple[str, ...] = field(default=DEFAULT_RESIDENT)  # modules kept on the device
    resident_experts_per_layer: int = 0  # routed experts 0..k-1 of every MoE layer also kept there
    stream_weights: bool = False  # stream non-resident modules to the device each step
    stream_slots: int = 2  # device slots of streamed layers (3 when the plan has room)
    stream_parts: int = 1  # each streamed layer's experts in this many parts, a slot each (one token group)
    prefill_chunk: int = 512  # most prompt tokens per prefill forward
    attention_threads: int | None = None  # CPU threads of the decode-attention kernel (None: torch's)
    compute_threads: int | None = None  # torch intra-op threads for GEMMs (None: unchanged)
    module_batching: bool = True  # False: one batch size (N) through the whole forward
    force_streaming: bool = False  # stream even without a device (CPU tests of the streamer)
    overlap: bool | None = None  # two-group CPU-attention/device overlap; None: on with CUDA
    device: str = "cpu"  # "cpu" or "cuda[:i]"
    max_model_len: int | None = None  # longest prompt + generation; None: the model's maximum
    link_gbps: float | None = None  # the device is the CPU behind a link paced to this (emulated)
    device_memory_bytes: int | None = None  # emulated device memory the device-side allocations are held to
    device_activation_bytes: int = 0  # of which the plan gives activations and workspace
    grouped_experts: bool | None = None  # routed experts as grouped GEMMs; None: MOELENS_GROUPED_EXPERTS
    # (1 / 0) if set, else grouped wherever torch._grouped_mm runs (and is the default for gemm_dtype)
    gemm_dtype: str | None = None  # the plan's: GEMM weights held in this dtype (planner.perf.gemm_dtype)

    def __post_init__(self) -> None:
        for name in (
            "num_seqs",
            "attn_batch",
            "expert_batch",
            "kv_block_size",
            "prefill_chunk",
            "stream_slots",
            "stream_parts",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(
                    f"engine setting {name}={value!r} must be a positive integer",
                    f"set {name} >= 1 in the plan",
                )
        if self.resident_experts_per_layer < 0:
            raise UserError(
                f"resident_experts_per_layer={self.resident_experts_per_layer} is negative",
                "set it to 0 or more",
            )
        if self.link_gbps is not None and not self.link_gbps > 0:
            raise UserError(
                f"emulated link speed {self.link_gbps!r} GB/s is not positive",
                "re-create the profile with `runtime profile --emulate-link GBPS`",
            )
        if self.link_gbps is not None and self.device != "cpu":
            raise UserError(
                f"an emulated link runs on the CPU, not on {self.device}",
                "run the emulated-link plan with device cpu, or plan for the real device",
            )
        if self.stream_parts > 1 and self.uses_overlap:
            raise UserError(
                f"stream_parts={self.stream_parts} hands each part back after its experts ran, which two "
                "token groups (overlap) cannot do: their FFNs both read every part",
                "plan one token group (emulated link) or stream whole layers (stream_parts 1)",
            )
        if self.kv_budget_bytes <= 0:
            raise UserError(
                f"KV budget {self.kv_budget_bytes} bytes is not positive", "give the plan a KV budget"
            )
        unknown = sorted(set(self.resident_modules) - set(WEIGHT_MODULES))
        if unknown:
            raise UserError(
                f"resident_modules names unknown modules {unknown}",
                f"use names from {module_names(WEIGHT_MODULES)}",
            )
        object.__setattr__(self, "resident_modules", tuple(self.resident_modules))
        if self.grouped_experts is None:
            object.__setattr__(self, "grouped_experts", settings.grouped_experts_setting())

    @property
    def upcast_dtype(self) -> str | None:
        """The dtype GEMM weights are held in where it is not the model's: the plan's `gemm_dtype`, honoured
        on the CPU with nothing streamed (`planner.perf.gemm_dtype`)."""
        return self.gemm_dtype if self.device == "cpu" and not (self.streams or self.emulated) else None

    @property
    def streams(self) -> bool:
        """Whether the streamer runs: the plan asks for it with a device, or tests force it."""
        return self.force_streaming or (self.stream_weights and (self.device != "cpu" or self.emulated))

    @property
    def emulated(self) -> bool:
        """Whether the device is the CPU behind an emulated link."""
        return self.link_gbps is not None

    @property
    def uses_overlap(self) -> bool:
        if not self.module_batching:
            return False
        return self.device != "cpu" if self.overlap is None else self.overlap

    @property
    def effective_attn_batch(self) -> int:
        return self.attn_batch if self.module_batching else self.num_seqs

    @property
    def effective_expert_batch(self) -> int:
        """Model-based batching: the expert GEMM sees whatever the one batch routes to it, unchunked."""
        return self.expert_batch if self.module_batching else 1 << 62

    def is_resident(self, module: str, expert: int | None = None) -> bool:
        """Whether a weight module (routed expert `expert` of a MoE layer) lives on the device."""
        return is_resident(
            module, expert, self.streams, self.resident_modules, self.resident_experts_per_layer
        )

    def with_(self, **changes) -> EngineConfig:
        return replace(self, **changes)

    @classmethod
    def from_plan(cls, plan, **overrides) -> EngineConfig:
        """Copy the Plan's decisions; `overrides` set engine switches (device, module_batching, ...)."""
        missing = [name for name in _PLAN_FIELDS if not hasattr(plan, name)]
        if missing:
            raise UserError(
                f"the plan lacks the decision fields {missing}",
                "re-solve it with `planner solve` from this version",
            )
        values = {name: getattr(plan, name) for name in _PLAN_FIELDS}
        values["stream_slots"] = getattr(plan, "stream_slots", 2)
        values["stream_parts"] = getattr(plan, "stream_parts", 1)
        values["gemm_dtype"] = getattr(plan, "gemm_dtype", None)
        values["resident_modules"] = tuple(values["resident_modules"] or ())
        values["stream_weights"] = bool(values["stream_weights"])
        if "overlap" not in overrides and hasattr(plan, "token_groups"):
            overrides["overlap"] = plan.token_groups == 2
        if "module_batching" not in overrides and hasattr(plan, "batching"):
            overrides["module_batching"] = plan.batching != "model"
        gbps = getattr(plan, "emulated_link_gbps", None)
        if gbps is not None:
            device = plan.memory.get("device", {})
            values.update(
                link_gbps=gbps,
                device_memory_bytes=int(plan.budgets.device_gib * GiB),
                device_activation_bytes=int(
                    max(device.get("decode_activations", 0.0), device.get("prefill_workspace", 0.0))
                ),
            )
            overrides.setdefault("device", "cpu")  # the emulated device is this CPU
        if "device" not in overrides:
            overrides["device"] = _default_device()
        return cls(**values, **overrides)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

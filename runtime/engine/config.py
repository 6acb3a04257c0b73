"""Engine configuration: a plan's `Decisions` (validated there, once) plus the switches only the engine has.

`EngineConfig.from_plan(plan, **switches)` embeds the Plan's decisions as they are; an emulated-link plan also
sets the emulated device memory the engine holds its device-side allocations to. The device defaults to
`runtime.device.default_device()` on every path (the CPU behind an emulated link).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

from planner import settings
from planner.errors import UserError
from planner.plans.decisions import DECISION_FIELDS, Decisions
from planner.units import GiB
from runtime.device import default_device

if TYPE_CHECKING:
    from planner.plans.plan import Plan


@dataclass(frozen=True)
class EngineConfig:
    decisions: Decisions = field(default_factory=Decisions)
    device: str | None = None  # "cpu" | "cuda[:i]"; None: default_device() (the CPU behind an emulated link)
    force_streaming: bool = False  # stream even without a device (CPU tests of the streamer)
    max_model_len: int | None = None  # longest prompt + generation; None: the model's maximum
    device_memory_bytes: int | None = None  # emulated device memory the device-side allocations are held to
    device_activation_bytes: int = 0  # of which the plan gives activations and workspace
    grouped_experts: bool | None = None  # routed experts as grouped GEMMs; None: MOELENS_GROUPED_EXPERTS
    # (1 / 0) if set, else grouped wherever torch._grouped_mm runs (and is the default for gemm_dtype)

    def __post_init__(self) -> None:
        if self.device is None:
            object.__setattr__(self, "device", "cpu" if self.emulated else str(default_device()))
        if self.emulated and self.device != "cpu":
            raise UserError(
                f"an emulated link runs on the CPU, not on {self.device}",
                "run the emulated-link plan with device cpu, or plan for the real device",
            )
        if self.grouped_experts is None:
            object.__setattr__(self, "grouped_experts", settings.grouped_experts_setting())

    @property
    def upcast_dtype(self) -> str | None:
        """The dtype GEMM weights are held in where it is not the model's: the plan's `gemm_dtype`, honoured
        on the CPU with nothing streamed (`planner.perf.gemm_dtype`)."""
        return (
            self.decisions.gemm_dtype
            if self.device == "cpu" and not (self.streams or self.emulated)
            else None
        )

    @property
    def link_gbps(self) -> float | None:
        """The emulated link's speed (None: a real device, or none)."""
        return self.decisions.emulated_link_gbps

    @property
    def emulated(self) -> bool:
        """Whether the device is the CPU behind an emulated link."""
        return self.decisions.emulated_link_gbps is not None

    @property
    def streams(self) -> bool:
        """Whether the streamer runs: the plan asks for it with a device, or tests force it."""
        return self.force_streaming or (
            self.decisions.stream_weights and (self.device != "cpu" or self.emulated)
        )

    @property
    def module_batching(self) -> bool:
        return self.decisions.batching == "module"

    @property
    def uses_overlap(self) -> bool:
        return self.decisions.overlaps

    @property
    def effective_attn_batch(self) -> int:
        return self.decisions.attn_batch if self.module_batching else self.decisions.num_seqs

    @property
    def effective_expert_batch(self) -> int:
        """Model-based batching: the expert GEMM sees whatever the one batch routes to it, unchunked."""
        return self.decisions.expert_batch if self.module_batching else 1 << 62

    def is_resident(self, module: str, expert: int | None = None) -> bool:
        """Whether a weight module (routed expert `expert` of a MoE layer) lives on the device."""
        return self.decisions.is_resident(module, expert, streams=self.streams)

    def to_dict(self) -> dict:
        """Flat, as run reports record it: the decisions, the engine settings, and what they imply."""
        flat = {**asdict(self.decisions), **{f.name: getattr(self, f.name) for f in fields(self)}}
        del flat["decisions"]
        return {
            **flat,
            "module_batching": self.module_batching,
            "overlap": self.uses_overlap,
            "link_gbps": self.link_gbps,
        }

    def with_(self, **changes) -> EngineConfig:
        """A copy with `changes`: decision fields (num_seqs, ...) change the decisions, the rest the switches."""
        decided, switches = _split(changes)
        return replace(self, decisions=replace(self.decisions, **decided), **switches)

    @classmethod
    def build(cls, decisions: Decisions | None = None, **changes) -> EngineConfig:
        """From keyword settings, decision fields among them, over `decisions` (default: `Decisions()`)."""
        decided, switches = _split(changes)
        return cls(decisions=replace(decisions or Decisions(), **decided), **switches)

    @classmethod
    def from_plan(cls, plan: Plan, **switches) -> EngineConfig:
        """The Plan's decisions as they are; `switches` set engine-only settings (device, force_streaming, ...)
        or change decisions (num_seqs=..., as `with_`)."""
        if plan.decisions.emulated_link_gbps is not None:
            device = plan.memory.get("device", {})
            switches.setdefault("device_memory_bytes", int(plan.budgets.device_gib * GiB))
            switches.setdefault(
                "device_activation_bytes",
                int(max(device.get("decode_activations", 0.0), device.get("prefill_workspace", 0.0))),
            )
        return cls.build(plan.decisions, **switches)


def _split(changes: dict) -> tuple[dict, dict]:
    """Keyword changes -> (decision fields, engine settings); an unknown name is a TypeError, as for a call."""
    decided = {k: v for k, v in changes.items() if k in DECISION_FIELDS}
    switches = {k: v for k, v in changes.items() if k not in DECISION_FIELDS}
    unknown = sorted(set(switches) - {f.name for f in fields(EngineConfig)})
    if unknown:
        raise TypeError(f"EngineConfig has no setting {unknown}")
    return decided, switches

"""Hardware-profile schema: the nested frozen dataclasses of a profile and the curve interpolation.

How it works: docs/design.md, `planner/hardware/profile_schema.py`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, fields, replace

import numpy as np

from planner.hardware.this_machine import MachineRates
from planner.specs.weight_formats import WEIGHT_FORMAT_BYTES

SCHEMA_VERSION = 1
PROVENANCE_KINDS = ("measured", "datasheet", "calibrated")
ATTENTION_LAYOUTS = ("gqa", "mla")
GEMM_DTYPES = ("bfloat16", "float16", "float32")
DEQUANT_FORMATS = tuple(WEIGHT_FORMAT_BYTES)  # `dequant_ns` keys: the stored weight formats


def _interp_loglog(xs: tuple[float, ...], ys: tuple[float, ...], x: float) -> float:
    """Linear in (log x, log y) between measured points, clamped to the end values outside them."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    t = math.log(x / x0) / math.log(x1 / x0)
    return math.exp((1 - t) * math.log(y0) + t * math.log(y1))


def _interp_linear(xs: tuple[float, ...], ys: tuple[float, ...], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return (1 - t) * ys[i - 1] + t * ys[i]


def steady_state_order(curve) -> tuple[int, int]:
    """How the planner ranks attention curves (or points to measure) when no batch or context is asked for: the
    largest batch x context first (the steady state of high-throughput decoding), then the largest group."""
    return curve.batch * curve.context, curve.group


@dataclass(frozen=True)
class Provenance:
    kind: str  # measured | datasheet | calibrated
    date: str = ""
    command: str = ""
    moelens_version: str = ""
    sources: tuple[str, ...] = ()  # datasheets, papers, price pages
    calibrated_from: tuple[str, ...] = ()  # report.json files a calibrated profile was fitted to

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "date": self.date,
            "command": self.command,
            "moelens_version": self.moelens_version,
            "sources": list(self.sources),
            "calibrated_from": list(self.calibrated_from),
        }


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int  # usable logical CPUs
    host_memory_gib: float
    device: str | None = None  # None: CPU only
    device_memory_gib: float = 0.0
    cpu_flags: tuple[str, ...] = ()  # the interesting ones: avx2, avx512*, amx*
    host_free_gib: float | None = None
    device_free_gib: float | None = None
    interconnect: str | None = None  # "PCIe 4.0 x16"
    torch: str | None = None
    cuda: str | None = None
    fingerprint: MachineRates | None = None  # measured by `runtime profile` (planner.hardware.this_machine)

    def to_dict(self) -> dict:
        return {
            "cpu": self.cpu,
            "cores": self.cores,
            "cpu_flags": list(self.cpu_flags),
            "host_memory_gib": self.host_memory_gib,
            "host_free_gib": self.host_free_gib,
            "device": self.device,
            "device_memory_gib": self.device_memory_gib,
            "device_free_gib": self.device_free_gib,
            "interconnect": self.interconnect,
            "torch": self.torch,
            "cuda": self.cuda,
            **({"fingerprint": self.fingerprint.to_dict()} if self.fingerprint is not None else {}),
        }


@dataclass(frozen=True)
class Price:
    usd_per_hour: float | None = None
    purchase_usd: float | None = None
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "usd_per_hour": self.usd_per_hour,
            "purchase_usd": self.purchase_usd,
            "sources": list(self.sources),
        }


@dataclass(frozen=True)
class RateCurve:
    """Bandwidth (GB/s) against transfer size (bytes)."""

    sizes: tuple[float, ...]
    gbps: tuple[float, ...]

    def gbps_at(self, nbytes: float) -> float:
        return _interp_loglog(self.sizes, self.gbps, nbytes)

    def to_dict(self) -> dict:
        return {"sizes": list(self.sizes), "gbps": list(self.gbps)}


@dataclass(frozen=True)
class Links:
    h2d_pinned: RateCurve
    h2d_pageable: RateCurve
    d2h_pinned: RateCurve
    d2h_pageable: RateCurve

    def to_dict(self) -> dict:
        return {k: getattr(self, k).to_dict() for k in LINK_CURVES}


LINK_CURVES = ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable")


@dataclass(frozen=True)
class GemmCurve:
    """F(m): rate of an [m, k] x [k, n] GEMM against m (rows)."""

    shape: str  # "expert h4096 i14336 gate/up"
    n: int  # output features
    k: int  # input features
    rows: tuple[int, ...]
    tflops: tuple[float, ...]

    def tflops_at(self, m: float) -> float:
        return _interp_loglog(self.rows, self.tflops, m)

    def to_dict(self) -> dict:
        return {
            "shape": self.shape,
            "n": self.n,
            "k": self.k,
            "rows": list(self.rows),
            "tflops": list(self.tflops),
        }


@dataclass(frozen=True)
class AttentionCurve:
    """CPU decode attention: KV bytes read per second against thread count, at one operating point."""

    layout: str  # gqa | mla
    batch: int
    context: int
    group: int  # query heads per KV head (MLA: heads sharing the latent)
    threads: tuple[int, ...]
    gbps: tuple[float, ...]

    def gbps_at_threads(self, threads: float) -> float:
        return _interp_linear(self.threads, self.gbps, threads)

    def to_dict(self) -> dict:
        return {
            "layout": self.layout,
            "batch": self.batch,
            "context": self.context,
            "group": self.group,
            "threads": list(self.threads),
            "gbps": list(self.gbps),
        }


@dataclass(frozen=True)
class EmulatedLink:
    """The device is this machine's CPU behind an emulated link (`planner.hardware.emulated_link`): copies across it
    are paced to `gbps` (each direction, one copy at a time) and device-side memory is held to
    `device_memory_gib`. The profile's `links` curves are flat at `gbps`; compute and attention are the CPU's."""

    gbps: float
    device_memory_gib: float

    def to_dict(self) -> dict:
        return {"gbps": self.gbps, "device_memory_gib": self.device_memory_gib}


@dataclass(frozen=True)
class Memory:
    read_gbps: float  # host memory, one sweep reading a large buffer, all cores
    copy_gbps: float  # host in-memory copy (bytes copied per second)

    def to_dict(self) -> dict:
        return {"read_gbps": self.read_gbps, "copy_gbps": self.copy_gbps}


@dataclass(frozen=True)
class Efficiency:
    """Multipliers on the measured rates and fixed costs, fitted by calibration (`planner.perf.rates`).
    `gemm_small_m` multiplies GEMM rates at one row on top of `gemm`, fading out by 128 rows; `call_overhead_s`
    is added to every module call (each expert, each micro-batch, ...); `step_overhead_s` to every decode step
    and prefill forward."""

    gemm: float = 1.0
    attention: float = 1.0
    copy: float = 1.0
    step_overhead_s: float = 0.0
    gemm_small_m: float = 1.0
    call_overhead_s: float = 0.0
    overhead: float = 1.0  # multiplies every measured cost of the `overheads` section

    def to_dict(self) -> dict:
        return {
            "gemm": self.gemm,
            "gemm_small_m": self.gemm_small_m,
            "attention": self.attention,
            "copy": self.copy,
            "step_overhead_s": self.step_overhead_s,
            "call_overhead_s": self.call_overhead_s,
            "overhead": self.overhead,
        }


@dataclass(frozen=True)
class CallOverheads:
    """Fixed seconds per call of each engine code path, beyond the GEMM time the curves give (module docstring)."""

    embed: float = 0.0
    qkv_proj: float = 0.0
    qk_norm: float = 0.0
    attention: float = 0.0
    o_proj: float = 0.0
    router: float = 0.0
    expert_grouping: float = 0.0
    expert: float = 0.0
    shared_experts: float = 0.0
    dense_mlp: float = 0.0
    lm_head: float = 0.0
    sampling: float = 0.0
    prefill_attention: float = 0.0
    decode_step: float = 0.0
    prefill_forward: float = 0.0

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in CALL_OVERHEADS}


@dataclass(frozen=True)
class ElementwiseBySize:
    """Marginal nanoseconds per element against the elements one call touches (`elements`, ascending), for
    some of `ELEMENTWISE_COSTS`; interpolated log-log, clamped to the end values."""

    elements: tuple[int, ...]
    ns: dict[str, tuple[float, ...]]

    def at(self, name: str, elements):
        log_ns = np.log(np.asarray(self.ns[name], dtype=np.float64))
        log_e = np.log(np.maximum(np.asarray(elements, dtype=np.float64), 1.0))
        return np.exp(np.interp(log_e, np.log(np.asarray(self.elements, dtype=np.float64)), log_ns))

    def to_dict(self) -> dict:
        return {"elements": list(self.elements), **{name: list(v) for name, v in self.ns.items()}}


@dataclass(frozen=True)
class ElementwiseCosts:
    """Nanoseconds per element of the elementwise work: at large sizes (memory-bound, the scalars) and, when
    measured, against the size of one call (`by_size`: small tensors stay in cache and cost less)."""

    norm: float = 0.0
    rope: float = 0.0
    add: float = 0.0
    attention_score: float = 0.0
    sampling: float = 0.0  # per logit of a greedy row (argmax)
    sampling_temperature: float = 0.0  # per logit of a sampled row; 0: not measured (planner.perf.overheads)
    sampling_top_p: float = 0.0  # per logit of a row sampled with top_p < 1 (a sort); 0: not measured
    by_size: ElementwiseBySize | None = None

    def ns(self, name: str, elements_per_call):
        """ns per element of `name` for calls of that many elements (the large-size scalar without a curve)."""
        if self.by_size is not None and name in self.by_size.ns:
            return self.by_size.at(name, elements_per_call)
        return getattr(self, name)

    def to_dict(self) -> dict:
        out = {
            name: getattr(self, name)
            for name in ELEMENTWISE_COSTS
            if getattr(self, name) or name not in SAMPLING_MODE_COSTS  # older profiles keep their hash
        }
        return {**out, "by_size": self.by_size.to_dict()} if self.by_size is not None else out


CALL_OVERHEADS = tuple(f.name for f in fields(CallOverheads))
MLA_CALL_OVERHEADS = ("qkv_proj", "attention", "o_proj", "prefill_attention")
ELEMENTWISE_COSTS = tuple(f.name for f in fields(ElementwiseCosts) if f.name != "by_size")
SAMPLING_MODE_COSTS = ("sampling_temperature", "sampling_top_p")


@dataclass(frozen=True)
class Overheads:
    call_s: CallOverheads = field(default_factory=CallOverheads)
    elementwise_ns: ElementwiseCosts = field(default_factory=ElementwiseCosts)
    mla_call_s: dict[str, float] | None = None  # MLA_CALL_OVERHEADS; None: MLA priced with call_s
    mla_attention_score_ns: float | None = None  # None: MLA priced with elementwise_ns.attention_score

    def calls_for(self, attention: str) -> dict[str, float]:
        """Seconds per call for a model of this attention kind (`gqa` / `mla`)."""
        calls = self.call_s.to_dict()
        if attention == "mla" and self.mla_call_s is not None:
            calls.update(self.mla_call_s, qk_norm=0.0)
        return calls

    def elementwise_for(self, attention: str) -> ElementwiseCosts:
        if attention == "mla" and self.mla_attention_score_ns is not None:
            return replace(self.elementwise_ns, attention_score=self.mla_attention_score_ns)
        return self.elementwise_ns

    @property
    def measured(self) -> bool:
        """False when every cost is zero (the section was absent)."""
        return any(self.call_s.to_dict().values()) or any(
            getattr(self.elementwise_ns, name) for name in ELEMENTWISE_COSTS
        )

    def to_dict(self) -> dict:
        mla = {"mla_call_s": dict(self.mla_call_s)} if self.mla_call_s is not None else {}
        if self.mla_attention_score_ns is not None:
            mla["mla_attention_score_ns"] = self.mla_attention_score_ns
        return {"call_s": self.call_s.to_dict(), **mla, "elementwise_ns": self.elementwise_ns.to_dict()}

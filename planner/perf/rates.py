"""Vectorised rate tables built once from a `HardwareProfile` for one model: what the performance model reads.

How it works: docs/design.md, `planner/perf/rates.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from planner.hardware.profile import ElementwiseCosts, HardwareProfile
from planner.perf.costs import ModelCosts
from planner.perf.row_buckets import expected_padding

ROW_GRID = 2.0 ** np.arange(0, 21)  # 1 .. 1,048,576 rows
SIZE_GRID = 2.0 ** np.arange(10, 41)  # 1 KiB .. 1 TiB transfers
SMALL_M_FADE_ROWS = 128.0  # efficiency.gemm_small_m applies fully at 1 row, not at all from here


def gemm_efficiency(rows, gemm: float, gemm_small_m: float) -> np.ndarray:
    """gemm x gemm_small_m^w(m), w falling log-linearly from 1 at one row to 0 at SMALL_M_FADE_ROWS rows."""
    log_m = np.log(np.maximum(np.asarray(rows, dtype=np.float64), 1.0))
    weight = np.clip(1.0 - log_m / np.log(SMALL_M_FADE_ROWS), 0.0, 1.0)
    return gemm * gemm_small_m**weight


@dataclass(frozen=True)
class RateScale:
    link: float = 1.0
    cpu: float = 1.0
    host_memory: float = 1.0
    device_compute: float = 1.0


@dataclass(frozen=True)
class GemmTable:
    """Rate F(m) of one [n, k] weight (or a whole expert FFN) against rows m, monotone-cleaned."""

    flops_per_row: float
    log_rows: np.ndarray
    log_flops_per_s: np.ndarray

    @classmethod
    def sample(
        cls, profile: HardwareProfile, n: int, k: int, flops_per_row: float, speed: float | np.ndarray
    ) -> GemmTable:
        matrices = max(int(round(flops_per_row / (2.0 * n * k))), 1)  # an expert FFN: 3
        rates = np.array([profile.gemm_tflops(float(m), n, k, matrices) for m in ROW_GRID]) * 1e12 * speed
        rates = np.maximum.accumulate(rates)
        per_row = np.minimum.accumulate(rates / ROW_GRID)
        return cls(flops_per_row, np.log(ROW_GRID), np.log(per_row * ROW_GRID))

    def flops_per_s(self, rows) -> np.ndarray:
        log_m = np.log(np.maximum(np.asarray(rows, dtype=np.float64), 1e-9))
        return np.exp(np.interp(log_m, self.log_rows, self.log_flops_per_s))

    def seconds(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        return self.flops_per_row * rows / self.flops_per_s(np.maximum(rows, 1.0))

    @property
    def peak_flops_per_s(self) -> float:
        return float(np.exp(self.log_flops_per_s.max()))

    @property
    def gemv_flops_per_s(self) -> float:
        return float(np.exp(self.log_flops_per_s[0]))


@dataclass(frozen=True)
class ModuleGemm:
    """All the matrices one module multiplies its tokens by, one after another, plus a fixed cost per call."""

    tables: tuple[GemmTable, ...]
    call_s: float = 0.0

    def seconds(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        total = np.where(rows > 0, self.call_s, 0.0) if self.tables else np.zeros_like(rows)
        for table in self.tables:
            total = total + table.seconds(rows)
        return total

    def grouped_seconds(self, rows, groups, calls, window) -> np.ndarray:
        """`groups` GEMMs of `rows` rows each, run as `calls` grouped calls over windows of at most `window` rows
        (one fixed cost per call, not per group; unpadded), as the engine's grouped experts do: a group whose rows
        span several windows is multiplied once per window, so small windows pay the weight reads again."""
        rows = np.asarray(rows, dtype=np.float64)
        pieces = np.maximum(rows / np.maximum(window, 1.0), 1.0)
        total = np.zeros_like(rows)
        for table in self.tables:
            total = total + table.seconds(rows / pieces)
        return np.asarray(groups, dtype=np.float64) * pieces * total + (
            np.asarray(calls) * self.call_s if self.tables else 0.0
        )

    def chunked_seconds(self, rows, chunk, padded: bool = False) -> np.ndarray:
        """`padded`: each chunk's rows rounded up to its GEMM row bucket (`planner.perf.row_buckets`), as the
        engine does for routed experts."""
        rows = np.asarray(rows, dtype=np.float64)
        chunks = np.maximum(rows / np.maximum(chunk, 1.0), 1.0)
        per_chunk = rows / chunks
        return chunks * self.seconds(per_chunk * expected_padding(per_chunk) if padded else per_chunk)

    @property
    def empty(self) -> bool:
        return not self.tables


def module_matrices(costs: ModelCosts) -> dict[str, list[tuple[int, int, float]]]:
    """(n, k, flops per row) of each matrix a module multiplies, per layer (expert FFNs as one entry)."""
    s = costs.spec
    h = s.hidden_size
    if s.attention == "mla":
        q_out = s.num_heads * (s.qk_nope_head_dim + s.qk_rope_head_dim)
        qkv = [(q_out, h)] if not s.q_lora_rank else [(s.q_lora_rank, h), (q_out, s.q_lora_rank)]
        # kv_b splits as the engine runs it: w_uk absorbed into the query (qkv_proj), w_uv applied to the
        # attention's latent output (o_proj)
        qkv += [(s.kv_lora_rank + s.qk_rope_head_dim, h), (s.num_heads * s.qk_nope_head_dim, s.kv_lora_rank)]
        o_in = s.num_heads * s.v_head_dim
        out = [(o_in, s.kv_lora_rank), (h, o_in)]
    else:
        qkv = [
            (s.num_heads * s.head_dim, h),
            (s.num_kv_heads * s.head_dim, h),
            (s.num_kv_heads * s.head_dim, h),
        ]
        out = [(h, s.num_heads * s.head_dim)]
    linear = {
        "qkv_proj": [(n, k, 2.0 * n * k) for n, k in qkv],
        "o_proj": [(n, k, 2.0 * n * k) for n, k in out],
        "router": [(s.num_experts, h, 2.0 * s.num_experts * h)],
        "lm_head": [(s.vocab_size, h, 2.0 * s.vocab_size * h)],
    }
    ffn = {
        "experts": s.moe_intermediate_size,
        "shared_experts": s.shared_intermediate_size,
        "dense_mlp": s.dense_intermediate_size,
    }
    for module, width in ffn.items():
        linear[module] = [(width, h, 6.0 * h * width)] if width else []
    return linear


@dataclass(frozen=True)
class OverheadCosts:
    call_s: dict[str, float]
    elementwise: ElementwiseCosts
    scale: float = 1.0

    @classmethod
    def of(cls, profile: HardwareProfile, attention: str = "gqa") -> OverheadCosts:
        scale = profile.efficiency.overhead
        measured = profile.overheads
        return cls(
            call_s={k: v * scale for k, v in measured.calls_for(attention).items()},
            elementwise=measured.elementwise_for(attention),
            scale=scale,
        )

    def element_seconds(self, name: str, elements, calls=1.0) -> np.ndarray:
        """Seconds for `elements` elements of `name` work done in `calls` equal calls."""
        elements = np.asarray(elements, dtype=np.float64)
        per_call = elements / np.maximum(np.asarray(calls, dtype=np.float64), 1.0)
        return elements * self.elementwise.ns(name, per_call) * 1e-9 * self.scale


@dataclass(frozen=True)
class Rates:
    gemm: dict[str, ModuleGemm]
    attention_bps: np.ndarray  # index = threads (0 .. cores)
    host_read_bps: float
    device_read_bps: float
    peak_flops: float
    has_device: bool
    step_overhead_s: float
    call_overhead_s: float = 0.0
    overheads: OverheadCosts | None = None
    host_copy_bps: float = 0.0  # host-to-host copies (forced streaming without a device)
    link_log_sizes: np.ndarray = field(default_factory=lambda: np.log(SIZE_GRID))
    h2d_log_bps: np.ndarray | None = None
    d2h_log_bps: np.ndarray | None = None

    @classmethod
    def build(
        cls, profile: HardwareProfile, costs: ModelCosts, scale: RateScale | None = None, narrow: bool = False
    ) -> Rates:
        """`narrow`: the GEMMs run in the 16-bit model dtype on float32 curves (`planner.perf.gemm_dtype`)."""
        scale = scale or RateScale()
        eff = profile.efficiency
        has_device = profile.has_device
        on_host = profile.computes_on_host  # no device, or the CPU behind an emulated link
        compute_speed = gemm_efficiency(ROW_GRID, eff.gemm, eff.gemm_small_m) * (
            scale.cpu if on_host else scale.device_compute
        )
        if narrow and profile.gemm_narrow_speed:
            rows, ratio = zip(*profile.gemm_narrow_speed)
            compute_speed = compute_speed * np.interp(np.log(ROW_GRID), np.log(rows), ratio)
        gemm = {
            module: ModuleGemm(
                tuple(GemmTable.sample(profile, n, k, fpr, compute_speed) for n, k, fpr in mats),
                eff.call_overhead_s,
            )
            for module, mats in module_matrices(costs).items()
        }
        tables = [t for g in gemm.values() for t in g.tables]
        layout = "mla" if costs.spec.attention == "mla" else "gqa"
        cores = profile.machine.cores
        attention = np.array([0.0] + [profile.attention_gbps(t, layout) for t in range(1, cores + 1)])
        attention = np.maximum.accumulate(attention * 1e9 * eff.attention * scale.cpu)
        dtype_bytes = costs.spec.dtype_bytes
        host_read = profile.memory.read_gbps * 1e9 * scale.host_memory
        gemv_flops = (
            max(curve.tflops_at(1.0) for curve in profile.gemm_curves) * 1e12 * float(compute_speed[0])
        )
        device_read = host_read if on_host else gemv_flops * dtype_bytes / 2
        link = {}
        if has_device:
            for name, fn in (("h2d", profile.h2d_gbps), ("d2h", profile.d2h_gbps)):
                bps = (
                    np.array([fn(float(size), pinned=True) for size in SIZE_GRID])
                    * 1e9
                    * eff.copy
                    * scale.link
                )
                link[name] = np.log(bps)
        host_copy = profile.memory.copy_gbps * 1e9 * eff.copy * scale.host_memory
        return cls(
            gemm=gemm,
            attention_bps=attention,
            host_read_bps=host_read,
            device_read_bps=device_read,
            host_copy_bps=host_copy,
            peak_flops=max(t.peak_flops_per_s for t in tables),
            has_device=has_device,
            step_overhead_s=eff.step_overhead_s,
            call_overhead_s=eff.call_overhead_s,
            overheads=OverheadCosts.of(profile, costs.spec.attention),
            h2d_log_bps=link.get("h2d"),
            d2h_log_bps=link.get("d2h"),
        )

    def h2d_bps(self, nbytes) -> np.ndarray:
        return self._link(self.h2d_log_bps, nbytes)

    def d2h_bps(self, nbytes) -> np.ndarray:
        return self._link(self.d2h_log_bps, nbytes)

    def _link(self, log_bps: np.ndarray | None, nbytes) -> np.ndarray:
        if log_bps is None:
            raise ValueError("no link on a profile without a device")
        log_size = np.log(np.maximum(np.asarray(nbytes, dtype=np.float64), 1.0))
        return np.exp(np.interp(log_size, self.link_log_sizes, log_bps))

    @property
    def max_h2d_bps(self) -> float:
        return float(np.exp(self.h2d_log_bps.max())) if self.h2d_log_bps is not None else 0.0

    @property
    def cores(self) -> int:
        return len(self.attention_bps) - 1

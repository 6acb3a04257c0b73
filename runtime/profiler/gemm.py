"""Device GEMM rate F(m) through the runtime's own functions, in the model dtype.

`measure_gemm_curve(shape, rows, device, dtype, ...)` times `runtime.model.layers.expert_ffn` (expert
shapes: three GEMMs, 6*m*h*I flops) or `F.linear` (projections, 2*m*n*k flops) for each row count m and
returns a `GemmCurve` in TFLOP/s. The weights rotate over enough random copies to exceed the last-level
cache, so small-m rates are the memory-bound rates a streamed expert sees, not cache-resident ones. Rows
stop once one call takes longer than `max_call_s` (the curve is clamped at its last point beyond that,
where it has plateaued) or the shape's time budget (not counting weight set-up) is spent; the first row
is always measured.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

import torch

from planner.hardware.profile import GemmCurve
from runtime.profiler.grids import GemmShape
from runtime.profiler.timing import median_seconds, significant

MAX_ROTATION_BYTES = 1 << 30


def _expert_ffn() -> Callable[..., torch.Tensor]:
    from runtime.model.layers import expert_ffn

    return expert_ffn


def _linear_kernel() -> Callable[..., torch.Tensor]:
    from runtime.model.layers import linear

    return linear


def _weight_sets(
    shape: GemmShape, device: torch.device, dtype: torch.dtype, cache_bytes: int
) -> list[tuple[torch.Tensor, ...]]:
    weight_bytes = shape.weight_elems * torch.finfo(dtype).bits // 8
    copies = max(1, min(math.ceil(4 * cache_bytes / weight_bytes), MAX_ROTATION_BYTES // weight_bytes))
    std = 1.0 / math.sqrt(shape.k)

    def random(rows: int, cols: int) -> torch.Tensor:
        return (torch.randn(rows, cols, device=device, dtype=torch.float32) * std).to(dtype)

    if shape.kind == "expert_ffn":
        return [
            (random(shape.n, shape.k), random(shape.n, shape.k), random(shape.k, shape.n))
            for _ in range(copies)
        ]
    return [(random(shape.n, shape.k),) for _ in range(copies)]


def measure_gemm_curve(
    shape: GemmShape,
    rows: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    cache_bytes: int,
    budget_s: float,
    max_call_s: float,
    repeats: int = 5,
    weight_dtype: torch.dtype | None = None,
) -> GemmCurve:
    """The curve over the leading rows that fit the budgets (at least the first row); inputs in `dtype`,
    weights in `weight_dtype` (default `dtype`; wider: `runtime.model.layers.linear` upcasts)."""
    weights = _weight_sets(shape, device, weight_dtype or dtype, cache_bytes)
    linear = _linear_kernel()
    began = time.perf_counter()
    calls = itertools.count()
    expert_ffn = _expert_ffn() if shape.kind == "expert_ffn" else None
    measured_rows: list[int] = []
    tflops: list[float] = []
    last_s = 0.0
    for m in rows:
        left = budget_s - (time.perf_counter() - began)
        predicted_s = 3 * last_s * m / measured_rows[-1] if measured_rows else 0.0  # 2 warm-ups + 1 sample
        if measured_rows and (left <= 0 or predicted_s > left):
            break
        x = torch.randn(m, shape.k, device=device, dtype=torch.float32).to(dtype)  # [m, k]

        def call(x: torch.Tensor = x) -> torch.Tensor:
            w = weights[next(calls) % len(weights)]
            return expert_ffn(x, *w) if expert_ffn is not None else linear(x, w[0])

        last_s = median_seconds(call, device, warmup=2, repeats=repeats, budget_s=max(left, 0.0) / 2)
        measured_rows.append(m)
        tflops.append(significant(shape.flops_per_row * m / last_s / 1e12))
        if last_s > max_call_s:
            break
    weights.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return GemmCurve(shape=shape.label, n=shape.n, k=shape.k, rows=tuple(measured_rows), tflops=tuple(tflops))


NARROW_SPEED_ROWS = (1, 16, 256)  # 256 rows decides the dtype (compute-bound); fewer read weights mostly
PICK_ROUNDS = 3


def pick_gemm_dtype(
    device: torch.device, shape: GemmShape, dtype: torch.dtype, cache_bytes: int
) -> tuple[torch.dtype, tuple[tuple[int, float], ...]]:
    """The weights' dtype the GEMMs run fastest in (`planner.perf.gemm_dtype`): on the CPU float32 where it
    beats `dtype` by over 10% at `shape` x 256 rows (AVX-512 cores without AMX), else `dtype`. With float32,
    also the profile's `gemm_narrow_speed`: `dtype`'s rate over float32's at each of NARROW_SPEED_ROWS."""
    if device.type != "cpu" or dtype == torch.float32:
        return dtype, ()

    def rate(weights: torch.dtype, rows: int) -> float:
        curve = measure_gemm_curve(
            shape, (rows,), device, dtype, cache_bytes, 1.0, 1.0, repeats=5, weight_dtype=weights
        )
        return curve.tflops[0]

    rounds = [
        {rows: (rate(dtype, rows), rate(torch.float32, rows)) for rows in NARROW_SPEED_ROWS}
        for _ in range(PICK_ROUNDS)
    ]  # interleaved; each rate's best round: a burst of the VM's neighbours once flipped a single round's pick
    speeds = {rows: tuple(max(r[rows][i] for r in rounds) for i in (0, 1)) for rows in NARROW_SPEED_ROWS}
    narrow, wide = speeds[NARROW_SPEED_ROWS[-1]]
    if wide <= 1.1 * narrow:
        return dtype, ()
    return torch.float32, tuple((rows, significant(n / w, 3)) for rows, (n, w) in speeds.items())

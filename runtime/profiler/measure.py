"""Measure this machine into a `HardwareProfile`: the orchestration behind `runtime profile`.

How it works: docs/design.md, `runtime/profiler/measure.py`.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from planner.hardware.profile import (
    ELEMENTWISE_COSTS,
    Efficiency,
    HardwareProfile,
    Overheads,
    Provenance,
    path_for_this_machine,
)
from planner.hardware.this_machine import usable_cores
from runtime.device import default_device
from runtime.engine.expert_stacks import DEQUANT_CHUNK_BYTES
from runtime.host_allocator import keep_temporaries_in_heap
from runtime.profiler.attention import attention_backend_name, measure_attention_curve
from runtime.profiler.dequant import measure_dequant
from runtime.profiler.gemm import measure_gemm_curve, pick_gemm_dtype
from runtime.profiler.grids import (
    ALL_GEMM_SHAPES,
    ATTENTION_POINTS,
    EXPERT_SHAPES,
    GEMM_ROWS,
    LINK_SIZES,
    MIB,
    QUICK_ATTENTION_POINTS,
    QUICK_GEMM_ROWS,
    QUICK_GEMM_SHAPES,
    QUICK_LINK_SIZES,
    AttentionPoint,
    GemmShape,
    thread_grid,
)
from runtime.profiler.links import measure_host_memory, measure_links
from runtime.profiler.machine import describe_machine, last_level_cache_bytes
from runtime.profiler.overheads import measure_overheads, median_overheads
from runtime.profiler.probe_jobs import (
    FULL_PROBES,
    QUICK_PROBES,
    TINY_PROBES,
    ProbeBudget,
    calibrate_on_probes,
)
from runtime.profiler.spot_check import measure_rates
from runtime.profiler.timing import Deadline


@dataclass(frozen=True, kw_only=True)
class Sizing:
    name: str
    link_sizes: tuple[int, ...]
    memory_bytes: int
    gemm_shapes: tuple[GemmShape, ...]
    gemm_rows: tuple[int, ...]
    gemm_budget_s: float  # all shapes together
    max_call_s: float  # stop a GEMM curve's rows after a call this long
    attention_points: tuple[AttentionPoint, ...]
    attention_budget_s: float
    repeats: int
    overhead_budget_s: float  # the overheads' micro-benchmarks (the probe engine's jobs come on top)
    elementwise_rows: int  # [rows, 1024] bf16 tensors for the elementwise ns per element
    probe_decode_tokens: int  # tokens each probe-engine job generates
    probe_runs: int  # probe-engine jobs per measurement, after one warm-up job
    probe_jobs: (
        ProbeBudget | None
    )  # engine jobs the efficiency constants are fitted to (None: keep the defaults)
    overhead_rounds: int = 1  # `overheads` measured this many times, spread over the run; the median kept
    dequant_elements: int = 8 << 20  # weights per dequantization timing (the engine's chunks: 32 Mi in bf16)


FULL = Sizing(
    name="full",
    link_sizes=LINK_SIZES,
    memory_bytes=1 << 30,
    gemm_shapes=ALL_GEMM_SHAPES,
    gemm_rows=GEMM_ROWS,
    gemm_budget_s=120.0,
    max_call_s=1.0,
    attention_points=ATTENTION_POINTS,
    attention_budget_s=45.0,
    repeats=5,
    overhead_budget_s=10.0,
    elementwise_rows=8192,
    probe_decode_tokens=48,
    probe_runs=5,
    probe_jobs=FULL_PROBES,
    overhead_rounds=3,
    dequant_elements=DEQUANT_CHUNK_BYTES // 2,
)  # medians of 5 jobs, of 3 rounds
QUICK = Sizing(
    name="quick",
    link_sizes=QUICK_LINK_SIZES,
    memory_bytes=256 * MIB,
    gemm_shapes=QUICK_GEMM_SHAPES,
    gemm_rows=QUICK_GEMM_ROWS,
    gemm_budget_s=20.0,
    max_call_s=0.25,
    attention_points=QUICK_ATTENTION_POINTS,
    attention_budget_s=10.0,
    repeats=3,
    overhead_budget_s=3.0,
    elementwise_rows=8192,
    probe_decode_tokens=32,
    probe_runs=3,
    probe_jobs=QUICK_PROBES,
)
TINY = Sizing(
    name="tiny",
    link_sizes=(MIB, 4 * MIB),
    memory_bytes=64 * MIB,
    gemm_shapes=QUICK_GEMM_SHAPES[:1],
    gemm_rows=(1, 4, 16, 64),
    gemm_budget_s=6.0,
    max_call_s=0.5,
    attention_points=(
        AttentionPoint("gqa", batch=4, context=256, group=4),
        AttentionPoint("mla", batch=4, context=256, group=16),
    ),
    attention_budget_s=3.0,
    repeats=5,
    overhead_budget_s=1.0,
    elementwise_rows=256,
    probe_decode_tokens=6,
    probe_runs=1,
    probe_jobs=TINY_PROBES,
    dequant_elements=1 << 20,
)
SIZINGS = {s.name: s for s in (FULL, QUICK, TINY)}


def sized_overheads(device: torch.device, sizing: Sizing) -> Overheads:
    """One round of the `overheads` stage as `sizing` measures it (the profile, `runtime profile-overheads`)."""
    return measure_overheads(
        device,
        sizing.overhead_budget_s,
        sizing.elementwise_rows,
        repeats=sizing.repeats,
        decode_tokens=sizing.probe_decode_tokens,
        engine_runs=sizing.probe_runs,
    )


GEMM_DTYPE = torch.bfloat16


def _moelens_version() -> str:
    try:
        from importlib.metadata import version

        return version("moelens")
    except Exception:  # not installed (run from a checkout): the version is unknown, not an error
        return ""


def measure_profile(
    sizing: Sizing = FULL,
    device: torch.device | None = None,
    command: str = "runtime profile",
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
    model_dtype_gemms: bool = False,
) -> HardwareProfile:
    """`model_dtype_gemms`: GEMM curves in the 16-bit model dtype, with no float32 pick (an emulated device's
    plans compute in the model dtype, as a GPU's do; `planner.perf.gemm_dtype`)."""
    keep_temporaries_in_heap()  # the regime the engine runs in (runtime.host_allocator)
    device = device or default_device()
    cores = usable_cores()
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    log(f"profiling ({sizing.name}) on {device}, {cores} cores, load average {load_at_start:.1f}")

    rounds: list[Overheads] = []
    spots = ("memory", "gemm", "attention")[-sizing.overhead_rounds :]  # after which stage a round runs

    def overhead_round(after: str) -> None:
        if after in spots:
            rounds.append(sized_overheads(device, sizing))

    fingerprint = measure_rates(device)
    log(
        f"  fingerprint: memory read {fingerprint.memory_read_gbps:.3g} GB/s, spot GEMM "
        f"{fingerprint.gemm_tflops:.3g} TFLOP/s"
    )
    memory = measure_host_memory(sizing.memory_bytes, repeats=sizing.repeats)
    log(f"  host memory: read {memory.read_gbps:.1f} GB/s, copy {memory.copy_gbps:.1f} GB/s")
    overhead_round("memory")
    links = None
    if device.type == "cuda":
        links = measure_links(device, sizing.link_sizes, repeats=sizing.repeats)
        log(
            f"  h2d pinned at {links.h2d_pinned.sizes[-1] / MIB:.0f} MiB: {links.h2d_pinned.gbps[-1]:.1f} GB/s"
        )

    cache = last_level_cache_bytes(device)
    deadline = Deadline(sizing.gemm_budget_s)
    least_share = (
        sizing.gemm_budget_s / len(sizing.gemm_shapes) / 2
    )  # the weights' set-up spends the deadline
    gemm_curves = []
    if model_dtype_gemms:
        weight_dtype, narrow_speed = GEMM_DTYPE, ()
    else:
        weight_dtype, narrow_speed = pick_gemm_dtype(device, EXPERT_SHAPES[1], GEMM_DTYPE, cache)
    narrow_note = ", ".join(f"{ratio:.2f}x at {rows} rows" for rows, ratio in narrow_speed)
    log(
        f"  GEMM weights in {weight_dtype} (inputs in {GEMM_DTYPE})"
        + (f"; {GEMM_DTYPE} weights run {narrow_note}" if narrow_speed else "")
    )
    for i, shape in enumerate(sizing.gemm_shapes):
        curve = measure_gemm_curve(
            shape,
            sizing.gemm_rows,
            device,
            GEMM_DTYPE,
            cache,
            budget_s=max(deadline.share(len(sizing.gemm_shapes) - i), least_share),
            max_call_s=sizing.max_call_s,
            repeats=sizing.repeats,
            weight_dtype=weight_dtype,
        )
        gemm_curves.append(curve)
        log(
            f"  {shape.label}: {curve.tflops[0]:.3g} TFLOP/s at m={curve.rows[0]}, "
            f"{max(curve.tflops):.3g} max (rows up to {curve.rows[-1]})"
        )

    dequant_ns = measure_dequant(device, GEMM_DTYPE, sizing.dequant_elements, repeats=sizing.repeats)
    log(
        "  dequantization to bfloat16: "
        + ", ".join(f"{k} {v:.3g} ns per weight" for k, v in dequant_ns.items())
    )
    overhead_round("gemm")
    threads = thread_grid(cores)
    deadline = Deadline(sizing.attention_budget_s)
    attention_curves = []
    for i, point in enumerate(sizing.attention_points):
        curve = measure_attention_curve(
            point, threads, budget_s=deadline.share(len(sizing.attention_points) - i), repeats=sizing.repeats
        )
        attention_curves.append(curve)
        log(
            f"  attention {point.layout} b{point.batch} ctx{point.context} g{point.group}: "
            + ", ".join(f"{t}t {g:.3g} GB/s" for t, g in zip(curve.threads, curve.gbps))
        )

    overhead_round("attention")
    overheads = median_overheads(rounds)
    log(
        f"  overheads per call (median of {len(rounds)} rounds): "
        + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in overheads.call_s.to_dict().items())
        + "; MLA path: "
        + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in (overheads.mla_call_s or {}).items())
        + "; per element: "
        + ", ".join(f"{k} {getattr(overheads.elementwise_ns, k):.2g} ns" for k in ELEMENTWISE_COSTS)
    )

    machine = describe_machine(device, fingerprint)
    notes = (
        f"Measured by `{command}` ({sizing.name} sizing): medians of up to {sizing.repeats} repeats after "
        f"warm-up; GEMM weights rotate over buffers > 4x the {cache / MIB:.0f} MiB last-level cache; "
        f"GEMM rows stop once a call exceeds {sizing.max_call_s} s (clamped beyond); attention KV "
        f"in bf16, block size 16, {attention_backend_name()}; overheads from a probe engine on a tiny random checkpoint and "
        f"[{sizing.elementwise_rows}, 1024] elementwise tensors, the median of {len(rounds)} rounds spread over "
        f"the run; dequantization (`dequant_ns`) of {sizing.dequant_elements >> 20} Mi weights per format; "
        f"{cores} usable cores; 1-minute load average "
        f"{load_at_start:.1f} at the start (above the core count means other work shared the cores and "
        f"the rates are low)."
    )
    profile = HardwareProfile(
        name=path_for_this_machine(fingerprint).stem,
        provenance=Provenance(
            kind="measured",
            date=datetime.datetime.now().isoformat(timespec="seconds"),
            command=command,
            moelens_version=_moelens_version(),
        ),
        machine=machine,
        memory=memory,
        gemm_dtype=str(weight_dtype).removeprefix("torch."),
        gemm_narrow_speed=narrow_speed,
        gemm_curves=tuple(gemm_curves),
        attention_curves=tuple(attention_curves),
        links=links,
        efficiency=Efficiency(),
        overheads=overheads,
        dequant_ns=dequant_ns,
        notes=notes,
    )
    if sizing.probe_jobs is None:
        return profile
    began = time.perf_counter()
    fitted = calibrate_on_probes(profile, device, sizing.probe_jobs, log=log)
    before = asdict(profile.efficiency)
    changed = {k: v for k, v in asdict(fitted.efficiency).items() if v != before[k]}
    log(
        f"  efficiency fitted to the probe jobs ({time.perf_counter() - began:.0f} s): "
        + (", ".join(f"{k} {v:.3g}" for k, v in changed.items()) or "nothing changed")
    )
    return fitted

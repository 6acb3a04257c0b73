"""Datasheet-derived hardware profiles: published peak figures turned into the curves a profile holds.

How it works: docs/design.md, `runtime/profiler/datasheet.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.hardware.profile import (
    AttentionCurve,
    Efficiency,
    GemmCurve,
    HardwareProfile,
    Links,
    Machine,
    Memory,
    Price,
    Provenance,
    RateCurve,
)
from runtime.profiler.grids import (
    ALL_GEMM_SHAPES,
    ATTENTION_POINTS,
    GEMM_ROWS,
    LINK_SIZES,
    AttentionPoint,
    GemmShape,
    thread_grid,
)

PCIE_PINNED_GBPS = {"3.0": 12.0, "4.0": 25.0, "5.0": 50.0}
LINK_LATENCY_S = 10e-6
LAUNCH_S = 6e-6


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float  # as the driver reports it (total_memory)
    bf16_tflops: float  # dense tensor-core peak (no sparsity) in the GEMM dtype below
    hbm_gbps: float
    pcie: str  # generation of the host link
    dtype: str = "bfloat16"
    source: str = ""


@dataclass(frozen=True)
class Host:
    cpu: str
    physical_cores: int
    logical_cpus: int
    ghz: float
    fp32_flops_per_cycle: int  # per core: 2 FMA pipes x lanes x 2
    channels: int
    mts: int  # DDR transfers per second (millions)
    per_core_read_gbps: float  # one core streaming from DRAM
    memory_gib: float
    flags: tuple[str, ...]
    source: str = ""


@dataclass(frozen=True)
class DatasheetMachine:
    name: str
    gpu: Gpu
    host: Host
    usd_per_hour: float | None
    purchase_usd: float | None
    price_source: str


def gemm_curve(gpu: Gpu, shape: GemmShape) -> GemmCurve:
    weights = shape.weight_elems
    eff = 0.75 if weights >= 16e6 else 0.55 if weights >= 2e6 else 0.4
    launch = LAUNCH_S * (5 if shape.kind == "expert_ffn" else 1)  # 3 GEMMs, silu, multiply
    tflops = []
    for m in GEMM_ROWS:
        flops = shape.flops_per_row * m
        bytes_moved = 2 * (weights + m * (shape.n + shape.k))
        t = max(flops / (gpu.bf16_tflops * 1e12 * eff), bytes_moved / (gpu.hbm_gbps * 1e9 * 0.8)) + launch
        tflops.append(round(flops / t / 1e12, 4))
    return GemmCurve(shape=shape.label, n=shape.n, k=shape.k, rows=GEMM_ROWS, tflops=tuple(tflops))


def saturating(peak: float) -> RateCurve:
    half = peak * 1e9 * LINK_LATENCY_S
    return RateCurve(LINK_SIZES, tuple(round(peak * s / (s + half), 3) for s in LINK_SIZES))


def host_read_gbps(h: Host) -> float:
    channels_peak = h.channels * h.mts * 8 / 1000
    return min(0.75 * channels_peak, h.physical_cores * h.per_core_read_gbps)


def attention_curve(h: Host, point: AttentionPoint, threads: tuple[int, ...]) -> AttentionCurve:
    flops_per_byte = point.flops_per_kv_byte
    per_core = min(0.8 * h.per_core_read_gbps, 0.4 * h.ghz * h.fp32_flops_per_cycle / flops_per_byte)
    cap = 0.7 * h.channels * h.mts * 8 / 1000
    gbps = []
    for t in threads:
        effective = min(t, h.physical_cores) + 0.15 * max(0, min(t, h.logical_cpus) - h.physical_cores)
        gbps.append(round(min(effective * per_core, cap), 3))
    return AttentionCurve(point.layout, point.batch, point.context, point.group, threads, tuple(gbps))


def build(m: DatasheetMachine, today: str) -> HardwareProfile:
    g, h = m.gpu, m.host
    pinned = PCIE_PINNED_GBPS[g.pcie]
    pageable = min(0.45 * pinned, 10.0)
    read = host_read_gbps(h)
    threads = thread_grid(h.logical_cpus)
    curves = tuple(gemm_curve(g, shape) for shape in ALL_GEMM_SHAPES)
    attention = tuple(attention_curve(h, point, threads) for point in ATTENTION_POINTS)
    return HardwareProfile(
        name=m.name,
        provenance=Provenance(
            kind="datasheet",
            date=today,
            command="runtime datasheet-profiles",
            sources=tuple(s for s in (g.source, h.source, m.price_source) if s),
        ),
        machine=Machine(
            cpu=h.cpu,
            cores=h.logical_cpus,
            host_memory_gib=h.memory_gib,
            device=g.name,
            device_memory_gib=g.memory_gib,
            cpu_flags=h.flags,
            interconnect=f"PCIe {g.pcie} x16",
        ),
        price=Price(usd_per_hour=m.usd_per_hour, purchase_usd=m.purchase_usd, sources=(m.price_source,)),
        links=Links(
            h2d_pinned=saturating(pinned),
            h2d_pageable=saturating(pageable),
            d2h_pinned=saturating(pinned * 1.04),
            d2h_pageable=saturating(pageable * 0.9),
        ),
        memory=Memory(read_gbps=round(read, 2), copy_gbps=round(0.4 * read, 2)),
        gemm_dtype=g.dtype,
        gemm_curves=curves,
        attention_curves=attention,
        efficiency=Efficiency(),
        notes=notes_for(m, pinned, pageable, read),
    )


def notes_for(m: DatasheetMachine, pinned: float, pageable: float, read: float) -> str:
    g, h = m.gpu, m.host
    return (
        f"Datasheet-derived, not measured; re-measure with `make profile` on the real machine.\n"
        f"GEMM: {g.name} dense {g.dtype} peak {g.bf16_tflops} TFLOP/s, memory {g.hbm_gbps} GB/s; "
        f"F(m) = flops / (max(flops / (peak x eff), bytes / (0.8 x memory bw)) + launch), launch "
        f"{LAUNCH_S * 1e6:.0f} us per kernel (5 for expert_ffn), "
        f"eff 0.75 / 0.55 / 0.4 for weights of >=16M / >=2M / fewer elements.\n"
        f"Links: PCIe {g.pcie} x16, pinned peak {pinned} GB/s, pageable {pageable:.1f} GB/s, "
        f"gbps(s) = peak x s / (s + peak x {LINK_LATENCY_S * 1e6:.0f} us).\n"
        f"Host: {h.channels} channels x DDR-{h.mts}; read = min(0.75 x channel peak, "
        f"{h.physical_cores} cores x {h.per_core_read_gbps} GB/s) = {read:.1f} GB/s; copy = 0.4 x read.\n"
        f"Attention: per core min(0.8 x {h.per_core_read_gbps} GB/s, 0.4 x {h.ghz} GHz x "
        f"{h.fp32_flops_per_cycle} flop/cycle / flops per KV byte), hyperthreads +15%, cap 0.7 x channel peak."
        + (
            "\nT4 has no bf16 tensor cores: the rates are float16; bf16 checkpoints must run as float16."
            if g.dtype == "float16"
            else ""
        )
    )

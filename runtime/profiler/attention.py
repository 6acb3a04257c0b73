"""CPU decode-attention bandwidth of the runtime's kernel: KV bytes read per second over thread counts.

`measure_attention_curve(point, threads, ...)` builds the attention package's own random case
(`runtime.attention.make_case`: a bf16 paged cache of `point.batch` sequences x `point.context` tokens,
blocks shuffled over the pool) and times `case.run(num_threads=t)` (`decode_attention` for GQA,
`mla_decode_attention` for MLA) for each t; the rate is the case's KV bytes read per call over the median
time. `attention_backend_name()` says which path ran (the C++ ISA or the torch fallback) for the notes.
"""

from __future__ import annotations

import torch

from planner.hardware.profile import AttentionCurve
from planner.units import KV_BLOCK_SIZE
from runtime.profiler.grids import AttentionPoint
from runtime.profiler.timing import median_seconds, significant

DTYPE = torch.bfloat16


def attention_backend_name() -> str:
    from runtime.attention import active_backend

    module, isa = active_backend()
    if module is None:
        return "torch reference fallback"
    return f"C++ kernel ({isa or 'best ISA'})"


def _case(point: AttentionPoint):
    from runtime.attention import make_case

    lens = [point.context] * point.batch
    if point.layout == "gqa":
        return make_case(
            "gqa",
            lens,
            heads=point.kv_heads * point.group,
            kv_heads=point.kv_heads,
            head_dim=point.head_dim,
            dtype=DTYPE,
            block_size=KV_BLOCK_SIZE,
        )
    return make_case(
        "mla",
        lens,
        heads=point.group,
        head_dim=point.kv_lora_rank,
        dtype=DTYPE,
        block_size=KV_BLOCK_SIZE,
        rope_dim=point.rope_dim,
    )


def measure_attention_curve(
    point: AttentionPoint, threads: tuple[int, ...], budget_s: float, repeats: int = 5
) -> AttentionCurve:
    """Every thread count gets at least one timed sample; the budget cuts repeats, not thread counts."""
    case = _case(point)
    cpu = torch.device("cpu")
    per_count_s = budget_s / len(threads)
    gbps = [
        significant(
            case.bytes_read
            / median_seconds(lambda t=t: case.run(t), cpu, warmup=1, repeats=repeats, budget_s=per_count_s)
            / 1e9
        )
        for t in threads
    ]
    return AttentionCurve(point.layout, point.batch, point.context, point.group, threads, tuple(gbps))

"""Copy and memory bandwidth: host<->device curves through `runtime.transfer`, host read and copy rates.

`measure_links(device, sizes, ...)` times `copy_to_device` / `copy_to_host` (the weight streamer's path:
a copy stream, non-blocking from pinned memory, CUDA events) for each size, pinned and pageable, and
returns `planner.hardware.profile.Links`. `measure_host_memory(nbytes, ...)` returns `Memory`: read = one `sum`
over a buffer much larger than the last-level cache, copy = bytes copied per second by `copy_`.
"""

from __future__ import annotations

import torch

from planner.hardware.profile import Links, Memory, RateCurve
from runtime.profiler.timing import median_seconds, significant
from runtime.transfer import copy_to_device, copy_to_host


def _measured_rate_curve(sizes: tuple[int, ...], seconds: list[float]) -> RateCurve:
    return RateCurve(
        tuple(float(s) for s in sizes), tuple(significant(s / t / 1e9) for s, t in zip(sizes, seconds))
    )


def measure_links(
    device: torch.device, sizes: tuple[int, ...], repeats: int = 5, budget_per_point_s: float = 2.0
) -> Links:
    largest = max(sizes)
    pinned = torch.randint(0, 256, (largest,), dtype=torch.uint8).pin_memory()
    pageable = torch.randint(0, 256, (largest,), dtype=torch.uint8)
    on_device = torch.empty(largest, dtype=torch.uint8, device=device)
    stream = torch.cuda.Stream(device)
    curves: dict[str, list[float]] = {
        "h2d_pinned": [],
        "h2d_pageable": [],
        "d2h_pinned": [],
        "d2h_pageable": [],
    }
    for n in sizes:
        for host, kind in ((pinned, "pinned"), (pageable, "pageable")):
            src, dst = host[:n], on_device[:n]
            curves[f"h2d_{kind}"].append(
                median_seconds(
                    lambda d=dst, s=src: copy_to_device(d, s, stream),
                    device,
                    repeats=repeats,
                    budget_s=budget_per_point_s,
                    stream=stream,
                )
            )
            curves[f"d2h_{kind}"].append(
                median_seconds(
                    lambda d=src, s=dst: copy_to_host(d, s, stream),
                    device,
                    repeats=repeats,
                    budget_s=budget_per_point_s,
                    stream=stream,
                )
            )
    del pinned, pageable, on_device
    torch.cuda.empty_cache()
    return Links(**{name: _measured_rate_curve(sizes, seconds) for name, seconds in curves.items()})


def measure_host_memory(nbytes: int, repeats: int = 5, budget_s: float = 10.0) -> Memory:
    cpu = torch.device("cpu")
    numel = nbytes // 4
    src = torch.full((numel,), 0.5, dtype=torch.float32)  # written once (no lazy pages), faster than rand
    read_s = median_seconds(lambda: src.sum(), cpu, warmup=1, repeats=repeats, budget_s=budget_s / 2)
    dst = torch.empty_like(src)
    copy_s = median_seconds(lambda: dst.copy_(src), cpu, warmup=1, repeats=repeats, budget_s=budget_s / 2)
    return Memory(
        read_gbps=significant(numel * 4 / read_s / 1e9), copy_gbps=significant(numel * 4 / copy_s / 1e9)
    )

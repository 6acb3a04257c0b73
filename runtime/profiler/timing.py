"""Timing hygiene for the profiler: warm-up, device synchronisation or CUDA events, medians of repeats.

`median_seconds(fn, device=..., stream=...)` calls `fn` `warmup` times untimed, then takes up to `repeats`
timed samples (fewer once `budget_s` is spent, never fewer than one) and returns the median; a call
shorter than `min_sample_s` is timed as a group of back-to-back calls so that one scheduler hiccup
cannot dominate a sample. On CUDA a sample is bracketed by events recorded on `stream` (the current
stream if None), read after a synchronise; on the CPU by `time.perf_counter`. `significant(x)` rounds a
rate for the file; `Deadline` hands out what is left of a measurement's time budget.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

MAX_GROUP = 100


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_cuda(
    fn: Callable[[], object], calls: int, stream: torch.cuda.Stream | None, device: torch.device
) -> float:
    stream = stream or torch.cuda.current_stream(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    for _ in range(calls):
        fn()
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / calls


def _time_cpu(fn: Callable[[], object], calls: int) -> float:
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls


def median_seconds(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 2,
    repeats: int = 5,
    budget_s: float = float("inf"),
    stream: torch.cuda.Stream | None = None,
    min_sample_s: float = 0.02,
) -> float:
    """Median seconds per call; calls shorter than `min_sample_s` are timed in back-to-back groups."""
    on_cuda = device.type == "cuda"

    def sample(calls: int) -> float:
        return _time_cuda(fn, calls, stream, device) if on_cuda else _time_cpu(fn, calls)

    for _ in range(warmup):
        fn()
    synchronize(device)
    began = time.perf_counter()
    first = sample(1)
    calls = max(1, min(MAX_GROUP, math.ceil(min_sample_s / max(first, 1e-9))))
    samples = [first] if calls == 1 else []
    while len(samples) < repeats and (not samples or time.perf_counter() - began < budget_s):
        samples.append(sample(calls))
    return statistics.median(samples)


def significant(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits (profiles keep what the noise justifies)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


@dataclass
class Deadline:
    """A time budget shared by the steps of one measurement."""

    budget_s: float
    started: float = field(default_factory=time.perf_counter)

    @property
    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    @property
    def expired(self) -> bool:
        return self.left_s <= 0

    def share(self, parts_left: int) -> float:
        """Even share of the remaining budget among `parts_left` remaining steps."""
        return max(self.left_s, 0.0) / max(parts_left, 1)

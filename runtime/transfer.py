"""Host <-> device copies: the one copy path the weight streamer uses and the profiler measures.

How it works: docs/design.md, `runtime/transfer.py`.
"""

from __future__ import annotations

import bisect
import math
import threading
import time

import numpy as np
import torch


def _copy(
    dst: torch.Tensor, src: torch.Tensor, stream: torch.cuda.Stream | None, host: torch.Tensor
) -> torch.cuda.Event | None:
    on_cuda = dst.device.type == "cuda" or src.device.type == "cuda"
    if stream is None or not on_cuda:
        dst.copy_(src)
        return None
    with torch.cuda.stream(stream):
        dst.copy_(src, non_blocking=host.is_pinned())
        done = torch.cuda.Event()
        done.record(stream)
    return done


def copy_to_device(
    dst: torch.Tensor, src: torch.Tensor, stream: torch.cuda.Stream | None = None
) -> torch.cuda.Event | None:
    return _copy(dst, src, stream, host=src)


def copy_to_host(
    dst: torch.Tensor, src: torch.Tensor, stream: torch.cuda.Stream | None = None
) -> torch.cuda.Event | None:
    return _copy(dst, src, stream, host=dst)


LATENESS_WEIGHT = 0.2  # of the newest wake-up in the running mean of sleep lateness
QUEUED_S = 0.002  # a copy asked for this soon after the last returned was queued behind it
MAX_LATENESS_S = 0.02  # a longer stall (the thread descheduled) is not a wake-up habit to learn


class PacedLink:
    def __init__(self, gbps: float, clock=time.perf_counter):
        if not gbps > 0:
            raise ValueError(f"link speed {gbps!r} GB/s must be positive")
        self.bytes_per_s = gbps * 1e9
        self._clock = clock
        self._lock = threading.Lock()
        self._free_at = 0.0
        self._starts: list[float] = []  # booked transfers, in time order and never overlapping
        self._ends: list[float] = []
        self._busy_before: list[float] = [0.0]  # busy seconds of all transfers before index i
        self.bytes_moved = 0
        self._lateness = self._measure_lateness()  # seconds a sleep overshoots its deadline, running mean
        self._returned_at = -math.inf  # when the last copy() returned to its caller

    @property
    def gbps(self) -> float:
        return self.bytes_per_s / 1e9

    @property
    def busy_seconds(self) -> float:
        return self._busy_before[-1]

    def _book(self, nbytes: int) -> tuple[float, float]:
        with self._lock:
            now = self._clock()
            back_to_back = now - self._returned_at <= QUEUED_S  # the caller had it queued: no idle link
            start = self._free_at if back_to_back else max(now, self._free_at)
            self._returned_at = -math.inf
            end = start + nbytes / self.bytes_per_s
            self._free_at = end
            self._starts.append(start)
            self._ends.append(end)
            self._busy_before.append(self._busy_before[-1] + end - start)
            self.bytes_moved += nbytes
        return start, end

    def occupy(self, nbytes: int) -> None:
        """Book `nbytes` of traffic the caller does not wait for."""
        if nbytes > 0:
            self._book(int(nbytes))

    def copy(self, dst: np.ndarray, src: np.ndarray) -> float:
        """Copy `src` into `dst` as a transfer over the link; returns the seconds the link was busy with it."""
        start, end = self._book(src.nbytes)
        self._sleep_until(start)
        np.copyto(dst, src)
        self._sleep_until(end)
        self._returned_at = self._clock()
        return end - start

    def _sleep_until(self, when: float) -> None:
        target = when - self._lateness
        if target <= self._clock():
            return
        while (left := target - self._clock()) > 0:
            time.sleep(left)
        late = self._clock() - target
        self._lateness += LATENESS_WEIGHT * (min(late, MAX_LATENESS_S) - self._lateness)

    def _measure_lateness(self) -> float:
        if self._clock is not time.perf_counter:
            return 0.0
        late = []
        for _ in range(3):
            target = time.perf_counter() + 1e-3
            time.sleep(1e-3)
            late.append(time.perf_counter() - target)
        return min(sorted(late)[1], MAX_LATENESS_S)

    def busy_between(self, t0: float, t1: float) -> float:
        """Seconds in [t0, t1] during which the link carried a booked transfer."""
        with self._lock:
            first = bisect.bisect_right(self._ends, t0)  # transfers ending after t0
            last = bisect.bisect_left(self._starts, t1)  # transfers starting before t1
            if first >= last:
                return 0.0
            busy = self._busy_before[last] - self._busy_before[first]
            busy -= max(t0 - self._starts[first], 0.0)  # clip the first and last to the window
            busy -= max(self._ends[last - 1] - t1, 0.0)
        return max(busy, 0.0)

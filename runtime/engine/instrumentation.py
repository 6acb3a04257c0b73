"""Measured seconds per module, activated experts and memory peaks, collected while the engine runs.

How it works: docs/design.md, `runtime/engine/instrumentation.py`.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager

import psutil
import torch

from runtime.peak_rss import peak_rss_bytes


class ModuleTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self._cuda = device.type == "cuda"
        self._lock = threading.Lock()
        self._pending: list[tuple[str, str, torch.cuda.Event, torch.cuda.Event]] = []
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.seconds: dict[str, dict[str, float]] = {
                "decode": defaultdict(float),
                "prefill": defaultdict(float),
            }
            self.calls: dict[str, int] = defaultdict(int)  # timed blocks per module, all phases
            self.phase = "decode"
            self.prefill_share = 0.0

    def booking(self) -> tuple[str, float]:
        """Where work issued now is booked: the current phase and the step's prefill share."""
        return self.phase, self.prefill_share

    def add(self, module: str, seconds: float, phase: str | None = None, share: float | None = None) -> None:
        with self._lock:
            self.calls[module] += 1
            phase = phase or self.phase
            if phase != "shared":
                self.seconds[phase][module] += seconds
                return
            share = self.prefill_share if share is None else share
            self.seconds["prefill"][module] += seconds * share
            self.seconds["decode"][module] += seconds * (1.0 - share)

    def phase_seconds(self) -> dict[str, float]:
        with self._lock:
            return {phase: sum(values.values()) for phase, values in self.seconds.items()}

    @contextmanager
    def host(self, module: str, phase: str | None = None):
        """Host work (CPU attention, sampling, bookkeeping): wall time of the block."""
        phase = phase or self.phase
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(module, time.perf_counter() - began, phase)

    @contextmanager
    def device_work(self, module: str, phase: str | None = None):
        """Device work: CUDA events around the block on the current stream; perf_counter on the CPU."""
        phase = phase or self.phase
        if not self._cuda:
            with self.host(module, phase):
                yield
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            yield
        finally:
            end.record()
            self._pending.append((phase, module, start, end))

    def flush(self) -> None:
        """Read this step's device timings (waits on the step's last event only)."""
        if not self._pending:
            return
        self._pending[-1][3].synchronize()
        for phase, module, start, end in self._pending:
            self.add(module, start.elapsed_time(end) / 1e3, phase)
        self._pending.clear()

    def totals(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {phase: dict(values) for phase, values in self.seconds.items()}


class MemoryPeaks:
    def __init__(self, device: torch.device):
        self.device = device
        self._process = psutil.Process()
        self.host_rss_bytes = self._process.memory_info().rss
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self) -> None:
        self.host_rss_bytes = max(self.host_rss_bytes, self._process.memory_info().rss)

    @property
    def host_peak_bytes(self) -> int:
        """The larger of the sampled RSS and the kernel's high-water mark for this process."""
        return max(self.host_rss_bytes, peak_rss_bytes())

    @property
    def device_peak_bytes(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0

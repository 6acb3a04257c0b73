"""Layer weight streamer: packed host layers -> a bounded ring of device slots, one or two layers ahead.

How it works: docs/design.md, `runtime/engine/streamer.py`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from runtime.engine.weights import PackedLayer
from runtime.transfer import PacedLink, copy_to_device


class SlotWeights(Mapping):
    """One layer's streamed tensors over its slot; the first read waits for the slot's copy."""

    def __init__(self, views: dict[str, torch.Tensor], wait: Callable[[], None]):
        self._views, self._wait, self._waited = views, wait, False

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._views[name]
        if not self._waited:
            self._wait()
            self._waited = True
        return tensor

    def __contains__(self, name: object) -> bool:
        return name in self._views

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)


class StreamParts(Mapping):
    """One layer streamed in `parts` units (`packed[layer * parts + part]`, `EngineConfig.stream_parts`): a
    part is acquired when one of its tensors is first read and handed back by `done_with(name)` (the FFN, after
    that part's experts ran) or `finish()` (the layer's end), always in order, so the slots hold parts of a
    layer rather than whole layers and the next copy starts as soon as one part is done."""

    def __init__(self, streamer: LayerStreamer, layer: int, parts: int, part_of: dict[str, int]):
        self._streamer, self._first, self._parts, self._part_of = streamer, layer * parts, parts, part_of
        self._held: dict[int, SlotWeights] = {}
        self._taken = self._released = 0

    def _take(self, part: int) -> None:
        while self._taken <= part:
            self._held[self._taken] = self._streamer.acquire(self._first + self._taken)
            self._taken += 1

    def __getitem__(self, name: str) -> torch.Tensor:
        part = self._part_of[name]
        if part < self._released:
            raise RuntimeError(f"{name} read after its stream part was handed back")
        self._take(part)
        return self._held[part][name]

    def __contains__(self, name: object) -> bool:
        return name in self._part_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._part_of)

    def __len__(self) -> int:
        return len(self._part_of)

    def done_with(self, name: str) -> None:
        self._release_through(self._part_of[name])

    def finish(self) -> None:
        self._release_through(self._parts - 1)

    def _release_through(self, part: int) -> None:
        while self._released <= part:
            self._take(self._released)
            self._held.pop(self._released)
            self._streamer.release(self._first + self._released)
            self._released += 1


class LayerStreamer:
    def __init__(
        self,
        packed: list[PackedLayer],
        device: torch.device,
        num_slots: int = 2,
        on_copy_seconds: Callable[[float, Any], None] | None = None,
        booking: Callable[[], Any] = lambda: None,
        link: PacedLink | None = None,
    ):
        self.packed = packed
        self.device = device
        self.num_layers = len(packed)
        self.num_slots = min(num_slots, self.num_layers)
        self.cyclic = self.num_layers > self.num_slots
        slot_bytes = max(layer.nbytes for layer in packed)
        self._slots = [
            torch.empty(slot_bytes, dtype=torch.uint8, device=device) for _ in range(self.num_slots)
        ]
        self._slot_of: dict[int, int] = {}
        self._views: list[dict[str, torch.Tensor]] = [{} for _ in range(self.num_slots)]
        self._in_use: set[int] = set()
        self._next_layer = 0
        self.copy_log: list[tuple[int, int]] = []
        self.copied_bytes = 0
        self.max_slots_in_use = 0
        self._on_copy_seconds = on_copy_seconds or (lambda seconds, booking: None)
        self._booking = booking
        self.link = link
        self.buffer_bytes = self.num_slots * slot_bytes
        self._cuda = device.type == "cuda"
        if self._cuda:
            self._copy_stream = torch.cuda.Stream(device)
            self._ready = [torch.cuda.Event() for _ in range(self.num_slots)]
            self._free = [torch.cuda.Event() for _ in range(self.num_slots)]
            self._copy_timings: list[tuple[torch.cuda.Event, torch.cuda.Event, Any]] = []
        else:
            self._ready_flags = [threading.Event() for _ in range(self.num_slots)]
            self._jobs: queue.Queue[tuple[int, int, Any, threading.Event] | None] = queue.Queue()
            self._errors: list[BaseException] = []
            self._worker = threading.Thread(target=self._copy_worker, name="weight-copy", daemon=True)
            self._worker.start()
        self._started = False

    # ----- compute side -----
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for slot in range(self.num_slots):
            self._issue(slot)

    def acquire(self, layer: int) -> SlotWeights:
        self.start()
        slot = self._slot_of.get(layer)
        if slot is None:
            raise RuntimeError(f"layer {layer} acquired out of the streamer's order")
        self._in_use.add(slot)
        self.max_slots_in_use = max(self.max_slots_in_use, len(self._in_use))
        ready = self._ready[slot] if self._cuda else self._ready_flags[slot]  # this copy's, not a later one's
        return SlotWeights(self._views[slot], lambda: self._wait(ready))

    def _wait(self, ready) -> None:
        if self._cuda:  # the compute stream waits; the host does not
            torch.cuda.current_stream(self.device).wait_event(ready)
            return
        ready.wait()
        if self._errors:
            raise RuntimeError("weight copy worker failed") from self._errors[0]

    def release(self, layer: int) -> None:
        slot = self._slot_of[layer]
        self._in_use.discard(slot)
        if not self.cyclic:
            return
        del self._slot_of[layer]
        if self._cuda:
            self._free[slot].record(torch.cuda.current_stream(self.device))
        self._issue(slot)

    # ----- copy side -----
    def _issue(self, slot: int) -> None:
        layer = self._next_layer
        self._next_layer = (self._next_layer + 1) % self.num_layers
        self._slot_of[layer] = slot
        packed = self.packed[layer]
        self._views[slot] = packed.views(self._slots[slot])
        self.copy_log.append((layer, slot))
        self.copied_bytes += packed.nbytes
        booking = self._booking()
        if self._cuda:
            stream = self._copy_stream
            stream.wait_event(self._free[slot])
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            copy_to_device(self._slots[slot][: packed.nbytes], packed.host, stream)
            end.record(stream)
            self._ready[slot] = torch.cuda.Event()  # this copy's own event, as on the CPU
            self._ready[slot].record(stream)
            self._copy_timings.append((start, end, booking))
        else:
            # a new event per copy: the previous copy into this slot, never waited for when compute read none of
            # its tensors, must not signal this one
            self._ready_flags[slot] = threading.Event()
            self._jobs.put((layer, slot, booking, self._ready_flags[slot]))

    def _copy_worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            layer, slot, booking, ready = job
            try:
                began = time.perf_counter()
                packed = self.packed[layer]
                dst, src = self._slots[slot][: packed.nbytes].numpy(), packed.host.numpy()
                # one thread, outside torch's OpenMP pool: a second pool would fight compute for the cores
                if self.link is not None:
                    self._on_copy_seconds(self.link.copy(dst, src), booking)
                else:
                    np.copyto(dst, src)
                    self._on_copy_seconds(time.perf_counter() - began, booking)
            except BaseException as err:  # surfaced to compute at the next acquire
                self._errors.append(err)
            ready.set()

    def collect_copy_seconds(self, wait: bool = False) -> None:
        """CUDA: report finished copies' times (all of them, waiting, when `wait`)."""
        if not self._cuda:
            return
        pending = []
        for start, end, booking in self._copy_timings:
            if wait:
                end.synchronize()
            if end.query():
                self._on_copy_seconds(start.elapsed_time(end) / 1e3, booking)
            else:
                pending.append((start, end, booking))
        self._copy_timings = pending

    def close(self) -> None:
        if self._cuda:
            self.collect_copy_seconds(wait=True)
        elif self._worker.is_alive():
            self._jobs.put(None)
            self._worker.join()

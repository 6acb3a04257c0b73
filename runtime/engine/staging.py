"""The step's small host <-> device copies without host synchronisation: pinned staging and side streams.

How it works: docs/design.md, `runtime/engine/staging.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HostTensors:
    """Tensors on their way to the host; `ready()` waits for the copy (a CUDA event, not the device)."""

    tensors: tuple[torch.Tensor, ...]
    event: torch.cuda.Event | None = None

    def ready(self) -> tuple[torch.Tensor, ...]:
        if self.event is not None:
            self.event.synchronize()
        return self.tensors


class Staging:
    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._h2d = torch.cuda.Stream(device)
            self._d2h = torch.cuda.Stream(device)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.cuda or tensor.device.type == "cuda":
            return tensor
        pinned = tensor if tensor.is_pinned() else torch.empty_like(tensor, pin_memory=True).copy_(tensor)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._h2d):
            on_device = pinned.to(self.device, non_blocking=True)
        compute.wait_stream(self._h2d)
        on_device.record_stream(compute)
        return on_device

    def to_host(self, *tensors: torch.Tensor) -> HostTensors:
        if not self.cuda:
            return HostTensors(tensors)
        self._d2h.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._d2h):
            host = []
            for tensor in tensors:
                tensor.record_stream(self._d2h)
                pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                host.append(pinned.copy_(tensor, non_blocking=True))
            event = torch.cuda.Event()
            event.record(self._d2h)
        return HostTensors(tuple(host), event)

"""One host region for all the weights a store streams, page-locked exactly (no allocator rounding).

How it works: docs/design.md, `runtime/engine/host_arena.py`.
"""

from __future__ import annotations

import os

import torch

from planner.errors import UserError
from planner.units import GiB

ALIGN = 256  # bytes; keeps every region and packed tensor aligned for vector loads and any dtype view


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


class PinRecorder:
    """Records what would be page-locked (CPU runs and tests)."""

    def __init__(self):
        self.pinned: list[int] = []  # bytes per pin request, in order

    @property
    def pinned_bytes(self) -> int:
        return sum(self.pinned)

    def pin(self, tensor: torch.Tensor) -> None:
        self.pinned.append(tensor.numel() * tensor.element_size())

    def unpin(self, tensor: torch.Tensor) -> None:
        self.pinned.remove(tensor.numel() * tensor.element_size())


class CudaHostRegister:
    """Page-locks ordinary host memory in place with cudaHostRegister: exactly the bytes asked for."""

    pinned_bytes = 0

    def pin(self, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes == 0:
            return
        cudart = torch.cuda.cudart()
        error = cudart.cudaHostRegister(tensor.data_ptr(), nbytes, 0)
        if int(error) != 0:
            raise UserError(
                f"could not page-lock {nbytes / GiB:.2f} GiB of host memory for the streamed weights "
                f"(cudaHostRegister: {_error_name(error)})",
                _smaller_budget_hint(nbytes),
            )
        self.pinned_bytes += nbytes

    def unpin(self, tensor: torch.Tensor) -> None:
        if tensor.numel():
            torch.cuda.cudart().cudaHostUnregister(tensor.data_ptr())
            self.pinned_bytes -= tensor.numel() * tensor.element_size()


def _error_name(error) -> str:
    return getattr(error, "name", str(error))


def _available_host_bytes() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _smaller_budget_hint(nbytes: int) -> str:
    available = _available_host_bytes()
    if available is None:
        return (
            "re-plan with a smaller --host-gb (or more device-resident experts), or raise the locked-memory "
            "limit (ulimit -l)"
        )
    suggest = max(0.9 * available / GiB, 1.0)
    return (
        f"this machine has {available / GiB:.1f} GiB available: re-plan with `planner solve ... --host-gb "
        f"{suggest:.0f}` (the planner then keeps more weights on the device or a smaller KV cache), or raise "
        f"the locked-memory limit (ulimit -l)"
    )


def default_pinner(device: torch.device):
    return CudaHostRegister() if device.type == "cuda" else PinRecorder()


class HostArena:
    def __init__(self, sizes: list[int], pinner):
        self.offsets, offset = [], 0
        for size in sizes:
            self.offsets.append(offset)
            offset += aligned(size)
        self.sizes = list(sizes)
        self.buffer = torch.empty(offset, dtype=torch.uint8)  # ordinary memory, pinned in place by pin()
        self.pinner = pinner
        self.is_pinned = False

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    def region(self, index: int) -> torch.Tensor:
        start = self.offsets[index]
        return self.buffer[start : start + self.sizes[index]]

    def pin(self) -> None:
        if not self.is_pinned and self.nbytes:
            self.pinner.pin(self.buffer)
            self.is_pinned = True

    def release(self) -> None:
        if self.is_pinned:
            self.pinner.unpin(self.buffer)
            self.is_pinned = False


def packing_threads() -> int:
    """Threads that fill the arena: each copies whole layers (a copy is memory-bound; a few threads saturate)."""
    return max(1, min(4, os.cpu_count() or 1))

"""Keep large host temporaries in glibc's heap and long-lived host tensors (weights, KV cache) on transparent
huge pages; the engine and the profiler run under the same allocator.

How it works: docs/design.md, `runtime/host_allocator.py`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
HEAP_KEPT_BYTES = 1 << 30  # allocations below this come from (and return to) the heap, never the OS
MADV_HUGEPAGE = 14  # <sys/mman.h>
PAGE = 4096


@functools.cache
def keep_temporaries_in_heap() -> bool:
    """Set both thresholds once per process; False where the C library is not glibc (nothing changed)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_KEPT_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, HEAP_KEPT_BYTES)
    )


def advise_huge_pages(tensor: torch.Tensor) -> bool:
    """Ask Linux to back the tensor's pages with transparent huge pages; False where that is unavailable."""
    if sys.platform != "linux":
        return False
    start = (tensor.data_ptr() + PAGE - 1) // PAGE * PAGE
    end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // PAGE * PAGE
    if end - start < 2 * 1024 * 1024:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise(start, end - start, MADV_HUGEPAGE) == 0


def empty_host(shape, dtype: torch.dtype, huge_pages: bool = True) -> torch.Tensor:
    """An uninitialised CPU tensor advised onto huge pages before its first touch: the KV cache's blocks are read
    in random order, and GEMMs stream multi-MB weights; 2 MiB pages save TLB misses in both (KV kernel ~10%,
    expert GEMMs ~10% on the Xeon VM: BENCHMARKS.md)."""
    tensor = torch.empty(shape, dtype=dtype)
    if huge_pages:
        advise_huge_pages(tensor)
    return tensor

"""Keep large host temporaries in glibc's heap; the engine and the profiler run under the same allocator.

How it works: docs/design.md, `runtime/host_allocator.py`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
HEAP_KEPT_BYTES = 1 << 30  # allocations below this come from (and return to) the heap, never the OS


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

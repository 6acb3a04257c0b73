"""This process's peak resident memory: the kernel's high-water mark for its own address space.

`ru_maxrss` is not that: Linux carries the parent's high-water mark across fork and exec, so a job started
from a large process (a test runner, a notebook) would report its parent's peak. /proc/self/status VmHWM is
this image's own; `ru_maxrss` is the fallback where /proc is missing.
"""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

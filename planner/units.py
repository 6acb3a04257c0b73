"""Units and sizes shared by the planner, the engine, the profiler and the benchmarks."""

from __future__ import annotations

GiB = float(1 << 30)  # bytes
KV_BLOCK_SIZE = 16  # tokens per KV-cache block (the plan's `kv_block_size` unless it says otherwise)

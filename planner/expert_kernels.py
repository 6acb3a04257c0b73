"""How the engine runs routed experts, shared by the engine (which picks the path) and the planner (which
prices it): `grouped_by_default(has_device)`.

- grouped (with an accelerator): per layer and token group, one grouped GEMM per projection over every routed
  row, in windows of at most b_e rows: a fixed number of calls (`grouped_calls`) whatever the experts hit,
  each expert's GEMM at its own row count, unpadded.
- looped (the CPU, where it measured faster: BENCHMARKS.md "experts"): one call per activated expert and
  chunk of at most b_e rows, each chunk padded to its row bucket (`planner.row_buckets`).
"""

from __future__ import annotations

import numpy as np


def grouped_by_default(has_device: bool) -> bool:
    return has_device


def grouped_calls(routed_rows, expert_batch) -> np.ndarray:
    """Windows of the grouped path for `routed_rows` (tokens x top_k) rows: ceil(rows / b_e), at least one."""
    rows = np.asarray(routed_rows, dtype=np.float64)
    return np.maximum(np.ceil(rows / np.maximum(expert_batch, 1.0)), 1.0)

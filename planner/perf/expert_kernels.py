"""How the engine runs routed experts, shared by the engine (which picks the path) and the planner (which
prices it).

- grouped (`GROUPED_BY_DEFAULT`): per layer and token group, one grouped GEMM per projection over every
  routed row, in windows of at most b_e rows: a fixed number of calls (`grouped_calls`) whatever the experts
  hit, each expert's GEMM at its own row count, unpadded. The engine runs it wherever `torch._grouped_mm`
  does (the CPU, where it also measured faster than the loop: BENCHMARKS.md "experts"; CUDA from sm90 in bf16).
- looped (the engine's fallback elsewhere, or `grouped_experts=False`): one call per activated expert and
  chunk of at most b_e rows, each chunk padded to its row bucket (`planner.perf.row_buckets`). The planner prices
  the grouped path; a looped run's per-expert launches are what the profile's per-expert call cost and the
  GEMM curves' launch term hold.
"""

from __future__ import annotations

import numpy as np

GROUPED_BY_DEFAULT = True


def grouped_calls(routed_rows, expert_batch) -> np.ndarray:
    """Windows of the grouped path for `routed_rows` (tokens x top_k) rows: ceil(rows / b_e), at least one."""
    rows = np.asarray(routed_rows, dtype=np.float64)
    return np.maximum(np.ceil(rows / np.maximum(expert_batch, 1.0)), 1.0)

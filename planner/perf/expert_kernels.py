"""How the engine runs routed experts, shared by the engine (which picks the path) and the planner (which
prices it).

How it works: docs/design.md, `planner/perf/expert_kernels.py`.
"""

from __future__ import annotations

import numpy as np

GROUPED_BY_DEFAULT = True


def grouped_by_default(gemm_dtype: str | None) -> bool:
    """The path when nothing forces one: grouped, but per expert where GEMMs run upcast on the CPU
    (`planner.perf.gemm_dtype`): there float32 `torch._grouped_mm` measured slower than a loop of F.linear."""
    return GROUPED_BY_DEFAULT and gemm_dtype is None


def grouped_calls(routed_rows, expert_batch) -> np.ndarray:
    """Windows of the grouped path for `routed_rows` (tokens x top_k) rows: ceil(rows / b_e), at least one."""
    rows = np.asarray(routed_rows, dtype=np.float64)
    return np.maximum(np.ceil(rows / np.maximum(expert_batch, 1.0)), 1.0)

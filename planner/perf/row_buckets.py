"""Row buckets for expert GEMMs, shared by the engine (which pads to them) and the planner (which prices them).

oneDNN builds a kernel for every new GEMM shape it meets (~0.7 ms each on a 2-core CPU, more than the GEMM
itself for small experts), and each expert chunk's row count is new more often than not. `bucket_rows(m)`
keeps m up to `EXACT_ROWS` (decode meets those sizes over and over) and rounds larger m up to a multiple
of 2^(floor(log2 m) - 3): at most 12.5% padding, eight sizes per doubling, so a job meets a bounded set of
shapes however its tokens route. `expected_padding(m)` is the planner's vectorised mean factor: 1 up to
`EXACT_ROWS`, then 1 + ln(2)/16 (half a step, 2^(k-4) for m in [2^k, 2^(k+1)), over m log-uniform).
"""

from __future__ import annotations

import numpy as np

EXACT_ROWS = 64
STEPS_PER_DOUBLING_LOG2 = 3


def bucket_rows(m: int) -> int:
    if m <= EXACT_ROWS:
        return m
    step = 1 << (m.bit_length() - 1 - STEPS_PER_DOUBLING_LOG2)
    return -(-m // step) * step


def expected_padding(rows) -> np.ndarray:
    return np.where(np.asarray(rows, dtype=np.float64) > EXACT_ROWS, 1.0 + np.log(2.0) / 16.0, 1.0)

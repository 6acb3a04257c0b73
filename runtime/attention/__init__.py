"""CPU decode attention over the paged host KV cache (GQA/MQA/MHA and MLA latent), see docs/contracts.md.

`decode_attention` / `mla_decode_attention` append this step's K/V (or latent) and attend, in a C++
extension (AVX-512 bf16 / AVX-512 / AVX2 / scalar chosen at run time, OpenMP over (sequence, kv head)
items) or, if that is not built, a torch fallback. `bench_case` times exactly this kernel for the
profiler and returns (seconds, KV bytes read).
"""

from __future__ import annotations

from runtime.attention.cache import (
    allocate_kv_cache,
    allocate_latent_cache,
    gqa_bytes_read,
    mla_bytes_read,
)
from runtime.attention.kernel import active_backend, decode_attention, mla_decode_attention
from runtime.attention.timing import bench_case, make_case

__all__ = [
    "active_backend",
    "allocate_kv_cache",
    "allocate_latent_cache",
    "bench_case",
    "decode_attention",
    "gqa_bytes_read",
    "make_case",
    "mla_bytes_read",
    "mla_decode_attention",
]

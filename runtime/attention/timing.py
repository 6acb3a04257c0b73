"""Builds a random decode-attention case on a shuffled paged cache and times the kernel on it.

`bench_case(...) -> (median seconds per call, KV bytes read per call)` is what the profiler calls to
measure attention bandwidth at a thread count; bench/bench_attention.py uses the same cases.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from planner.units import KV_BLOCK_SIZE
from runtime.attention.cache import (
    allocate_kv_cache,
    allocate_latent_cache,
    gqa_bytes_read,
    mla_bytes_read,
)
from runtime.attention.kernel import decode_attention, mla_decode_attention

MLA_NOPE_HEAD_DIM = 128  # DeepSeek V2/V3: the softmax scale is (qk_nope_head_dim + rope_dim) ** -0.5


@dataclass
class DecodeCase:
    layout: str  # "gqa" or "mla"
    q: torch.Tensor  # gqa: [B, Hq, D]; mla: q_latent [B, H, R]
    q_rope: torch.Tensor | None  # mla: [B, H, P]
    new_rows: tuple[torch.Tensor, ...]  # gqa: (k_new, v_new) [B, Hkv, D]; mla: (latent_new [B, R+P],)
    caches: tuple[torch.Tensor, ...]  # gqa: (k_cache, v_cache); mla: (latent_cache,)
    block_tables: torch.Tensor  # int32 [B, max_blocks], blocks shuffled across the cache
    context_lens: torch.Tensor  # int32 [B]
    scale: float
    bytes_read: int

    @property
    def block_size(self) -> int:
        return self.caches[0].shape[2] if self.layout == "gqa" else self.caches[0].shape[1]

    def run(self, threads: int | None = None, backend: str | None = None) -> torch.Tensor:
        if self.layout == "gqa":
            return decode_attention(
                self.q,
                *self.new_rows,
                *self.caches,
                self.block_tables,
                self.context_lens,
                self.scale,
                num_threads=threads,
                backend=backend,
            )
        return mla_decode_attention(
            self.q,
            self.q_rope,
            *self.new_rows,
            *self.caches,
            self.block_tables,
            self.context_lens,
            self.scale,
            num_threads=threads,
            backend=backend,
        )


def make_case(
    layout: str,
    context_lens: list[int],
    heads: int,
    kv_heads: int = 1,
    head_dim: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    block_size: int = KV_BLOCK_SIZE,
    rope_dim: int = 64,
    seed: int = 0,
) -> DecodeCase:
    """Random case; for layout "mla", head_dim is kv_lora_rank and kv_heads is ignored."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.tensor(context_lens, dtype=torch.int32)
    batch = len(context_lens)
    blocks_per_seq = [(n + block_size - 1) // block_size for n in context_lens]
    max_blocks = max(blocks_per_seq)
    order = torch.randperm(sum(blocks_per_seq), generator=gen).to(torch.int32)
    block_tables = torch.zeros(batch, max_blocks, dtype=torch.int32)
    start = 0
    for b, count in enumerate(blocks_per_seq):
        block_tables[b, :count] = order[start : start + count]
        start += count
    num_blocks = start

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    def fill(cache: torch.Tensor) -> torch.Tensor:
        for block in range(0, cache.shape[0], 1024):  # in slices, to bound the fp32 temporary
            part = cache[block : block + 1024]
            part.copy_(rand(*part.shape))
        return cache

    if layout == "gqa":
        caches = tuple(fill(c) for c in allocate_kv_cache(num_blocks, kv_heads, block_size, head_dim, dtype))
        return DecodeCase(
            "gqa",
            rand(batch, heads, head_dim),
            None,
            (rand(batch, kv_heads, head_dim), rand(batch, kv_heads, head_dim)),
            caches,
            block_tables,
            lens,
            head_dim**-0.5,
            gqa_bytes_read(lens, kv_heads, head_dim, dtype),
        )
    if layout == "mla":
        width = head_dim + rope_dim
        latent_cache = fill(allocate_latent_cache(num_blocks, block_size, width, dtype))
        scale = (MLA_NOPE_HEAD_DIM + rope_dim) ** -0.5
        return DecodeCase(
            "mla",
            rand(batch, heads, head_dim),
            rand(batch, heads, rope_dim),
            (rand(batch, width),),
            (latent_cache,),
            block_tables,
            lens,
            scale,
            mla_bytes_read(lens, width, dtype),
        )
    raise ValueError(f"layout must be 'gqa' or 'mla', got {layout!r}")


def time_call(fn, repeats: int = 7, warmup: int = 2, clock=time.perf_counter) -> float:
    """Median time of fn() in seconds (wall time; pass clock=time.thread_time for single-thread CPU time)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def bench_case(
    layout: str = "gqa",
    batch: int = 64,
    context: int = 1024,
    heads: int = 32,
    kv_heads: int = 8,
    head_dim: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    threads: int | None = None,
    block_size: int = KV_BLOCK_SIZE,
    repeats: int = 7,
    backend: str | None = None,
) -> tuple[float, int]:
    """(median seconds of one decode attention call, KV bytes it reads) for a uniform-length batch."""
    case = make_case(layout, [context] * batch, heads, kv_heads, head_dim, dtype, block_size)
    seconds = time_call(lambda: case.run(threads, backend), repeats=repeats)
    return seconds, case.bytes_read

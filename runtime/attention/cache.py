"""Allocation of the paged host KV cache and the KV-bytes arithmetic the kernel's speed is measured in.

Layouts (docs/contracts.md): GQA k/v [num_blocks, num_kv_heads, block_size, head_dim]; MLA latent
[num_blocks, block_size, kv_lora_rank + rope_dim]. Blocks are allocated once, uninitialised: a slot is only
read after the step that appended to it. On Linux the allocation is advised to use transparent huge pages
(MADV_HUGEPAGE, before first touch): a cache block is one 4 KiB page at typical shapes, and blocks are
read in random order, so 2 MiB pages save a TLB miss per block (about 10% kernel speed measured here).
"""

from __future__ import annotations

import ctypes
import sys

import torch

MADV_HUGEPAGE = 14
PAGE = 4096


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


def empty_host(shape: tuple[int, ...], dtype: torch.dtype, huge_pages: bool = True) -> torch.Tensor:
    tensor = torch.empty(shape, dtype=dtype)
    if huge_pages:
        advise_huge_pages(tensor)
    return tensor


def allocate_kv_cache(
    num_blocks: int,
    num_kv_heads: int,
    block_size: int,
    head_dim: int,
    dtype: torch.dtype = torch.bfloat16,
    huge_pages: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (num_blocks, num_kv_heads, block_size, head_dim)
    return empty_host(shape, dtype, huge_pages), empty_host(shape, dtype, huge_pages)


def allocate_latent_cache(
    num_blocks: int,
    block_size: int,
    latent_dim: int,
    dtype: torch.dtype = torch.bfloat16,
    huge_pages: bool = True,
) -> torch.Tensor:
    return empty_host((num_blocks, block_size, latent_dim), dtype, huge_pages)


def attended_tokens(context_lens: torch.Tensor, sliding_window: int | None = None) -> int:
    lens = context_lens.long()
    if sliding_window:
        lens = lens.clamp(max=sliding_window)
    return int(lens.sum())


def gqa_bytes_read(
    context_lens: torch.Tensor,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    sliding_window: int | None = None,
) -> int:
    """Bytes of K and V one decode_attention call reads (every attended token, every kv head)."""
    elem = torch.tensor([], dtype=dtype).element_size()
    return attended_tokens(context_lens, sliding_window) * num_kv_heads * head_dim * 2 * elem


def mla_bytes_read(context_lens: torch.Tensor, latent_dim: int, dtype: torch.dtype) -> int:
    """Bytes of latent one mla_decode_attention call reads (each cached row once for all heads)."""
    elem = torch.tensor([], dtype=dtype).element_size()
    return attended_tokens(context_lens) * latent_dim * elem

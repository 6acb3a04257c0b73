"""Pure-torch decode attention over the paged KV cache: the fallback when the C++ extension is missing.

Same contract as `runtime.attention.decode_attention` / `mla_decode_attention` (see docs/contracts.md):
append this step's K/V (or latent) at position context_lens-1 of each sequence, then attend to the last
`sliding_window` (or all) cached tokens, with `sinks` [Hq] (one extra logit per head in each softmax). Computes in `compute_dtype` (fp32 by default); one sequence at a
time, gathering its blocks, so it is simple rather than fast. `num_threads` is not used here.
"""

from __future__ import annotations

import torch


def append_slot(
    cache: torch.Tensor,
    rows: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_axis_size: int,
    has_heads: bool,
) -> None:
    """Write rows [B, (Hkv,) D] at position context_lens-1 of each sequence's block list."""
    positions = context_lens.long() - 1
    batch = torch.arange(block_tables.shape[0])
    blocks = block_tables[batch, positions // block_axis_size].long()
    offsets = positions % block_axis_size
    if has_heads:
        cache[blocks, :, offsets] = rows.to(cache.dtype)  # [B, Hkv, D]
    else:
        cache[blocks, offsets] = rows.to(cache.dtype)  # [B, R+P]


def _attended_range(length: int, sliding_window: int | None) -> tuple[int, int]:
    start = max(0, length - sliding_window) if sliding_window else 0
    return start, length


def decode_attention_reference(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    compute_dtype: torch.dtype = torch.float32,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    num_seqs, num_q_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    group = num_q_heads // num_kv_heads
    append_slot(k_cache, k_new, block_tables, context_lens, block_size, has_heads=True)
    append_slot(v_cache, v_new, block_tables, context_lens, block_size, has_heads=True)
    out = torch.empty(num_seqs, num_q_heads, head_dim, dtype=compute_dtype)
    for b in range(num_seqs):
        start, end = _attended_range(int(context_lens[b]), sliding_window)
        num_blocks = (end + block_size - 1) // block_size
        ids = block_tables[b, :num_blocks].long()
        keys = k_cache[ids].permute(1, 0, 2, 3).reshape(num_kv_heads, -1, head_dim)[:, start:end]
        values = v_cache[ids].permute(1, 0, 2, 3).reshape(num_kv_heads, -1, head_dim)[:, start:end]
        queries = q[b].to(compute_dtype).view(num_kv_heads, group, head_dim)
        scores = queries @ keys.to(compute_dtype).transpose(1, 2) * scale  # [Hkv, G, n]
        if sinks is not None:
            sink = sinks.to(compute_dtype).view(num_kv_heads, group, 1)
            probs = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
        else:
            probs = torch.softmax(scores, dim=-1)
        out[b] = (probs @ values.to(compute_dtype)).reshape(num_q_heads, head_dim)
    return out.to(q.dtype) if compute_dtype == torch.float32 else out


def mla_decode_attention_reference(
    q_latent: torch.Tensor,
    q_rope: torch.Tensor,
    latent_new: torch.Tensor,
    latent_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    num_seqs, num_heads, rank = q_latent.shape
    _, block_size, width = latent_cache.shape
    append_slot(latent_cache, latent_new, block_tables, context_lens, block_size, has_heads=False)
    out = torch.empty(num_seqs, num_heads, rank, dtype=compute_dtype)
    for b in range(num_seqs):
        end = int(context_lens[b])
        num_blocks = (end + block_size - 1) // block_size
        ids = block_tables[b, :num_blocks].long()
        latent = latent_cache[ids].reshape(-1, width)[:end].to(compute_dtype)  # [n, R+P]
        queries = torch.cat([q_latent[b], q_rope[b]], dim=-1).to(compute_dtype)  # [H, R+P]
        probs = torch.softmax(queries @ latent.T * scale, dim=-1)
        out[b] = probs @ latent[:, :rank]
    return out.to(q_latent.dtype) if compute_dtype == torch.float32 else out

"""Prefill attention on the device through `scaled_dot_product_attention`: never a materialised [T, T].

How it works: docs/design.md, `runtime/engine/prefill_attention.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.model.attention import causal_mask

SCORES_BYTES = 256 << 20  # fp32 scores one query block may need on a fallback path
MIN_QUERY_BLOCK = 64


def query_block(num_keys: int, num_heads: int) -> int:
    return max(MIN_QUERY_BLOCK, SCORES_BYTES // max(num_keys * num_heads * 4, 1))


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    num_queries, num_heads, dim = q.shape
    num_keys, value_dim = k.shape[0], v.shape[-1]
    group = num_heads // k.shape[1]
    if value_dim < dim:
        v = F.pad(v, (0, dim - value_dim))
    queries = q.transpose(0, 1)[None]  # [1, Hq, T, D]
    keys = k.transpose(0, 1).repeat_interleave(group, dim=0)[None]  # [1, Hq, S, D]
    values = v.transpose(0, 1).repeat_interleave(group, dim=0)[None]  # [1, Hq, S, D]
    block = query_block(num_keys, num_heads)
    outputs = []
    for first_query in range(0, num_queries, block):
        last_query = min(first_query + block, num_queries)
        key_end = num_keys - num_queries + last_query  # keys the block's last query sees
        key_start = (
            0 if sliding_window is None else max(0, key_end - (last_query - first_query) - sliding_window + 1)
        )
        count, span = last_query - first_query, key_end - key_start
        qb = queries[:, :, first_query:last_query]
        kb, vb = keys[:, :, key_start:key_end], values[:, :, key_start:key_end]
        if sinks is not None:
            out = _with_sinks(qb, kb, vb, scale, causal_mask(count, span, sliding_window, q.device), sinks)
        elif sliding_window is None and count == span:
            out = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=scale)
        else:
            mask = causal_mask(count, span, sliding_window, q.device)  # [count, span] bool, bottom-right
            out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)
        outputs.append(out[0, :, :, :value_dim])  # [Hq, count, Dv]
    return torch.cat(outputs, dim=1).transpose(0, 1)  # [T, Hq, Dv]


def fits_one_call(length: int, num_heads: int) -> bool:
    """Whether `causal_attention` runs a prompt of `length` tokens (from position 0) as one causal SDPA call."""
    return length <= query_block(length, num_heads)


def prompts_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, num_prompts: int
) -> torch.Tensor:
    """`num_prompts` prompts of equal length from position 0, their rows stacked ([P*T, H, D]), in one causal
    SDPA call over a batch of prompts: what `causal_attention` computes for each alone (`fits_one_call`)."""
    length, num_heads, dim = q.shape[0] // num_prompts, q.shape[1], q.shape[2]
    value_dim, group = v.shape[-1], num_heads // k.shape[1]
    if value_dim < dim:
        v = F.pad(v, (0, dim - value_dim))
    queries = q.view(num_prompts, length, num_heads, dim).transpose(1, 2)  # [P, Hq, T, D]
    keys = k.view(num_prompts, length, -1, dim).transpose(1, 2).repeat_interleave(group, dim=1)
    values = v.view(num_prompts, length, -1, dim).transpose(1, 2).repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(queries, keys, values, is_causal=True, scale=scale)
    return out[..., :value_dim].transpose(1, 2).reshape(num_prompts * length, num_heads, value_dim)


def _with_sinks(
    qb: torch.Tensor,
    kb: torch.Tensor,
    vb: torch.Tensor,
    scale: float,
    visible: torch.Tensor,
    sinks: torch.Tensor,
) -> torch.Tensor:
    """SDPA over the block's keys plus a zero key/value whose score is each head's sink."""
    heads, count = qb.shape[1], qb.shape[2]
    zero = kb.new_zeros(1, heads, 1, kb.shape[-1])
    mask = torch.zeros(visible.shape, dtype=qb.dtype, device=qb.device).masked_fill_(~visible, float("-inf"))
    sink = sinks.to(qb.dtype)[None, :, None, None].expand(1, heads, count, 1)
    mask = torch.cat((mask[None, None].expand(1, heads, -1, -1), sink), dim=-1)
    return F.scaled_dot_product_attention(
        qb, torch.cat((kb, zero), dim=2), torch.cat((vb, zero), dim=2), attn_mask=mask, scale=scale
    )

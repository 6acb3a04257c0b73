"""Grouped-query attention as separate pieces the reference decoder and the engine both call.

How it works: docs/design.md, `runtime/model/attention.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from planner.specs.spec import ModelSpec
from runtime.model.kv_cache import LayerKV
from runtime.model.layers import linear, rms_norm
from runtime.model.rope import Rope, apply_rope


def qkv_projection(
    x: torch.Tensor, w: Mapping[str, torch.Tensor], spec: ModelSpec, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_tokens = x.shape[0]
    q = linear(x, w["attn.q_proj"], w.get("attn.q_bias"))  # [T, Hq*D]
    k = linear(x, w["attn.k_proj"], w.get("attn.k_bias"))  # [T, Hkv*D]
    v = linear(x, w["attn.v_proj"], w.get("attn.v_bias"))
    if spec.qk_norm == "full":
        q = rms_norm(q, w["attn.q_norm"], spec.rms_norm_eps)
        k = rms_norm(k, w["attn.k_norm"], spec.rms_norm_eps)
    if spec.clip_qkv is not None:
        q, k, v = (t.clamp(-spec.clip_qkv, spec.clip_qkv) for t in (q, k, v))
    q = q.view(num_tokens, -1, spec.head_dim)
    k = k.view(num_tokens, -1, spec.head_dim)
    v = v.view(num_tokens, -1, spec.head_dim)
    if spec.qk_norm == "per_head":
        q = rms_norm(q, w["attn.q_norm"], spec.rms_norm_eps)
        k = rms_norm(k, w["attn.k_norm"], spec.rms_norm_eps)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def causal_mask(
    num_queries: int, num_keys: int, sliding_window: int | None, device: torch.device | None = None
) -> torch.Tensor:
    """[T, S] bool, True where query i (at position S-T+i) may attend key j."""
    query_pos = torch.arange(num_keys - num_queries, num_keys, device=device)[:, None]
    key_pos = torch.arange(num_keys, device=device)[None, :]
    visible = key_pos <= query_pos
    if sliding_window is not None:
        visible &= query_pos - key_pos < sliding_window
    return visible


def attention_core(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    num_queries, num_heads, _ = q.shape
    group = num_heads // k.shape[1]
    keys = k.repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, S, D]
    values = v.repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, S, Dv]
    scores = torch.matmul(q.transpose(0, 1), keys.transpose(1, 2)) * scale  # [Hq, T, S]
    mask = causal_mask(num_queries, keys.shape[1], sliding_window, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    if sinks is not None:
        sink = sinks.to(scores.dtype)[:, None, None].expand(-1, num_queries, 1)
        probs = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1, dtype=torch.float32)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    probs = probs.to(q.dtype)
    return torch.matmul(probs, values).transpose(0, 1)  # [T, Hq, Dv]


def o_projection(o: torch.Tensor, w: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return linear(o.reshape(o.shape[0], -1), w["attn.o_proj"], w.get("attn.o_bias"))


def gqa_attention(
    x: torch.Tensor,
    w: Mapping[str, torch.Tensor],
    spec: ModelSpec,
    layer: int,
    rope: Rope,
    positions: torch.Tensor,
    kv: LayerKV,
) -> torch.Tensor:
    cos, sin = rope.cos_sin(positions, x.dtype)
    q, k, v = qkv_projection(x, w, spec, cos, sin)
    cached = kv.append(k=k, v=v)
    window = spec.sliding_window if spec.is_sliding_layer(layer) else None
    o = attention_core(q, cached["k"], cached["v"], spec.head_dim**-0.5, window, w.get("attn.sinks"))
    return o_projection(o, w)

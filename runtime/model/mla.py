"""Multi-head latent attention (DeepSeek-V2/V3) as pieces the reference decoder and the engine both call.

How it works: docs/design.md, `runtime/model/mla.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from planner.specs.spec import ModelSpec
from runtime.model.attention import attention_core, o_projection
from runtime.model.kv_cache import LayerKV
from runtime.model.layers import rms_norm
from runtime.model.rope import Rope, apply_rope, rope_from_spec
from runtime.model.rope_yarn import yarn_softmax_scale

LATENT_NORM_EPS = 1e-6  # transformers builds q_a_layernorm / kv_a_layernorm with the default eps
DECODE_FORMS = ("absorbed", "expanded")

Weights = Mapping[str, torch.Tensor]


def mla_rope(spec: ModelSpec) -> Rope:
    return rope_from_spec(spec, dim=spec.qk_rope_head_dim)


def mla_softmax_scale(spec: ModelSpec) -> float:
    return yarn_softmax_scale(spec.qk_nope_head_dim + spec.qk_rope_head_dim, spec.rope_scaling)


def rope_is_interleaved(spec: ModelSpec) -> bool:
    return spec.family == "deepseek_v2" or bool(spec.extra.get("rope_interleave", True))


def rope_dtype(spec: ModelSpec, dtype: torch.dtype) -> torch.dtype:
    """transformers rotates in fp32 for V2 (complex multiply) and in the activation dtype for V3."""
    return torch.float32 if spec.family == "deepseek_v2" else dtype


def apply_mla_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """x [T, H, P] rotated at the positions cos/sin [T, P] (`Rope.cos_sin` tables) were built for."""
    if not interleaved:
        return apply_rope(x, cos, sin)
    half = cos.shape[-1] // 2
    cos, sin = cos[:, None, :half], sin[:, None, :half]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.cat((even * cos - odd * sin, odd * cos + even * sin), dim=-1)


def _query(x: torch.Tensor, w: Weights, spec: ModelSpec) -> torch.Tensor:
    if spec.q_lora_rank:
        compressed = rms_norm(F.linear(x, w["attn.q_a_proj"]), w["attn.q_a_norm"], LATENT_NORM_EPS)
        return F.linear(compressed, w["attn.q_b_proj"])
    return F.linear(x, w["attn.q_proj"])


def mla_project(
    x: torch.Tensor, w: Weights, spec: ModelSpec, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_tokens = x.shape[0]
    rank, rope_dim = spec.kv_lora_rank, spec.qk_rope_head_dim
    q = _query(x, w, spec).view(num_tokens, spec.num_heads, spec.qk_nope_head_dim + rope_dim)
    q_nope, q_rope = q.split([spec.qk_nope_head_dim, rope_dim], dim=-1)
    compressed, k_rope = F.linear(x, w["attn.kv_a_proj"]).split([rank, rope_dim], dim=-1)  # [T,R], [T,P]
    compressed = rms_norm(compressed, w["attn.kv_a_norm"], LATENT_NORM_EPS)
    interleaved = rope_is_interleaved(spec)
    work = rope_dtype(spec, x.dtype)
    cos, sin = cos.to(work), sin.to(work)
    q_rope = apply_mla_rope(q_rope.to(work), cos, sin, interleaved).to(x.dtype)
    k_rope = apply_mla_rope(k_rope[:, None, :].to(work), cos, sin, interleaved)[:, 0].to(x.dtype)
    return q_nope, q_rope, torch.cat((compressed, k_rope), dim=-1)


def mla_expand_latent(latent: torch.Tensor, w: Weights, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    num_keys = latent.shape[0]
    compressed, k_rope = latent.split([spec.kv_lora_rank, spec.qk_rope_head_dim], dim=-1)
    kv = F.linear(compressed, w["attn.kv_b_proj"]).view(num_keys, spec.num_heads, -1)  # [S, H, N+V]
    k_nope, v = kv.split([spec.qk_nope_head_dim, spec.v_head_dim], dim=-1)
    k = torch.cat((k_nope, k_rope[:, None, :].expand(-1, spec.num_heads, -1)), dim=-1)  # [S, H, N+P]
    return k, v


def kv_b_heads(w: Weights, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """W_UK [H, N, R] and W_UV [H, V, R]: views of kv_b_proj per head."""
    per_head = w["attn.kv_b_proj"].view(
        spec.num_heads, spec.qk_nope_head_dim + spec.v_head_dim, spec.kv_lora_rank
    )
    return per_head[:, : spec.qk_nope_head_dim], per_head[:, spec.qk_nope_head_dim :]


def mla_absorb_query(q_nope: torch.Tensor, w: Weights, spec: ModelSpec) -> torch.Tensor:
    w_uk, _ = kv_b_heads(w, spec)
    return torch.bmm(q_nope.transpose(0, 1), w_uk).transpose(0, 1)  # [T, H, R]


def mla_output_from_latent(o_latent: torch.Tensor, w: Weights, spec: ModelSpec) -> torch.Tensor:
    _, w_uv = kv_b_heads(w, spec)
    return torch.bmm(o_latent.transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1)  # [T, H, V]


def mla_latent_attention(
    q_latent: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal attention of T queries (the last T positions) over S latent rows, as one-KV-head MQA."""
    query = torch.cat((q_latent, q_rope), dim=-1)  # [T, H, R+P]
    keys = latent[:, None, :]  # [S, 1, R+P]
    values = latent[:, None, : q_latent.shape[-1]]  # [S, 1, R]
    return attention_core(query, keys, values, scale)


def mla_expanded_attention(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    latent: torch.Tensor,
    w: Weights,
    spec: ModelSpec,
    scale: float,
) -> torch.Tensor:
    k, v = mla_expand_latent(latent, w, spec)
    return attention_core(torch.cat((q_nope, q_rope), dim=-1), k, v, scale)  # [T, H, V]


def mla_absorbed_attention(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    latent: torch.Tensor,
    w: Weights,
    spec: ModelSpec,
    scale: float,
) -> torch.Tensor:
    o_latent = mla_latent_attention(mla_absorb_query(q_nope, w, spec), q_rope, latent, scale)
    return mla_output_from_latent(o_latent, w, spec)  # [T, H, V]


AttentionFn = Callable[[torch.Tensor, Weights, ModelSpec, int, Rope, torch.Tensor, LayerKV], torch.Tensor]


def make_mla_attention(decode_form: str = "absorbed") -> AttentionFn:
    if decode_form not in DECODE_FORMS:
        raise ValueError(f"decode_form {decode_form!r} is not one of {DECODE_FORMS}")
    decode = mla_absorbed_attention if decode_form == "absorbed" else mla_expanded_attention

    def mla_layer_attention(
        x: torch.Tensor,
        w: Weights,
        spec: ModelSpec,
        layer: int,
        rope: Rope,
        positions: torch.Tensor,
        kv: LayerKV,
    ) -> torch.Tensor:
        cos, sin = rope.cos_sin(positions, torch.float32)
        q_nope, q_rope, latent = mla_project(x, w, spec, cos, sin)
        cached = kv.append(latent=latent)["latent"]  # [S, R+P]
        attend = decode if x.shape[0] == 1 else mla_expanded_attention
        return o_projection(attend(q_nope, q_rope, cached, w, spec, mla_softmax_scale(spec)), w)

    return mla_layer_attention


mla_attention = make_mla_attention("absorbed")

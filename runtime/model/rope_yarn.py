"""YaRN rotary scaling (DeepSeek-V2/V3 and any config with `rope_scaling.rope_type: yarn`), torch only.

How it works: docs/design.md, `runtime/model/rope_yarn.py`.
"""

from __future__ import annotations

import math

import torch

from planner.specs.spec import ModelSpec


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _correction_dim(num_rotations: float, dim: int, base: float, max_positions: int) -> float:
    return (dim * math.log(max_positions / (num_rotations * 2 * math.pi))) / (2 * math.log(base))


def yarn_inv_freq(dim: int, theta: float, scaling: dict, spec: ModelSpec) -> tuple[torch.Tensor, float]:
    original = scaling.get("original_max_position_embeddings") or spec.max_position_embeddings
    factor = scaling.get("factor")
    factor = float(factor) if factor is not None else spec.max_position_embeddings / original
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1
    low = _correction_dim(beta_fast, dim, theta, original)
    high = _correction_dim(beta_slow, dim, theta, original)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    keep_original = 1 - ramp
    inv_freq = interpolation * (1 - keep_original) + extrapolation * keep_original
    return inv_freq, float(attention_factor)


def yarn_softmax_scale(head_dim: int, scaling: dict | None) -> float:
    scale = head_dim**-0.5
    scaling = scaling or {}
    if (scaling.get("rope_type") or scaling.get("type") or "default") != "default":
        mscale_all_dim = scaling.get("mscale_all_dim") or 0
        if mscale_all_dim:
            mscale = yarn_mscale(float(scaling["factor"]), mscale_all_dim)
            scale = scale * mscale * mscale
    return scale

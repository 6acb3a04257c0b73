"""Rotary position embeddings: inverse frequencies per RoPE variant, cos/sin tables, application.

`ROPE_VARIANTS` maps a `rope_type` (from `spec.rope_scaling`, None/"default" = plain RoPE) to a function
`(dim, theta, scaling, spec) -> (inv_freq [dim/2] fp32, attention_scaling)`; new variants (DeepSeek's YaRN)
register there. `Rope.cos_sin(positions, dtype)` builds the tables like transformers (fp32 angles, cast to
the activation dtype). "longrope" is Phi-3.5-MoE's as transformers 5.23 `PhimoeRotaryEmbedding` runs it: the
short factors' frequencies at every position (its forward never uses the long ones), cos/sin scaled by
`short_mscale`, or by `long_mscale` for the tokens past `original_max_position_embeddings` (transformers
decides per call by the call's last position: the same for one sequence decoded token by token).
`apply_rope(x [T,H,D], cos [T,R], sin [T,R])` uses the rotate-half layout on the
first R dims (R = `spec.rotary_dim`: all of D but for GLM-4.5's partial rotary); the rest pass through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from planner.errors import UserError
from planner.specs.spec import ModelSpec
from runtime.model.rope_yarn import yarn_inv_freq

RopeInit = Callable[[int, float, dict, ModelSpec], tuple[torch.Tensor, float]]


def default_inv_freq(dim: int, theta: float, scaling: dict, spec: ModelSpec) -> tuple[torch.Tensor, float]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    return inv_freq, 1.0


def linear_inv_freq(dim: int, theta: float, scaling: dict, spec: ModelSpec) -> tuple[torch.Tensor, float]:
    inv_freq, attention_scaling = default_inv_freq(dim, theta, scaling, spec)
    return inv_freq / float(scaling["factor"]), attention_scaling


LONGROPE_KEYS = ("short_factor", "short_mscale", "long_mscale", "original_max_position_embeddings")


def longrope_inv_freq(dim: int, theta: float, scaling: dict, spec: ModelSpec) -> tuple[torch.Tensor, float]:
    inv_freq, _ = default_inv_freq(dim, theta, scaling, spec)
    return inv_freq / torch.tensor(scaling["short_factor"], dtype=torch.float32), float(
        scaling["short_mscale"]
    )


ROPE_VARIANTS: dict[str, RopeInit] = {
    "default": default_inv_freq,
    "linear": linear_inv_freq,
    "yarn": yarn_inv_freq,
    "longrope": longrope_inv_freq,
}


def rope_type(spec: ModelSpec) -> str:
    scaling = spec.rope_scaling or {}
    return scaling.get("rope_type") or scaling.get("type") or "default"


@dataclass(frozen=True)
class Rope:
    inv_freq: torch.Tensor  # [dim/2] fp32
    attention_scaling: float = 1.0
    long_from: int | None = None  # positions from here on are scaled by long_scaling instead (longrope)
    long_scaling: float = 1.0

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, dim] for integer positions [T]."""
        freqs = positions[:, None].float() * self.inv_freq.to(positions.device)[None, :]  # [T, dim/2]
        angles = torch.cat((freqs, freqs), dim=-1)
        scaling = self.attention_scaling
        if self.long_from is not None:
            long = (positions >= self.long_from)[:, None]
            scaling = torch.where(long, self.long_scaling, self.attention_scaling).to(angles.dtype)
        cos = angles.cos() * scaling
        sin = angles.sin() * scaling
        return cos.to(dtype), sin.to(dtype)


def rope_from_spec(spec: ModelSpec, dim: int | None = None) -> Rope:
    kind = rope_type(spec)
    init = ROPE_VARIANTS.get(kind)
    if init is None:
        raise UserError(
            f"{spec.name}: RoPE variant {kind!r} is not implemented",
            f"use a checkpoint whose rope_scaling type is one of {sorted(ROPE_VARIANTS)}",
        )
    scaling = spec.rope_scaling or {}
    needed = LONGROPE_KEYS if kind == "longrope" else ()
    if any(key not in scaling for key in needed):
        raise UserError(
            f"{spec.name}: longrope rope_scaling lacks {[key for key in needed if key not in scaling]}",
            f"give rope_scaling all of {list(LONGROPE_KEYS)}",
        )
    inv_freq, attention_scaling = init(dim or spec.rotary_dim, spec.rope_theta, scaling, spec)
    if kind == "longrope":
        long_from, long_scaling = (
            int(scaling["original_max_position_embeddings"]),
            float(scaling["long_mscale"]),
        )
        return Rope(inv_freq, attention_scaling, long_from, long_scaling)
    return Rope(inv_freq=inv_freq, attention_scaling=attention_scaling)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] rotated at the positions cos/sin [T, R] were built for (its first R <= D dims)."""
    rotary = cos.shape[-1]
    if rotary < x.shape[-1]:
        return torch.cat((apply_rope(x[..., :rotary], cos, sin), x[..., rotary:]), dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return x * cos + rotate_half(x) * sin

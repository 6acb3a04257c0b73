"""Elementwise and feed-forward building blocks shared by every architecture, the engine and the profiler.

- `rms_norm(x, weight, eps)`: RMSNorm with fp32 accumulation, result in x's dtype (as transformers does).
- `norm(x, w, name, spec)`: the model's own norm read from a weight dict (`attn_norm`, `mlp_norm`,
  `final_norm`): RMSNorm, or LayerNorm (Phi-3.5-MoE) with the bias `<name>_bias` when stored.
- `linear(x, weight, bias)`: F.linear; a weight held wider than x (a plan's `gemm_dtype`) computes in its dtype
  and rounds the output to x's, what a GEMM in x's dtype accumulating in float32 gives.
- `expert_ffn(x [m,h], gate [I,h], up [I,h], down [h,I]) -> [m,h]`: `down(silu(gate x) * up x)`; the one
  expert-FFN function the reference forward, the engine and the profiler's GEMM measurement all call.
- `clamped_swiglu(gate, up, alpha, limit)`: gpt-oss's expert activation, (clamp(up) + 1) * glu(clamp(gate)).
- `dense_mlp(x, w, prefix)`: the same SwiGLU MLP read from a layer's weight dict (`mlp.*`, `moe.shared.*`).
Weights are [out_features, in_features] as on disk; nothing here knows about devices or offloading.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from planner.specs.spec import ModelSpec


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    input_dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(input_dtype)


def norm(x: torch.Tensor, w: Mapping[str, torch.Tensor], name: str, spec: ModelSpec) -> torch.Tensor:
    if spec.norm_type == "rms":
        return rms_norm(x, w[name], spec.rms_norm_eps)
    return F.layer_norm(x, (x.shape[-1],), w[name], w.get(f"{name}_bias"), spec.rms_norm_eps)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if weight.dtype == x.dtype:
        return F.linear(x, weight, bias)
    wide = weight.dtype  # a weight held wider than x: computed in its dtype, the output rounded to x's
    return F.linear(x.to(wide), weight, None if bias is None else bias.to(wide)).to(x.dtype)


def expert_ffn(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    return linear(F.silu(linear(x, gate)) * linear(x, up), down)


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


def dense_mlp(x: torch.Tensor, w: Mapping[str, torch.Tensor], prefix: str = "mlp.") -> torch.Tensor:
    return expert_ffn(x, w[f"{prefix}gate_proj"], w[f"{prefix}up_proj"], w[f"{prefix}down_proj"])

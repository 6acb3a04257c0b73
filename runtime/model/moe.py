"""The MoE block: router, grouping of tokens by expert, `expert_ffn` per expert, shared expert, combine.

How it works: docs/design.md, `runtime/model/moe.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from planner.specs.spec import ModelSpec
from runtime.model.layers import clamped_swiglu, dense_mlp, expert_ffn
from runtime.model.routing import route, router_logits


def group_by_expert(topk_ids: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    groups = []
    for expert in torch.unique(topk_ids).tolist():
        token_idx, slot = torch.where(topk_ids == expert)
        groups.append((expert, token_idx, slot))
    return groups


def routed_experts(
    x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, w: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    out = torch.zeros_like(x)
    for expert, token_idx, slot in group_by_expert(topk_ids):
        prefix = f"moe.experts.{expert}."
        y = expert_ffn(x[token_idx], w[prefix + "gate_proj"], w[prefix + "up_proj"], w[prefix + "down_proj"])
        weighted = y * topk_weights[token_idx, slot, None]  # [m, h], fp32
        out.index_add_(0, token_idx, weighted.to(out.dtype))
    return out


def fused_routed_experts(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w: Mapping[str, torch.Tensor],
    spec: ModelSpec,
) -> torch.Tensor:
    alpha, limit = spec.swiglu_alpha_limit
    gate_up, gate_up_bias = w["moe.experts.gate_up_proj"], w["moe.experts.gate_up_bias"]
    down, down_bias = w["moe.experts.down_proj"], w["moe.experts.down_bias"]
    out = torch.zeros_like(x)
    for expert, token_idx, slot in group_by_expert(topk_ids):
        h = x[token_idx] @ gate_up[expert] + gate_up_bias[expert]  # [m, 2I]
        y = clamped_swiglu(h[:, 0::2], h[:, 1::2], alpha, limit) @ down[expert] + down_bias[expert]
        out.index_add_(0, token_idx, (y * topk_weights[token_idx, slot, None]).to(out.dtype))
    return out


def shared_experts(x: torch.Tensor, w: Mapping[str, torch.Tensor], spec: ModelSpec) -> torch.Tensor | None:
    if spec.num_shared_experts == 0:
        return None
    shared = dense_mlp(x, w, prefix="moe.shared.")
    if spec.has_shared_expert_gate:
        shared = torch.sigmoid(F.linear(x, w["moe.shared_gate"])) * shared
    return shared


def moe_block(x: torch.Tensor, w: Mapping[str, torch.Tensor], spec: ModelSpec) -> torch.Tensor:
    topk_ids, topk_weights = route(router_logits(x, w, spec), spec, w.get("moe.router_bias"))
    if "moe.experts.gate_up_proj" in w:
        out = fused_routed_experts(x, topk_ids, topk_weights, w, spec)
    else:
        out = routed_experts(x, topk_ids, topk_weights, w)
    shared = shared_experts(x, w, spec)
    return out if shared is None else out + shared

"""DeepSeek routing as pure functions `(logits [T,E], spec, router_bias) -> (topk_ids [T,k], topk_weights [T,k])`.

How it works: docs/design.md, `runtime/model/routing_deepseek.py`.
"""

from __future__ import annotations

import torch

from planner.specs.spec import ModelSpec


def _keep_top_groups(group_scores: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """[T, E] bool: True for the experts of each token's `topk_group` best groups."""
    group_idx = torch.topk(group_scores, k=spec.topk_group, dim=-1, sorted=False)[1]  # [T, topk_group]
    group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)  # [T, G]
    per_group = spec.num_experts // spec.n_group
    return group_mask[:, :, None].expand(-1, -1, per_group).reshape(group_scores.shape[0], spec.num_experts)


def _finish(topk_weights: torch.Tensor, spec: ModelSpec, eps: float = 0.0) -> torch.Tensor:
    if spec.norm_topk_prob:
        topk_weights = topk_weights / (topk_weights.sum(dim=-1, keepdim=True) + eps)
    return topk_weights * spec.routed_scaling_factor


def softmax_group_limited(
    logits: torch.Tensor, spec: ModelSpec, router_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.softmax(logits.float(), dim=-1)  # [T, E]
    grouped = scores.view(scores.shape[0], spec.n_group, -1)  # [T, G, E/G]
    keep = _keep_top_groups(grouped.max(dim=-1).values, spec)
    scores = scores.masked_fill(~keep, 0.0)
    topk_weights, topk_ids = torch.topk(scores, spec.top_k, dim=-1, sorted=False)
    return topk_ids, _finish(topk_weights, spec)


def sigmoid_noaux_tc(
    logits: torch.Tensor, spec: ModelSpec, router_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.sigmoid(logits.float())  # [T, E]
    choice = scores if router_bias is None else scores + router_bias.float()
    grouped = choice.view(choice.shape[0], spec.n_group, -1)  # [T, G, E/G]
    group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1)[0].sum(dim=-1)  # [T, G]
    choice = choice.masked_fill(~_keep_top_groups(group_scores, spec), float("-inf"))
    topk_ids = torch.topk(choice, spec.top_k, dim=-1, sorted=False)[1]
    return topk_ids, _finish(scores.gather(1, topk_ids), spec, eps=1e-20)

"""Routing: router logits -> (topk_ids, topk_weights), as pure functions selected by the spec.

How it works: docs/design.md, `runtime/model/routing.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from planner.errors import UserError
from planner.specs.spec import ModelSpec
from runtime.model.routing_deepseek import sigmoid_noaux_tc, softmax_group_limited
from runtime.model.routing_sparsemixer import sparsemixer_top2

RouterFn = Callable[[torch.Tensor, ModelSpec, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor]]


FP32_ROUTER_FAMILIES = ("deepseek_v2", "deepseek_v3", "glm4_moe")


def router_logits(
    x: torch.Tensor, w: Mapping[str, torch.Tensor], spec: ModelSpec | None = None
) -> torch.Tensor:
    if spec is not None and spec.family in FP32_ROUTER_FAMILIES:
        return F.linear(x.float(), w["moe.router"].float())
    return F.linear(x, w["moe.router"], w.get("moe.router_linear_bias"))


def softmax_topk(
    logits: torch.Tensor, spec: ModelSpec, router_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(logits.float(), dim=-1)
    topk_weights, topk_ids = torch.topk(probs, spec.top_k, dim=-1)
    if spec.norm_topk_prob:
        topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
    if spec.routed_scaling_factor != 1.0:
        topk_weights = topk_weights * spec.routed_scaling_factor
    return topk_ids, topk_weights


ROUTERS: dict[tuple[str, str], RouterFn] = {
    ("softmax", "greedy"): softmax_topk,
    ("softmax", "group_limited_greedy"): softmax_group_limited,
    ("sigmoid", "noaux_tc"): sigmoid_noaux_tc,
    ("softmax", "sparsemixer"): sparsemixer_top2,
}


def routing_key(spec: ModelSpec) -> tuple[str, str]:
    return spec.scoring, spec.topk_method


def route(
    logits: torch.Tensor, spec: ModelSpec, router_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    router = ROUTERS.get(routing_key(spec))
    if router is None:
        raise UserError(
            f"{spec.name}: routing {routing_key(spec)} (scoring, topk_method) is not implemented",
            f"use a model whose routing is one of {sorted(ROUTERS)}",
        )
    return router(logits, spec, router_bias)

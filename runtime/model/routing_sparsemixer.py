"""Phi-3.5-MoE's sparsemixer routing at inference, `(logits [T,E], spec, router_bias) -> (ids [T,2], weights)`.

Registered in `runtime.model.routing.ROUTERS` under ("softmax", "sparsemixer"); computed in the logits' dtype,
as transformers 5.23 `sparsemixer(..., training=False)` does. Each of the two picks is the best expert still
in the running; its weight is its softmax over the experts whose logit lies within a relative margin of it
((best - logit) / max(|logit|, best) <= 2 * eps, eps = config `router_jitter_noise`, `spec.extra`, default
0.01); the second pick excludes the first from the candidates but not from the margin's denominator.
The weights are not renormalised and the returned ones are fp32.
"""

from __future__ import annotations

import torch

from planner.specs.spec import ModelSpec

DEFAULT_JITTER_EPS = 0.01


def _pick(candidates: torch.Tensor, logits: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(expert [T,1], weight [T,1]): the best of `candidates`, weighted by its softmax over those near it."""
    best, expert = candidates.max(dim=-1, keepdim=True)
    factor = logits.abs().clamp(min=best)
    far = (best - logits) / factor > 2 * eps
    gates = torch.softmax(candidates.masked_fill(far, float("-inf")), dim=-1)
    return expert, gates.gather(-1, expert)


def sparsemixer_top2(
    logits: torch.Tensor, spec: ModelSpec, router_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    eps = float(spec.extra.get("router_jitter_noise", DEFAULT_JITTER_EPS))
    first, first_weight = _pick(logits, logits, eps)
    second, second_weight = _pick(logits.scatter(-1, first, float("-inf")), logits, eps)
    topk_ids = torch.cat((first, second), dim=-1)
    return topk_ids, torch.cat((first_weight, second_weight), dim=-1).float()

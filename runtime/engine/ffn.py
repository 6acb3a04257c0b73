"""The feed-forward half of a layer over a whole token batch: router, grouped experts, shared experts, dense MLP.

`grouped_experts` is the engine's form of the model's routed-expert sum: tokens are grouped by expert with
one stable sort (instead of a mask per expert), and each expert's `expert_ffn` runs over all of its tokens
in chunks of at most `expert_batch` rows (index_select in, weighted index_add out, in the same order and
precision as `runtime.model.moe.routed_experts`, so results match the reference), each chunk padded to its
row bucket (`planner.row_buckets`: a bounded set of GEMM shapes, so oneDNN stops building new kernels). It returns the ids of
the experts the router activated, counted from its real outputs.
`ffn_block(x, w, spec, layer, expert_batch, timer)` is the residual branch input (post `mlp_norm`) to
output, timed per module (`router`, `experts`, `shared_experts`, `dense_mlp`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from planner.row_buckets import bucket_rows
from planner.spec import ModelSpec
from runtime.engine.instrumentation import ModuleTimer
from runtime.model.layers import dense_mlp, expert_ffn
from runtime.model.moe import shared_experts
from runtime.model.routing import route, router_logits


def grouped_experts(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                    w: Mapping[str, torch.Tensor], num_experts: int, expert_batch: int,
                    ) -> tuple[torch.Tensor, list[int]]:
    top_k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1)                       # [T*k]
    order = torch.argsort(flat, stable=True)          # token-major within each expert
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    token_of, slot_of = order // top_k, order % top_k
    out = torch.zeros_like(x)
    activated = []
    begin = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        activated.append(expert)
        prefix = f"moe.experts.{expert}."
        gate, up, down = w[prefix + "gate_proj"], w[prefix + "up_proj"], w[prefix + "down_proj"]
        for chunk in range(begin, begin + count, expert_batch):
            end = min(chunk + expert_batch, begin + count)
            tokens = token_of[chunk:end]
            rows = tokens.numel()
            padded = bucket_rows(rows)
            gather = tokens if padded == rows else torch.cat((tokens, tokens[:1].expand(padded - rows)))
            y = expert_ffn(x.index_select(0, gather), gate, up, down)[:rows]   # [m, h]
            weighted = y * topk_weights[tokens, slot_of[chunk:end], None]  # fp32
            out.index_add_(0, tokens, weighted.to(out.dtype))
        begin += count
    return out, activated


def ffn_block(x: torch.Tensor, w: Mapping[str, torch.Tensor], spec: ModelSpec, layer: int, expert_batch: int,
              timer: ModuleTimer) -> tuple[torch.Tensor, list[int]]:
    """The MoE (or dense MLP) output for normed x [T,h], and the activated expert ids (empty if dense)."""
    if not spec.is_moe_layer(layer):
        with timer.device_work("dense_mlp"):
            return dense_mlp(x, w, prefix="mlp."), []
    with timer.device_work("router"):
        topk_ids, topk_weights = route(router_logits(x, w, spec), spec, w.get("moe.router_bias"))
    with timer.device_work("experts"):
        out, activated = grouped_experts(x, topk_ids, topk_weights, w, spec.num_experts, expert_batch)
    if spec.num_shared_experts:
        with timer.device_work("shared_experts"):
            out = out + shared_experts(x, w, spec)
    return out, activated

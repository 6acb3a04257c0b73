"""The feed-forward half of a layer over a whole token batch: router, routed experts, shared experts, dense MLP.

How it works: docs/design.md, `runtime/engine/ffn.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from planner.errors import UserError
from planner.modules import Module
from planner.perf.expert_kernels import grouped_by_default
from planner.perf.row_buckets import bucket_rows
from planner.specs.spec import ModelSpec
from runtime.engine.expert_stacks import bias_names, dense_stacks, layer_stacks
from runtime.engine.instrumentation import ModuleTimer
from runtime.model.layers import clamped_swiglu, dense_mlp, linear
from runtime.model.moe import shared_experts
from runtime.model.routing import route, router_logits


def grouped_mm_supported(device: torch.device, dtype: torch.dtype, spec: ModelSpec) -> bool:
    """`torch._grouped_mm` on this device and dtype: the CPU (any float dtype); CUDA from sm90 in bf16 with
    16-byte aligned widths."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if device.type == "cpu":
        return True
    if device.type != "cuda" or dtype != torch.bfloat16:
        return False
    aligned = spec.hidden_size % 8 == 0 and spec.moe_intermediate_size % 8 == 0
    return aligned and torch.cuda.get_device_capability(device) >= (9, 0)


def use_grouped(
    choice: bool | None,
    device: torch.device,
    dtype: torch.dtype,
    spec: ModelSpec,
    gemm_dtype: str | None = None,
) -> bool:
    supported = grouped_mm_supported(device, dtype, spec)
    if choice is None:
        return supported and grouped_by_default(gemm_dtype)
    if choice and not supported:
        raise UserError(
            f"grouped experts need torch._grouped_mm, which does not run {dtype} on {device}",
            "set grouped_experts to false (or leave it unset) for this device",
        )
    return choice


def _expert_rows(topk_ids: torch.Tensor, topk_weights: torch.Tensor):
    """Flat (token, slot) rows: expert id [T*k], routing weight [T*k] fp32, token index [T*k]."""
    top_k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1)
    token_of = torch.arange(flat.numel(), device=flat.device) // top_k
    return flat, topk_weights.reshape(-1), token_of


def _activation(h: torch.Tensor, inter: int, swiglu: tuple[float, float] | None) -> torch.Tensor:
    if swiglu is None:
        return F.silu(h[:, :inter]).mul_(h[:, inter:])
    return clamped_swiglu(h[:, :inter], h[:, inter:], *swiglu)


def _biases(w, stack, lo: int, count: int, swiglu) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Experts lo..lo+count-1's biases: rows of those of the stack (lo, hi) they belong to."""
    if swiglu is None:
        return None, None
    return tuple(w[name][lo - stack[0] : lo - stack[0] + count] for name in bias_names(*stack))


def grouped_experts(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w: Mapping[str, torch.Tensor],
    num_experts: int,
    expert_batch: int,
    ranges: list[tuple[int, int]] | None = None,
    swiglu: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    flat, weights, token_of = _expert_rows(topk_ids, topk_weights)
    out = torch.zeros_like(x)
    for lo, gate_up, down, stack in dense_stacks(layer_stacks(w, ranges), x.dtype):
        count, inter = gate_up.shape[0], gate_up.shape[1] // 2
        gate_up_bias, down_bias = _biases(w, stack, lo, count, swiglu)
        local = flat - lo
        key = torch.where((local >= 0) & (local < count), local, count)  # rows of other stacks sort last
        sorted_key, order = torch.sort(key, stable=True)  # token-major within each expert
        ends = torch.searchsorted(sorted_key, torch.arange(count, device=key.device), right=True).to(
            torch.int32
        )
        rows, row_weights = token_of[order], weights[order]
        # other stacks' rows sort last: on the CPU (where a sync is free) the windows stop at this stack's rows
        own = int(ends[-1]) if count < num_experts and x.device.type == "cpu" else flat.numel()
        for start in range(0, own, expert_batch):
            stop = min(start + expert_batch, own)
            offs = (ends - start).clamp_(0, stop - start)  # [n] group ends within the window
            tokens = rows[start:stop]
            xs = x.index_select(0, tokens).to(gate_up.dtype)  # upcast where the stack is held wider
            h = torch._grouped_mm(xs, gate_up.transpose(1, 2), offs=offs).to(x.dtype)  # [m, 2I]
            if gate_up_bias is not None:
                expert_of_row = sorted_key[start:stop].clamp(max=count - 1)
                h = h + gate_up_bias.index_select(0, expert_of_row)
            act = _activation(h, inter, swiglu)
            y = torch._grouped_mm(act.to(down.dtype), down.transpose(1, 2), offs=offs).to(x.dtype)  # [m, h]
            if down_bias is not None:
                y = y + down_bias.index_select(0, expert_of_row)
            weighted = y * row_weights[start:stop, None]  # fp32
            if count < num_experts:  # rows past the last group belong to another stack: add nothing
                weighted = torch.where((sorted_key[start:stop] < count)[:, None], weighted, 0.0)
            out.index_add_(0, tokens, weighted.to(out.dtype))
    hit = torch.zeros(num_experts, dtype=torch.bool, device=x.device).index_fill_(0, flat, True)
    return out, hit


def looped_experts(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w: Mapping[str, torch.Tensor],
    num_experts: int,
    expert_batch: int,
    ranges: list[tuple[int, int]] | None = None,
    swiglu: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    flat, weights, token_of = _expert_rows(topk_ids, topk_weights)
    order = torch.argsort(flat, stable=True)  # token-major within each expert
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    tokens_sorted, weights_sorted = token_of[order], weights[order]
    out = torch.zeros_like(x)
    begin = 0
    for lo, gate_up, down, stack in dense_stacks(layer_stacks(w, ranges), x.dtype):
        inter = gate_up.shape[1] // 2
        gate_up_bias, down_bias = _biases(w, stack, lo, gate_up.shape[0], swiglu)
        for expert in range(lo, lo + gate_up.shape[0]):
            count = counts[expert]
            gate_up_e, down_e = gate_up[expert - lo], down[expert - lo]
            bias_in = None if gate_up_bias is None else gate_up_bias[expert - lo]
            bias_out = None if down_bias is None else down_bias[expert - lo]
            for chunk in range(begin, begin + count, expert_batch):
                end = min(chunk + expert_batch, begin + count)
                tokens = tokens_sorted[chunk:end]
                rows = tokens.numel()
                padded = bucket_rows(rows)
                gather = tokens if padded == rows else torch.cat((tokens, tokens[:1].expand(padded - rows)))
                xs = x.index_select(0, gather)
                if swiglu is None:
                    act = F.silu(linear(xs, gate_up_e[:inter])) * linear(xs, gate_up_e[inter:])
                else:
                    act = _activation(linear(xs, gate_up_e, bias_in), inter, swiglu)
                y = linear(act, down_e, bias_out)[:rows]  # [m, h]
                out.index_add_(0, tokens, (y * weights_sorted[chunk:end, None]).to(out.dtype))
            begin += count
    hit = torch.tensor([count > 0 for count in counts], device=x.device)
    return out, hit


def stacked_ffn_block(
    x: torch.Tensor,
    w: Mapping[str, torch.Tensor],
    spec: ModelSpec,
    layer: int,
    expert_batch: int,
    timer: ModuleTimer,
    grouped: bool = False,
    ranges: list[tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The MoE (or dense MLP) output for normed x [T,h], and the activated-expert mask [E] (None if dense)."""
    if not spec.is_moe_layer(layer):
        with timer.device_work(Module.DENSE_MLP):
            return dense_mlp(x, w, prefix="mlp."), None
    with timer.device_work(Module.ROUTER):
        topk_ids, topk_weights = route(router_logits(x, w, spec), spec, w.get("moe.router_bias"))
    with timer.device_work(Module.EXPERTS):
        experts = grouped_experts if grouped else looped_experts
        swiglu = spec.swiglu_alpha_limit if spec.expert_bias else None
        out, hit = experts(x, topk_ids, topk_weights, w, spec.num_experts, expert_batch, ranges, swiglu)
    if spec.num_shared_experts:
        with timer.device_work(Module.SHARED_EXPERTS):
            out = out + shared_experts(x, w, spec)
    return out, hit

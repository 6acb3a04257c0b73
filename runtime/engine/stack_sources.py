"""Sources of the weight store's tensors (`Source`), and of one layer's routed-expert stacks (`stack_sources`).

How it works: docs/design.md, `runtime/engine/stack_sources.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial

import torch

from runtime.engine.expert_stacks import (
    bias_names,
    expert_names,
    fill_down,
    fill_fused_down,
    fill_fused_down_bias,
    fill_fused_gate_up,
    fill_fused_gate_up_bias,
    fill_fused_quantized,
    fill_gate_up,
    stack_names,
)
from runtime.quant.config import SCALES, QuantLayout


@dataclass(frozen=True)
class Source:
    """One tensor the store holds: its name in the store, shape, dtype, and how to fill it from the checkpoint."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    fill: Callable[[torch.Tensor], None]
    read: Callable[[], torch.Tensor] | None = None  # a checkpoint tensor usable as is (None: a stack)

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * torch.empty((), dtype=self.dtype).element_size()


def tensor_meta(weights: Mapping[str, torch.Tensor], name: str) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype without reading data where the mapping can tell (the checkpoint's lazy weights)."""
    if callable(getattr(weights, "shape", None)) and callable(getattr(weights, "dtype", None)):
        return tuple(weights.shape(name)), weights.dtype(name)
    tensor = weights[name]
    return tuple(tensor.shape), tensor.dtype


Layouts = dict[str, QuantLayout]


def stack_sources(weights, layer: int, lo: int, hi: int) -> tuple[list[Source], Layouts]:
    """The stack of experts lo..hi-1 (sources), and the layouts of its quantized tensors by stack name."""
    if f"layers.{layer}.moe.experts.gate_up_proj" in weights:  # gpt-oss: fused on disk
        return _fused_stack_sources(weights, layer, lo, hi)
    n = hi - lo
    gate, _, down = expert_names(layer, 0)
    layout = getattr(weights, "quant", {}).get(gate)
    sources = []
    for suffix in ("", SCALES) if layout is not None else ("",):
        for name, first, rows, fill in zip(
            stack_names(lo, hi), (gate, down), (2, 1), (fill_gate_up, fill_down)
        ):
            (per_expert, *rest), dtype = tensor_meta(weights, first + suffix)
            fill = partial(fill, weights=weights, layer=layer, lo=lo, suffix=suffix)
            sources.append(Source(name + suffix, (n, rows * per_expert, *rest), dtype, fill=fill))
    if layout is None:
        return sources, {}
    stacked = (layout.stacked(n, 2), weights.quant[down].stacked(n))
    return sources, dict(zip(stack_names(lo, hi), stacked))


def _fused_stack_sources(weights, layer: int, lo: int, hi: int) -> tuple[list[Source], Layouts]:
    """gpt-oss's stacks from its fused tensors: float ones transposed to [n, out, in], MXFP4 ones as stored
    (their rows are output features already), and the biases."""
    n, prefix = hi - lo, f"layers.{layer}.moe.experts."
    gate_up, down = stack_names(lo, hi)
    quant = getattr(weights, "quant", {})
    layouts: Layouts = {}
    if prefix + "gate_up_proj" not in quant:
        (_, hidden, inter2), dtype = tensor_meta(weights, prefix + "gate_up_proj")
        parts = [
            (gate_up, (n, inter2, hidden), dtype, fill_fused_gate_up),
            (down, (n, hidden, inter2 // 2), dtype, fill_fused_down),
        ]
    else:
        parts = []
        for suffix in ("", SCALES):
            for name, proj in ((gate_up, "gate_up_proj"), (down, "down_proj")):
                (_, *rest), dtype = tensor_meta(weights, prefix + proj + suffix)
                parts.append(
                    (name + suffix, (n, *rest), dtype, partial(fill_fused_quantized, part=proj + suffix))
                )
        for name, proj in ((gate_up, "gate_up_proj"), (down, "down_proj")):
            layout = quant[prefix + proj]
            layouts[name] = replace(layout, shape=(n, *layout.shape[1:]), transposed=False)
    for name, bias, fill in zip(
        bias_names(lo, hi), ("gate_up_bias", "down_bias"), (fill_fused_gate_up_bias, fill_fused_down_bias)
    ):
        (_, *rest), dtype = tensor_meta(weights, prefix + bias)
        parts.append((name, (n, *rest), dtype, fill))
    sources = [
        Source(name, shape, dtype, fill=partial(fill, weights=weights, layer=layer, lo=lo))
        for name, shape, dtype, fill in parts
    ]
    return sources, layouts

"""Routed experts stacked per MoE layer: the weight store's layout and the names the FFN reads.

How it works: docs/design.md, `runtime/engine/expert_stacks.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
DEQUANT_CHUNK_BYTES = 64 << 20  # dequantized experts alive at once (a whole float layer never is)


FUSED_NAMES = (
    "moe.experts.gate_up_proj",
    "moe.experts.gate_up_bias",
    "moe.experts.down_proj",
    "moe.experts.down_bias",
)


def stack_names(lo: int, hi: int) -> tuple[str, str]:
    return f"moe.experts.{lo}-{hi}.gate_up", f"moe.experts.{lo}-{hi}.down"


def bias_names(lo: int, hi: int) -> tuple[str, str]:
    return f"moe.experts.{lo}-{hi}.gate_up_bias", f"moe.experts.{lo}-{hi}.down_bias"


def is_stack_name(local: str) -> bool:
    suffixes = (".gate_up", ".down", ".gate_up_bias", ".down_bias")
    return local.startswith("moe.experts.") and local.endswith(suffixes) and "-" in local


def _rows(weights: Mapping[str, torch.Tensor], name: str, lo: int, hi: int) -> torch.Tensor:
    """Rows lo..hi-1 of a tensor, read alone where the mapping can (the checkpoint's `rows`)."""
    reader = getattr(weights, "rows", None)
    return reader(name, lo, hi) if callable(reader) else weights[name][lo:hi]


def fill_fused_gate_up(dst: torch.Tensor, weights: Mapping[str, torch.Tensor], layer: int, lo: int) -> None:
    """dst [n, 2I, h] <- `gate_up_proj` [E, h, 2I] (gate columns even, up columns odd), one expert at a time."""
    inter, name = dst.shape[1] // 2, f"layers.{layer}.moe.experts.gate_up_proj"
    for j in range(dst.shape[0]):
        src = _rows(weights, name, lo + j, lo + j + 1)[0]
        dst[j, :inter].copy_(src[:, 0::2].T)
        dst[j, inter:].copy_(src[:, 1::2].T)


def fill_fused_down(dst: torch.Tensor, weights: Mapping[str, torch.Tensor], layer: int, lo: int) -> None:
    """dst [n, h, I] <- `down_proj` [E, I, h]."""
    for j in range(dst.shape[0]):
        dst[j].copy_(_rows(weights, f"layers.{layer}.moe.experts.down_proj", lo + j, lo + j + 1)[0].T)


def fill_fused_quantized(
    dst: torch.Tensor, weights: Mapping[str, torch.Tensor], layer: int, lo: int, part: str
) -> None:
    """dst [n, R, ...] <- a stored MXFP4 part of gpt-oss's experts (`gate_up_proj`, `down_proj`, `@scales`: rows
    are output features), one expert at a time; gate_up's rows (gate even, up odd) to gate rows, then up rows."""
    half, name = dst.shape[1] // 2, f"layers.{layer}.moe.experts.{part}"
    for j in range(dst.shape[0]):
        src = _rows(weights, name, lo + j, lo + j + 1)[0]
        if part.startswith("gate_up"):
            dst[j, :half].copy_(src[0::2])
            dst[j, half:].copy_(src[1::2])
        else:
            dst[j].copy_(src)


def fill_fused_gate_up_bias(
    dst: torch.Tensor, weights: Mapping[str, torch.Tensor], layer: int, lo: int
) -> None:
    inter = dst.shape[1] // 2
    src = _rows(weights, f"layers.{layer}.moe.experts.gate_up_bias", lo, lo + dst.shape[0])
    dst[:, :inter].copy_(src[:, 0::2])
    dst[:, inter:].copy_(src[:, 1::2])


def fill_fused_down_bias(dst: torch.Tensor, weights: Mapping[str, torch.Tensor], layer: int, lo: int) -> None:
    dst.copy_(_rows(weights, f"layers.{layer}.moe.experts.down_bias", lo, lo + dst.shape[0]))


def expert_names(layer: int, expert: int) -> tuple[str, str, str]:
    """Canonical names (docs/contracts.md) of one routed expert's gate, up and down projections."""
    return tuple(f"layers.{layer}.moe.experts.{expert}.{p}" for p in PROJECTIONS)


def fill_gate_up(
    dst: torch.Tensor, weights: Mapping[str, torch.Tensor], layer: int, lo: int, suffix: str = ""
) -> None:
    """dst [n, 2I, h] <- experts lo..lo+n-1's gate and up rows, one expert read at a time."""
    inter = dst.shape[1] // 2
    for j in range(dst.shape[0]):
        gate, up, _ = expert_names(layer, lo + j)
        dst[j, :inter].copy_(weights[gate + suffix])
        dst[j, inter:].copy_(weights[up + suffix])


def fill_down(
    dst: torch.Tensor, weights: Mapping[str, torch.Tensor], layer: int, lo: int, suffix: str = ""
) -> None:
    for j in range(dst.shape[0]):
        dst[j].copy_(weights[expert_names(layer, lo + j)[2] + suffix])


def stack_ranges(names) -> list[tuple[int, int]]:
    """The (lo, hi) expert ranges of the stacks among a layer's names, in expert order."""
    ranges = [
        tuple(int(v) for v in name.split(".")[2].split("-"))
        for name in names
        if is_stack_name(name) and name.endswith(".gate_up")
    ]
    return sorted(ranges)


def layer_stacks(
    w: Mapping[str, torch.Tensor],
    ranges: list[tuple[int, int]] | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(lo, gate_up, down) of each stack, looked up one stack at a time as the caller reaches it (a streamed
    stack's lookup waits for its copy); `ranges` (the store's `expert_ranges`) names them without listing w.
    A stack the caller is done with is handed back through `w.done_with(name)` where w has it (streamed in
    parts: `runtime.engine.streamer.StreamParts`), so its slot can take the next copy."""
    done_with = getattr(w, "done_with", None)
    for lo, hi in stack_ranges(w) if ranges is None else ranges:
        gate_up, down = stack_names(lo, hi)
        yield lo, w[gate_up], w[down]
        if done_with is not None:
            done_with(gate_up)


def dense_stacks(stacks, dtype: torch.dtype, chunk_bytes: int | None = None):
    """Yield (lo, gate_up, down, stack) float stacks: float ones as they are, quantized ones dequantized in
    chunks of experts from lo (each chunk's tensors exist only until the caller asks for the next); `stack`
    is the (lo, hi) experts of the stack the chunk belongs to (whose biases it reads)."""
    chunk_bytes = DEQUANT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    for lo, gate_up, down in stacks:
        stack = (lo, lo + gate_up.shape[0])
        if isinstance(gate_up, torch.Tensor):
            yield lo, gate_up, down, stack
            continue
        count, rows, cols = gate_up.shape
        per_expert = (rows * cols + down.shape[1] * down.shape[2]) * torch.empty(
            (), dtype=dtype
        ).element_size()
        step = max(1, chunk_bytes // per_expert)
        for start in range(0, count, step):
            stop = min(start + step, count)
            yield (
                lo + start,
                gate_up.experts(start, stop).dequantize(dtype),
                down.experts(start, stop).dequantize(dtype),
                stack,
            )


def expert_weights(
    w: Mapping[str, torch.Tensor], expert: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    for lo, gate_up, down in layer_stacks(w):
        if lo <= expert < lo + gate_up.shape[0]:
            inter = gate_up.shape[1] // 2
            return gate_up[expert - lo, :inter], gate_up[expert - lo, inter:], down[expert - lo]
    raise KeyError(f"expert {expert} is in no stack of this layer")

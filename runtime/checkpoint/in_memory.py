"""A random-weight checkpoint built in memory: the tensors `write_random_checkpoint` would write, never on disk.

`random_checkpoint(spec, dtype="bf16", seed=0) -> InMemoryCheckpoint` draws every canonical tensor with the
writer's init rules (`random_init`), so values match a written checkpoint of the same spec, dtype and seed.
It has what the engine and the reference forward read: `.spec`, `.weights` (canonical name -> tensor; tied
models alias `lm_head` to `embed`), `.tokenizer` (None) and `.dir` (None). For benchmarks that need real
shapes without writing tens of GB (bench.gpu_smoke). `fast=True` fills each large normal tensor from one
shared pool of normal values (at the tensor's own offset and scale) instead of drawing it: the same
distribution and scale, seconds instead of minutes for tens of GB, but values repeat across tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from planner.specs.spec import ModelSpec
from runtime.checkpoint.names import expected_tensors
from runtime.checkpoint.random_init import generate_chunks, init_rule
from runtime.checkpoint.writer import parse_dtype


@dataclass
class InMemoryCheckpoint:
    spec: ModelSpec
    weights: dict[str, torch.Tensor]
    tokenizer: None = None
    dir: Path | None = None


FAST_ELEMENTS = 1 << 20  # tensors above this many values come from the pool with fast=True


def _from_pool(pool: torch.Tensor, shape: tuple[int, ...], offset: int) -> torch.Tensor:
    """A tensor of `shape` copied from `pool` (already scaled, in the target dtype) from `offset` on."""
    out = torch.empty(shape, dtype=pool.dtype)
    flat, size = out.view(-1), pool.numel()
    for start in range(0, flat.numel(), size):
        count = min(size, flat.numel() - start)
        shift = (offset + start) % (size - count + 1)
        flat[start : start + count] = pool[shift : shift + count]
    return out


def random_checkpoint(
    spec: ModelSpec, dtype: str = "bf16", seed: int = 0, fast: bool = False
) -> InMemoryCheckpoint:
    torch_dtype = parse_dtype(dtype)
    spec = replace(spec, dtype=str(torch_dtype).removeprefix("torch."))
    pool = torch.randn(2 * FAST_ELEMENTS, generator=torch.Generator().manual_seed(seed)) if fast else None
    scaled: dict[float, torch.Tensor] = {}  # the pool at each std, in the checkpoint's dtype
    weights = {}
    for index, tensor in enumerate(expected_tensors(spec)):
        rule = init_rule(spec, tensor.canonical, tensor.shape)
        if pool is not None and rule.kind == "normal" and math.prod(tensor.shape) > FAST_ELEMENTS:
            if rule.std not in scaled:
                scaled[rule.std] = (pool * rule.std).to(torch_dtype)
            weights[tensor.canonical] = _from_pool(scaled[rule.std], tensor.shape, index * 7919)
            continue
        weights[tensor.canonical] = torch.cat(list(generate_chunks(tensor, rule, seed, torch_dtype)))
    if "lm_head" not in weights:
        weights["lm_head"] = weights["embed"]
    return InMemoryCheckpoint(spec, weights)

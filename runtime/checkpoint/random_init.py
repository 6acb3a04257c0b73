"""Random weights with sane activations, generated tensor by tensor in bounded chunks.

How it works: docs/design.md, `runtime/checkpoint/random_init.py`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from planner.specs.spec import ModelSpec
from runtime.checkpoint.names import ExpectedTensor

CHUNK_ELEMENTS = 1 << 24  # 64 MB of fp32 per generated block
EMBED_STD = 1.0
TIED_EMBED_STD = 0.02
ROUTER_GAIN = 1.0
BIAS_STD = 0.02
SINK_STD = 1.0


@dataclass(frozen=True)
class InitRule:
    kind: str  # "normal" | "ones" | "zeros"
    std: float = 0.0


def _is_output_projection(canonical: str) -> bool:
    return canonical.endswith(".o_proj") or canonical.endswith(".down_proj")


def init_rule(spec: ModelSpec, canonical: str, shape: tuple[int, ...]) -> InitRule:
    leaf = canonical.rsplit(".", 1)[-1]
    if leaf.endswith("norm"):
        return InitRule("ones")
    if leaf == "router_bias":
        return InitRule("zeros")
    if leaf == "sinks":
        return InitRule("normal", SINK_STD)
    if leaf.endswith("_bias"):
        return InitRule("normal", BIAS_STD)
    if canonical == "embed":
        return InitRule("normal", TIED_EMBED_STD if spec.tie_word_embeddings else EMBED_STD)
    fan_in = shape[-2] if len(shape) == 3 else shape[-1]  # fused experts (gpt-oss) are [E, in, out]
    if leaf == "router":
        return InitRule("normal", ROUTER_GAIN / math.sqrt(fan_in))
    std = 1.0 / math.sqrt(fan_in)
    if _is_output_projection(canonical):
        std /= math.sqrt(2 * spec.num_layers)
    return InitRule("normal", std)


def tensor_seed(seed: int, disk_name: str) -> int:
    digest = hashlib.sha256(f"{seed}/{disk_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generate_chunks(
    tensor: ExpectedTensor, rule: InitRule, seed: int, dtype: torch.dtype
) -> Iterator[torch.Tensor]:
    """The tensor's values as consecutive row blocks (dim 0), each at most CHUNK_ELEMENTS values."""
    shape = tensor.shape
    row_elements = math.prod(shape[1:]) if len(shape) > 1 else 1
    rows_per_chunk = max(1, CHUNK_ELEMENTS // row_elements) if len(shape) > 1 else shape[0]
    generator = torch.Generator().manual_seed(tensor_seed(seed, tensor.disk_name))
    for start in range(0, shape[0], rows_per_chunk):
        block_shape = (min(rows_per_chunk, shape[0] - start), *shape[1:])
        if rule.kind == "ones":
            yield torch.ones(block_shape, dtype=dtype)
        elif rule.kind == "zeros":
            yield torch.zeros(block_shape, dtype=dtype)
        else:
            block = torch.randn(block_shape, generator=generator, dtype=torch.float32)
            yield block.mul_(rule.std).to(dtype)

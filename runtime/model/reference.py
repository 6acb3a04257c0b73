"""The reference decoder: embed -> layers (attention + MoE or dense MLP) -> final norm -> lm_head.

`ReferenceModel(spec, weights)` takes a ModelSpec and a mapping of canonical weight names to tensors
(docs/contracts.md) and computes in the weights' dtype. Per sequence:
`cache = model.new_cache()`; `model.prefill(tokens, cache) -> logits [T,V]`; `model.decode(token, cache)
-> logits [V]`; both append to the cache (`model.forward` is the general form). It is the correctness
oracle for the engine: simple and exact, one sequence at a time, no padding.
`ATTENTION` maps `spec.attention` to the layer attention function (GQA from `attention`, MLA from `mla`,
same signature), `decoder_layer` and `ffn_block` are the per-layer pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from planner.specs.spec import ModelSpec
from runtime.checkpoint.support import check_reference_runnable
from runtime.model.attention import gqa_attention
from runtime.model.kv_cache import LayerKV, SequenceCache
from runtime.model.layers import dense_mlp, norm
from runtime.model.mla import mla_attention, mla_rope
from runtime.model.moe import moe_block
from runtime.model.rope import Rope, rope_from_spec
from runtime.model.routing import ROUTERS, routing_key

LayerWeights = Mapping[str, torch.Tensor]
HEAD_NAMES = ("final_norm", "final_norm_bias", "lm_head", "lm_head_bias")
AttentionFn = Callable[
    [torch.Tensor, LayerWeights, ModelSpec, int, Rope, torch.Tensor, LayerKV], torch.Tensor
]

ATTENTION: dict[str, AttentionFn] = {
    "gqa": gqa_attention,
    "mla": mla_attention,
}
ROPE_BUILDERS: dict[str, Callable[[ModelSpec], Rope]] = {
    "gqa": rope_from_spec,
    "mla": mla_rope,
}


def layer_weights(weights: Mapping[str, torch.Tensor], num_layers: int) -> list[dict[str, torch.Tensor]]:
    """Split canonical names `layers.{l}.<name>` into one dict per layer keyed by `<name>`."""
    layers: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]
    for name in weights:
        if not name.startswith("layers."):
            continue
        _, index, rest = name.split(".", 2)
        layers[int(index)][rest] = weights[name]
    return layers


def ffn_block(x: torch.Tensor, w: LayerWeights, spec: ModelSpec, layer: int) -> torch.Tensor:
    return moe_block(x, w, spec) if spec.is_moe_layer(layer) else dense_mlp(x, w, prefix="mlp.")


def decoder_layer(
    x: torch.Tensor,
    w: LayerWeights,
    spec: ModelSpec,
    layer: int,
    rope: Rope,
    positions: torch.Tensor,
    kv: LayerKV,
) -> torch.Tensor:
    attend = ATTENTION[spec.attention]
    x = x + attend(norm(x, w, "attn_norm", spec), w, spec, layer, rope, positions, kv)
    return x + ffn_block(norm(x, w, "mlp_norm", spec), w, spec, layer)


class ReferenceModel:
    def __init__(self, spec: ModelSpec, weights: Mapping[str, torch.Tensor]):
        check_reference_runnable(spec, ATTENTION, routing_key(spec), ROUTERS)
        self.spec = spec
        self.embed = weights["embed"]
        self.head = {name: weights[name] for name in HEAD_NAMES if name in weights}  # final norm, lm_head
        self.layers = layer_weights(weights, spec.num_layers)
        self.rope = ROPE_BUILDERS[spec.attention](spec)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    def new_cache(self) -> SequenceCache:
        return SequenceCache(self.spec.num_layers)

    @torch.inference_mode()
    def forward(
        self, tokens: Sequence[int] | torch.Tensor, cache: SequenceCache, last_only: bool = False
    ) -> torch.Tensor:
        """Logits [T, V] (or [1, V] with last_only) for T new tokens appended to the sequence in `cache`."""
        token_ids = torch.as_tensor(tokens, dtype=torch.long, device=self.embed.device).reshape(-1)
        positions = torch.arange(cache.length, cache.length + token_ids.numel(), device=token_ids.device)
        x = F.embedding(token_ids, self.embed)  # [T, h]
        for layer, (w, kv) in enumerate(zip(self.layers, cache.layers)):
            x = decoder_layer(x, w, self.spec, layer, self.rope, positions, kv)
        if last_only:
            x = x[-1:]
        return F.linear(
            norm(x, self.head, "final_norm", self.spec), self.head["lm_head"], self.head.get("lm_head_bias")
        )

    def prefill(
        self, tokens: Sequence[int] | torch.Tensor, cache: SequenceCache, last_only: bool = False
    ) -> torch.Tensor:
        return self.forward(tokens, cache, last_only)

    def decode(self, token: int, cache: SequenceCache) -> torch.Tensor:
        return self.forward([token], cache)[0]

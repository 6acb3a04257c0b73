"""Canonical weight names, their shapes from a ModelSpec, and per-architecture maps to on-disk HF names.

`expected_tensors(spec) -> list[ExpectedTensor]` lists every tensor a checkpoint of `spec` stores, in the
on-disk order transformers uses (embed, layers, final norm, lm_head), each with its canonical name
(docs/contracts.md), its on-disk name and its shape ([out, in] as on disk). Tied models store no lm_head.
The name maps are explicit tables, one per runnable family, checked against transformers 5.23
`save_pretrained` output by tests/test_checkpoint.py. Families without a map raise `UserError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from planner.errors import UserError
from planner.specs.spec import ModelSpec
from runtime.checkpoint.support import check_loadable

GLOBAL_NAMES = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.norm.weight",
    "final_norm_bias": "model.norm.bias",
    "lm_head": "lm_head.weight",
    "lm_head_bias": "lm_head.bias",
}

# Canonical per-layer suffix -> on-disk suffix after `model.layers.{layer}.`, shared by all families.
COMMON_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "attn_norm_bias": "input_layernorm.bias",
    "mlp_norm": "post_attention_layernorm.weight",
    "mlp_norm_bias": "post_attention_layernorm.bias",
    "attn.q_proj": "self_attn.q_proj.weight",
    "attn.k_proj": "self_attn.k_proj.weight",
    "attn.v_proj": "self_attn.v_proj.weight",
    "attn.o_proj": "self_attn.o_proj.weight",
    "attn.o_bias": "self_attn.o_proj.bias",
    "attn.sinks": "self_attn.sinks",
    "attn.q_bias": "self_attn.q_proj.bias",
    "attn.k_bias": "self_attn.k_proj.bias",
    "attn.v_bias": "self_attn.v_proj.bias",
    "attn.q_norm": "self_attn.q_norm.weight",
    "attn.k_norm": "self_attn.k_norm.weight",
    "attn.q_a_proj": "self_attn.q_a_proj.weight",
    "attn.q_a_norm": "self_attn.q_a_layernorm.weight",
    "attn.q_b_proj": "self_attn.q_b_proj.weight",
    "attn.kv_a_proj": "self_attn.kv_a_proj_with_mqa.weight",
    "attn.kv_a_norm": "self_attn.kv_a_layernorm.weight",
    "attn.kv_b_proj": "self_attn.kv_b_proj.weight",
    "mlp.gate_proj": "mlp.gate_proj.weight",
    "mlp.up_proj": "mlp.up_proj.weight",
    "mlp.down_proj": "mlp.down_proj.weight",
}

_EXPERTS_MLP = {
    "moe.router": "mlp.gate.weight",
    "moe.experts.{expert}.gate_proj": "mlp.experts.{expert}.gate_proj.weight",
    "moe.experts.{expert}.up_proj": "mlp.experts.{expert}.up_proj.weight",
    "moe.experts.{expert}.down_proj": "mlp.experts.{expert}.down_proj.weight",
}

_BLOCK_SPARSE_MOE = {
    "moe.router": "block_sparse_moe.gate.weight",
    "moe.experts.{expert}.gate_proj": "block_sparse_moe.experts.{expert}.w1.weight",
    "moe.experts.{expert}.up_proj": "block_sparse_moe.experts.{expert}.w3.weight",
    "moe.experts.{expert}.down_proj": "block_sparse_moe.experts.{expert}.w2.weight",
}
_SHARED_EXPERTS_WITH_BIAS = {
    **_EXPERTS_MLP,
    "moe.router_bias": "mlp.gate.e_score_correction_bias",
    "moe.shared.gate_proj": "mlp.shared_experts.gate_proj.weight",
    "moe.shared.up_proj": "mlp.shared_experts.up_proj.weight",
    "moe.shared.down_proj": "mlp.shared_experts.down_proj.weight",
}

# Canonical MoE suffix -> on-disk suffix, per family.
MOE_NAMES = {
    "mixtral": _BLOCK_SPARSE_MOE,
    "phimoe": _BLOCK_SPARSE_MOE,
    "qwen2_moe": {
        **_EXPERTS_MLP,
        "moe.shared.gate_proj": "mlp.shared_expert.gate_proj.weight",
        "moe.shared.up_proj": "mlp.shared_expert.up_proj.weight",
        "moe.shared.down_proj": "mlp.shared_expert.down_proj.weight",
        "moe.shared_gate": "mlp.shared_expert_gate.weight",
    },
    "qwen3_moe": _EXPERTS_MLP,
    "olmoe": _EXPERTS_MLP,
    "deepseek_v2": {
        **_EXPERTS_MLP,
        "moe.shared.gate_proj": "mlp.shared_experts.gate_proj.weight",
        "moe.shared.up_proj": "mlp.shared_experts.up_proj.weight",
        "moe.shared.down_proj": "mlp.shared_experts.down_proj.weight",
    },
    "deepseek_v3": _SHARED_EXPERTS_WITH_BIAS,
    "glm4_moe": _SHARED_EXPERTS_WITH_BIAS,
    # gpt-oss stores each layer's experts fused, [E, in, out] (gate and up columns interleaved)
    "gpt_oss": {
        "moe.router": "mlp.router.weight",
        "moe.router_linear_bias": "mlp.router.bias",
        "moe.experts.gate_up_proj": "mlp.experts.gate_up_proj",
        "moe.experts.gate_up_bias": "mlp.experts.gate_up_proj_bias",
        "moe.experts.down_proj": "mlp.experts.down_proj",
        "moe.experts.down_bias": "mlp.experts.down_proj_bias",
    },
}
FUSED_EXPERT_FAMILIES = ("gpt_oss",)

# On-disk tensors that carry no weights the model uses (stale rotary buffers in old exports).
IGNORED_DISK_NAMES = re.compile(r".*\.rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class ExpectedTensor:
    canonical: str  # e.g. "layers.3.moe.experts.5.up_proj"
    disk_name: str  # e.g. "model.layers.3.block_sparse_moe.experts.5.w3.weight"
    shape: tuple[int, ...]


def _attention_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    h = spec.hidden_size
    if spec.attention == "mla":
        q_dim = spec.num_heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim)
        shapes: dict[str, tuple[int, ...]] = {}
        if spec.q_lora_rank:
            shapes.update(
                {
                    "attn.q_a_proj": (spec.q_lora_rank, h),
                    "attn.q_a_norm": (spec.q_lora_rank,),
                    "attn.q_b_proj": (q_dim, spec.q_lora_rank),
                }
            )
        else:
            shapes["attn.q_proj"] = (q_dim, h)
        shapes.update(
            {
                "attn.kv_a_proj": (spec.kv_lora_rank + spec.qk_rope_head_dim, h),
                "attn.kv_a_norm": (spec.kv_lora_rank,),
                "attn.kv_b_proj": (
                    spec.num_heads * (spec.qk_nope_head_dim + spec.v_head_dim),
                    spec.kv_lora_rank,
                ),
                "attn.o_proj": (h, spec.num_heads * spec.v_head_dim),
            }
        )
        return shapes
    q_dim, kv_dim = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    shapes = {
        "attn.q_proj": (q_dim, h),
        "attn.k_proj": (kv_dim, h),
        "attn.v_proj": (kv_dim, h),
        "attn.o_proj": (h, q_dim),
    }
    if spec.attention_bias:
        shapes.update({"attn.q_bias": (q_dim,), "attn.k_bias": (kv_dim,), "attn.v_bias": (kv_dim,)})
    if spec.has_o_bias:
        shapes["attn.o_bias"] = (h,)
    if spec.attention_sinks:
        shapes["attn.sinks"] = (spec.num_heads,)
    if spec.qk_norm == "per_head":
        shapes.update({"attn.q_norm": (spec.head_dim,), "attn.k_norm": (spec.head_dim,)})
    elif spec.qk_norm == "full":
        shapes.update({"attn.q_norm": (q_dim,), "attn.k_norm": (kv_dim,)})
    return shapes


def _mlp_shapes(prefix: str, intermediate: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.gate_proj": (intermediate, hidden),
        f"{prefix}.up_proj": (intermediate, hidden),
        f"{prefix}.down_proj": (hidden, intermediate),
    }


def _feed_forward_shapes(spec: ModelSpec, layer: int) -> dict[str, tuple[int, ...]]:
    h = spec.hidden_size
    if not spec.is_moe_layer(layer):
        return _mlp_shapes("mlp", spec.dense_intermediate_size, h)
    e, inter = spec.num_experts, spec.moe_intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"moe.router": (e, h)}
    if spec.has_score_correction_bias:
        shapes["moe.router_bias"] = (e,)
    if spec.router_linear_bias:
        shapes["moe.router_linear_bias"] = (e,)
    if spec.family in FUSED_EXPERT_FAMILIES:
        shapes.update(
            {
                "moe.experts.gate_up_proj": (e, h, 2 * inter),
                "moe.experts.gate_up_bias": (e, 2 * inter),
                "moe.experts.down_proj": (e, inter, h),
                "moe.experts.down_bias": (e, h),
            }
        )
        return shapes
    for expert in range(spec.num_experts):
        shapes.update(_mlp_shapes(f"moe.experts.{expert}", inter, h))
    if spec.num_shared_experts:
        shapes.update(_mlp_shapes("moe.shared", spec.shared_intermediate_size, h))
    if spec.has_shared_expert_gate:
        shapes["moe.shared_gate"] = (1, h)
    return shapes


_EXPERT_SUFFIX = re.compile(r"^moe\.experts\.(\d+)\.(\w+)$")


def disk_suffix(family: str, canonical_suffix: str) -> str:
    """On-disk name of one per-layer canonical suffix (`moe.experts.3.up_proj` -> `...experts.3.w3.weight`)."""
    if canonical_suffix in COMMON_LAYER_NAMES:
        return COMMON_LAYER_NAMES[canonical_suffix]
    table = MOE_NAMES[family]
    match = _EXPERT_SUFFIX.match(canonical_suffix)
    if match:
        template = table.get(f"moe.experts.{{expert}}.{match.group(2)}")
        if template:
            return template.format(expert=match.group(1))
    elif canonical_suffix in table:
        return table[canonical_suffix]
    raise UserError(
        f"{family} has no on-disk name for {canonical_suffix!r}",
        "the spec asks for a tensor this architecture does not store",
    )


def expected_tensors(spec: ModelSpec) -> list[ExpectedTensor]:
    """Every stored tensor of a checkpoint of `spec`, in transformers' on-disk order."""
    check_loadable(spec, MOE_NAMES)
    h = spec.hidden_size
    norm_biases = spec.norm_type == "layernorm"
    tensors = [ExpectedTensor("embed", GLOBAL_NAMES["embed"], (spec.vocab_size, h))]
    for layer in range(spec.num_layers):
        shapes: dict[str, tuple[int, ...]] = {}
        for norm in ("attn_norm", "mlp_norm"):
            shapes.update({norm: (h,), **({f"{norm}_bias": (h,)} if norm_biases else {})})
        shapes.update({**_attention_shapes(spec), **_feed_forward_shapes(spec, layer)})
        for suffix, shape in shapes.items():
            disk = f"model.layers.{layer}.{disk_suffix(spec.family, suffix)}"
            tensors.append(ExpectedTensor(f"layers.{layer}.{suffix}", disk, shape))
    globals_ = {"final_norm": (h,), **({"final_norm_bias": (h,)} if norm_biases else {})}
    if not spec.tie_word_embeddings:
        globals_["lm_head"] = (spec.vocab_size, h)
        if spec.lm_head_bias:
            globals_["lm_head_bias"] = (spec.vocab_size,)
    tensors += [ExpectedTensor(name, GLOBAL_NAMES[name], shape) for name, shape in globals_.items()]
    return tensors


def is_ignored(spec: ModelSpec, disk_name: str, num_extra_layers: int = 0) -> bool:
    """On-disk tensors the runtime skips without complaint.

    `num_extra_layers`: DeepSeek-V3 multi-token-prediction layers stored after the last decoder layer
    (config `num_nextn_predict_layers`); transformers ignores them too. Tied models may still store lm_head.
    """
    if IGNORED_DISK_NAMES.match(disk_name):
        return True
    if spec.tie_word_embeddings and disk_name == GLOBAL_NAMES["lm_head"]:
        return True
    match = re.match(r"^model\.layers\.(\d+)\.", disk_name)
    return bool(match) and spec.num_layers <= int(match.group(1)) < spec.num_layers + num_extra_layers

"""Model specs: published parameter counts, KV sizes, loading by name/path/checkpoint, HF config round trips,
and transformers models built from `to_hf_config()` holding exactly the parameters we derive."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from planner.errors import UserError
from planner.perf.costs import ModelCosts
from planner.specs.hf_config import spec_from_hf_config, spec_to_hf_config
from planner.specs.spec import ALIASES, ALL_FAMILIES, RUNNABLE_FAMILIES, ModelSpec, list_specs, load_spec

SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "models"

PUBLISHED_MODELS = [
    "mixtral-8x7b",
    "mixtral-8x22b",
    "deepseek-v2-lite",
    "deepseek-v2",
    "deepseek-v3",
    "qwen1.5-moe-a2.7b",
    "qwen2-57b-a14b",
    "qwen3-30b-a3b",
    "qwen3-235b-a22b",
    "olmoe-1b-7b",
    "dbrx",
    "phi-3.5-moe",
    "gpt-oss-20b",
    "gpt-oss-120b",
    "glm-4.5",
    "glm-4.5-air",
    "kimi-k2",
    "qwen3-30b-a3b-fp8",
]
MINI_BY_FAMILY = {
    "mixtral": "mixtral-mini",
    "qwen2_moe": "qwen2-moe-mini",
    "qwen3_moe": "qwen3-mini",
    "olmoe": "olmoe-mini",
    "deepseek_v2": "deepseek-v2-lite-mini",
    "deepseek_v3": "deepseek-v3-mini",
    "gpt_oss": "gpt-oss-mini",
    "glm4_moe": "glm-4.5-mini",
    "phimoe": "phi-3.5-moe-mini",
}

# (total, active) in billions as published; DeepSeek and OpenAI count active parameters without the
# input embedding, the others with it.
PUBLISHED_COUNTS = {
    "mixtral-8x7b": (46.7, 12.9, True),
    "mixtral-8x22b": (141.0, 39.0, True),
    "deepseek-v3": (671.0, 37.0, False),
    "deepseek-v2-lite": (15.7, 2.4, False),
    "deepseek-v2": (236.0, 21.0, False),
    "qwen3-30b-a3b": (30.5, 3.3, True),
    "qwen3-235b-a22b": (235.0, 22.0, True),
    "olmoe-1b-7b": (6.9, 1.3, True),
    "qwen1.5-moe-a2.7b": (14.3, 2.7, True),
    "qwen2-57b-a14b": (57.4, 14.0, True),
    "dbrx": (132.0, 36.0, True),
    "phi-3.5-moe": (41.9, 6.6, True),
    "gpt-oss-20b": (20.9, 3.61, False),
    "gpt-oss-120b": (116.8, 5.13, False),
    "kimi-k2": (1040.0, 32.0, False),
    "qwen3-30b-a3b-fp8": (30.5, 3.3, True),
    # GLM publishes active parameters without the input embedding and the output head: see below
    "glm-4.5": (355.0, None, False),
    "glm-4.5-air": (106.0, None, False),
}
# Active parameters published without the embedding and lm_head (GLM-4.5 355B-A32B, GLM-4.5-Air 106B-A12B).
ACTIVE_WITHOUT_EMBED_AND_HEAD = {"glm-4.5": 32.0, "glm-4.5-air": 12.0}
# KV bytes per token (bf16, all layers) from shared/reference/moe-models.md, in KiB.
KV_KIB = {
    "mixtral-8x7b": 128,
    "mixtral-8x22b": 224,
    "deepseek-v2-lite": 30.4,
    "deepseek-v2": 67.5,
    "deepseek-v3": 68.6,
    "qwen1.5-moe-a2.7b": 192,
    "qwen2-57b-a14b": 56,
    "qwen3-30b-a3b": 96,
    "qwen3-235b-a22b": 188,
    "olmoe-1b-7b": 128,
    "dbrx": 160,
    "phi-3.5-moe": 128,
    "gpt-oss-20b": 48,
    "gpt-oss-120b": 72,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_parameter_counts_match_published(name):
    total, active, include_embed = PUBLISHED_COUNTS[name]
    costs = ModelCosts(load_spec(name))
    assert costs.total_params() / 1e9 == pytest.approx(total, rel=0.02)
    # DeepSeek-V2-Lite's exact count is 2.451B (hand-checked layer by layer); its card rounds it down to 2.4B.
    active_tolerance = 0.025 if name == "deepseek-v2-lite" else 0.02
    if name in ACTIVE_WITHOUT_EMBED_AND_HEAD:
        active = ACTIVE_WITHOUT_EMBED_AND_HEAD[name]
        assert (costs.active_params(include_embed=False) - costs.lm_head_params()) / 1e9 == pytest.approx(
            active, rel=active_tolerance
        )
        return
    assert costs.active_params(include_embed=include_embed) / 1e9 == pytest.approx(
        active, rel=active_tolerance
    )


@pytest.mark.parametrize("name", sorted(KV_KIB))
def test_kv_bytes_per_token_match_table(name):
    assert ModelCosts(load_spec(name)).kv_bytes_per_token() / 1024 == pytest.approx(KV_KIB[name], abs=0.05)


def test_every_published_model_and_mini_has_a_spec():
    available = set(list_specs())
    assert set(PUBLISHED_MODELS) <= available
    assert set(MINI_BY_FAMILY.values()) <= available
    assert set(ALIASES.values()) <= available


@pytest.mark.parametrize("name", list_specs())
def test_every_yaml_loads_and_round_trips_through_hf_config(name):
    spec = load_spec(name)
    assert spec.name == name
    assert spec.family in ALL_FAMILIES
    assert spec.source
    hf = json.loads(json.dumps(spec_to_hf_config(spec)))  # plain JSON, as written to config.json
    assert spec_from_hf_config(hf) == spec
    assert ModelSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec


def test_mixtral_mini_size():
    spec = load_spec("mixtral-mini")
    assert (spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (
        8,
        1024,
        16,
        4,
        64,
    )
    assert ModelCosts(spec).total_params() / 1e9 == pytest.approx(0.79, rel=0.05)


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("mixtral", "mixtral-8x7b"),
        ("MIXTRAL", "mixtral-8x7b"),
        ("deepseek-v3", "deepseek-v3"),
        ("qwen3", "qwen3-30b-a3b"),
        ("olmoe", "olmoe-1b-7b"),
        ("qwen2-moe", "qwen1.5-moe-a2.7b"),
        ("mixtral-8x22b", "mixtral-8x22b"),
    ],
)
def test_short_and_full_names(ref, expected):
    assert load_spec(ref).name == expected


def test_yaml_path_checkpoint_dir_and_config_json(tmp_path):
    spec = load_spec("qwen2-moe-mini")
    yaml_path = tmp_path / "custom.yaml"
    spec.save_yaml(yaml_path)
    assert load_spec(yaml_path) == spec
    assert load_spec(str(yaml_path)) == spec
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(spec_to_hf_config(spec)))
    assert load_spec(checkpoint) == spec
    assert load_spec(checkpoint / "config.json") == spec


def test_specs_from_the_user_dir(only_user_data):
    spec = load_spec(SHIPPED_MODELS / "olmoe-mini.yaml")
    (only_user_data / "models").mkdir()
    spec.save_yaml(only_user_data / "models" / "only-one.yaml")
    assert list_specs() == ["only-one"]
    assert load_spec("only-one").family == "olmoe"


PUBLISHED_DEEPSEEK_V3_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "auto_map": {"AutoConfig": "x"},
    "vocab_size": 129280,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_nextn_predict_layers": 1,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_shared_experts": 1,
    "n_routed_experts": 256,
    "ep_size": 1,
    "routed_scaling_factor": 2.5,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "topk_method": "noaux_tc",
    "n_group": 8,
    "topk_group": 4,
    "num_experts_per_tok": 8,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 3,
    "norm_topk_prob": True,
    "scoring_func": "sigmoid",
    "hidden_act": "silu",
    "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 0,
    "eos_token_id": 1,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    },
}
PUBLISHED_MIXTRAL_CONFIG = {
    "architectures": ["MixtralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mixtral",
    "num_attention_heads": 32,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "output_router_logits": False,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1e6,
    "router_aux_loss_coef": 0.02,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.36.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}


def _same_architecture(a: ModelSpec, b: ModelSpec) -> dict:
    ignore = {"name", "source", "extra", "dtype", "weight_formats"}
    da, db = a.to_dict(), b.to_dict()
    return {k: (da[k], db[k]) for k in da if k not in ignore and da[k] != db[k]}


def test_published_old_style_configs(tmp_path):
    v3 = spec_from_hf_config(PUBLISHED_DEEPSEEK_V3_CONFIG, name="deepseek-v3")
    assert _same_architecture(v3, load_spec("deepseek-v3")) == {}
    assert v3.dtype == "bfloat16" and v3.rope_scaling["rope_type"] == "yarn"
    assert v3.weight_formats == dict.fromkeys(
        ("qkv_proj", "o_proj", "experts", "shared_experts", "dense_mlp"), "fp8"
    )
    checkpoint = tmp_path / "Mixtral-8x7B-v0.1"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(PUBLISHED_MIXTRAL_CONFIG))
    mixtral = load_spec(checkpoint)
    assert mixtral.name == "Mixtral-8x7B-v0.1" and "config.json at" in mixtral.source
    assert _same_architecture(mixtral, load_spec("mixtral")) == {}


def test_transformers_5_rope_parameters_style():
    cfg = dict(PUBLISHED_DEEPSEEK_V3_CONFIG)
    scaling = cfg.pop("rope_scaling")
    del cfg["rope_theta"]
    cfg["rope_parameters"] = {
        **{k: v for k, v in scaling.items() if k != "type"},
        "rope_type": "yarn",
        "rope_theta": 10000.0,
    }
    assert spec_from_hf_config(cfg) == spec_from_hf_config(PUBLISHED_DEEPSEEK_V3_CONFIG)


def test_with_layers_truncates_and_keeps_dense_prefix():
    spec = load_spec("deepseek-v3")
    two = spec.with_layers(2)
    assert (two.name, two.num_layers, two.first_dense_layers) == ("deepseek-v3-L2", 2, 2)
    assert spec.with_layers(5).first_dense_layers == 3
    with pytest.raises(UserError):
        spec.with_layers(0)
    with pytest.raises(UserError):
        spec.with_layers(62)


def test_unknown_name_lists_available_specs():
    with pytest.raises(UserError) as err:
        load_spec("no-such-model")
    assert "no-such-model" in str(err.value) and "mixtral-8x7b" in str(err.value)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"hidden_size": None}, "missing spec fields"),
        ({"num_experts": -8}, "num_experts"),
        ({"top_k": 9}, "top_k exceeds num_experts"),
        ({"family": "gpt2"}, "family"),
        ({"bogus_field": 1}, "unknown spec fields"),
        ({"tie_word_embeddings": "no"}, "true or false"),
        ({"rope_theta": -1.0}, "positive number"),
    ],
)
def test_bad_yaml_raises_user_error(tmp_path, change, needle):
    data = load_spec("mixtral-8x7b").to_dict()
    data.update(change)
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=needle):
        load_spec(path)


def test_bad_config_json_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="unsupported model_type"):
        spec_from_hf_config({"model_type": "llama", "hidden_size": 8})
    with pytest.raises(UserError, match="lacks"):
        spec_from_hf_config({k: v for k, v in PUBLISHED_MIXTRAL_CONFIG.items() if k != "num_local_experts"})
    with pytest.raises(UserError, match="without config.json"):
        load_spec(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_costs_per_module():
    spec = load_spec("mixtral-8x7b")
    costs = ModelCosts(spec)
    h, inter = spec.hidden_size, spec.moe_intermediate_size
    assert costs.expert_bytes() == 3 * h * inter * 2
    layer = costs.layer_flops_per_token(0, context_len=1000)
    assert layer["experts"] == 2 * spec.top_k * 3 * h * inter
    assert layer["attention"] == 4 * spec.num_heads * spec.head_dim * 1000
    assert costs.layer_flops_per_token(0, context_len=2000)["attention"] == 2 * layer["attention"]
    assert sum(costs.module_bytes().values()) == costs.total_bytes()
    assert costs.module_bytes(0)["experts"] == spec.num_experts * costs.expert_bytes()
    assert costs.expected_distinct_experts(0) == 0
    assert costs.expected_distinct_experts(1) == pytest.approx(spec.top_k)
    assert costs.expected_distinct_experts(10_000) == pytest.approx(spec.num_experts)


def test_dense_layers_and_sliding_windows():
    v3 = ModelCosts(load_spec("deepseek-v3"))
    assert v3.layer_params(0)["experts"] == 0 and v3.layer_params(0)["dense_mlp"] == 3 * 7168 * 18432
    assert v3.layer_params(3)["dense_mlp"] == 0 and v3.layer_params(3)["router"] == 256 * 7168 + 256
    oss = ModelCosts(load_spec("gpt-oss-20b"))
    per_layer = oss.kv_bytes_per_token_per_layer()
    assert oss.kv_bytes_for_context(1000) == (12 * 1000 + 12 * 128) * per_layer
    assert oss.layer_flops_per_token(0, 1000)["attention"] < oss.layer_flops_per_token(1, 1000)["attention"]


def _tiny(spec: ModelSpec) -> ModelSpec:
    return dataclasses.replace(
        spec.with_layers(min(spec.num_layers, 3)),
        vocab_size=512,
        extra={},
        moe_intermediate_size=min(spec.moe_intermediate_size, 256),
    )


def _tiny_planning_only(name: str) -> ModelSpec:
    return dataclasses.replace(
        load_spec(name),
        name=f"{name}-tiny",
        num_layers=2,
        hidden_size=256,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        vocab_size=512,
        moe_intermediate_size=128,
        num_experts=4,
        top_k=2,
        extra={},
    )


TINY_SPECS = (
    [_tiny(load_spec(MINI_BY_FAMILY[f])) for f in RUNNABLE_FAMILIES]
    + [_tiny_planning_only(n) for n in ("phi-3.5-moe", "dbrx")]
    + [dataclasses.replace(_tiny(load_spec("qwen3-mini")), tie_word_embeddings=True, name="qwen3-tied")]
)


@pytest.mark.parametrize("spec", TINY_SPECS, ids=lambda s: s.name)
def test_transformers_builds_the_same_shapes(spec):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = spec_to_hf_config(spec)
    config = transformers.AutoConfig.for_model(
        hf["model_type"], **{k: v for k, v in hf.items() if k != "model_type"}
    )
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    state = model.state_dict()
    counts = {name: p.numel() for name, p in model.named_parameters()}  # tied weights appear once
    counts.update({name: b.numel() for name, b in model.named_buffers() if name in state})
    costs = ModelCosts(spec)
    assert sum(counts.values()) == costs.total_params()
    for layer in range(spec.num_layers):
        in_layer = sum(n for name, n in counts.items() if re.search(rf"\.(layers|blocks)\.{layer}\.", name))
        assert in_layer == sum(costs.layer_params(layer).values()), layer

"""Conversion between `ModelSpec` and HF `config.json` dicts, torch-free: fields common to all families.

How it works: docs/design.md, `planner/specs/hf_config.py`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from planner.errors import UserError
from planner.specs.hf_families import (
    ARCHITECTURES,
    DEFAULT_EPS,
    DEFAULT_ROPE_THETA,
    FAMILY_READERS,
    FAMILY_WRITERS,
    flatten_dbrx,
    nest_dbrx,
    require_keys,
)
from planner.specs.model_spec import ALL_FAMILIES, ModelSpec
from planner.specs.weight_formats import quantization_config_for, weight_formats_from_hf
from planner.values import is_finite_number, is_int

PRESERVED_KEYS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "rope_interleave",
    "router_jitter_noise",
    "swiglu_alpha",
    "swiglu_limit",
)


_FIELD_KINDS = {
    "an integer": (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "intermediate_size",
        "moe_intermediate_size",
        "num_local_experts",
        "num_experts",
        "num_experts_per_tok",
        "n_routed_experts",
        "n_shared_experts",
        "shared_expert_intermediate_size",
        "first_k_dense_replace",
        "moe_layer_freq",
        "decoder_sparse_step",
        "n_group",
        "topk_group",
        "q_lora_rank",
        "kv_lora_rank",
        "qk_rope_head_dim",
        "qk_nope_head_dim",
        "v_head_dim",
        "sliding_window",
        "d_model",
        "n_layers",
        "n_heads",
        "max_seq_len",
    ),
    "a finite number": (
        "rope_theta",
        "rms_norm_eps",
        "routed_scaling_factor",
        "clip_qkv",
        "partial_rotary_factor",
        "router_jitter_noise",
    ),
    "an object": (
        "rope_parameters",
        "rope_scaling",
        "quantization_config",
        "attn_config",
        "ffn_config",
        "moelens",
    ),
    "a string": ("_name_or_path",),
    "a list of strings": ("architectures", "layer_types"),
    "a list of integers": ("mlp_only_layers",),
}


_KIND_CHECKS = {
    "an integer": is_int,
    "a finite number": is_finite_number,
    "an object": lambda v: isinstance(v, dict),
    "a string": lambda v: isinstance(v, str),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "a list of integers": lambda v: isinstance(v, list) and all(is_int(x) for x in v),
}


def _check_field_types(cfg: dict) -> None:
    """UserError naming the first known config.json field whose JSON type is wrong (before any arithmetic)."""
    for kind, keys in _FIELD_KINDS.items():
        for key in keys:
            value = cfg.get(key)
            if value is not None and not _KIND_CHECKS[kind](value):
                raise UserError(
                    f"config.json field {key}={value!r}"[:200] + f" is not {kind}",
                    f"fix {key} in config.json",
                )


def _family(cfg: dict) -> str:
    family = cfg.get("model_type")
    if family is None:
        by_arch = {arch: fam for fam, arch in ARCHITECTURES.items()}
        family = next((by_arch[a] for a in cfg.get("architectures") or [] if a in by_arch), None)
    if family not in ALL_FAMILIES:
        raise UserError(
            f"unsupported model_type {family!r} in config.json",
            f"use a checkpoint of one of the families {list(ALL_FAMILIES)}",
        )
    return family


def _read_rope(cfg: dict, family: str) -> tuple[float, dict | None]:
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        params = params.get("full_attention") or next(iter(params.values()))
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", cfg.get("rope_theta"))
        rest = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = cfg.get("rope_theta") or (cfg.get("attn_config") or {}).get("rope_theta")
        rest = dict(cfg.get("rope_scaling") or {})
    rest.pop("partial_rotary_factor", None)  # a spec field of its own (GLM-4.5), not a scaling
    if "type" in rest:
        kind = rest.pop("type")
        rest.setdefault("rope_type", kind)
    if set(rest) <= {"rope_type"} and rest.get("rope_type", "default") == "default":
        rest = {}
    if theta is not None and not is_finite_number(theta):
        raise UserError(
            f"config.json rope_theta={theta!r} is not a finite number"[:200], "fix rope_theta in config.json"
        )
    return float(theta if theta is not None else DEFAULT_ROPE_THETA.get(family, 10000.0)), rest or None


def _read_dtype(cfg: dict) -> str:
    """The compute dtype (quantized weights: `weight_formats_from_hf`)."""
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16"
    return "bfloat16" if dtype == "auto" else str(dtype)


def spec_from_hf_config(cfg: dict, name: str | None = None) -> ModelSpec:
    _check_field_types(cfg)
    family = _family(cfg)
    if family == "dbrx":
        cfg = flatten_dbrx(cfg)
        _check_field_types(cfg)
    require_keys(cfg, family, ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"))
    ours = cfg.get("moelens") if isinstance(cfg.get("moelens"), dict) else {}
    default_name = (cfg.get("_name_or_path") or "").rstrip("/").split("/")[-1].lower() or f"{family}-custom"
    theta, rope_scaling = _read_rope(cfg, family)
    num_heads = cfg["num_attention_heads"]
    if num_heads <= 0:  # dbrx's n_heads reaches here through the family key map, before the spec's checks
        raise UserError(
            f"config.json num_attention_heads={num_heads!r} must be positive",
            "fix num_attention_heads (n_heads) in config.json",
        )
    common = dict(
        name=name or ours.get("name") or default_name,
        family=family,
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        num_heads=num_heads,
        num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // num_heads,
        vocab_size=cfg["vocab_size"],
        rope_theta=theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=cfg.get("max_position_embeddings") or 4096,
        rms_norm_eps=float(cfg.get("rms_norm_eps") or DEFAULT_EPS.get(family, 1e-5)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        dtype=_read_dtype(cfg),
        source=ours.get("source") or "HF config.json",
        extra={k: cfg[k] for k in PRESERVED_KEYS if cfg.get(k) is not None},
    )
    spec = ModelSpec(**{**common, **FAMILY_READERS[family](cfg)})
    formats = weight_formats_from_hf(cfg, family)
    return spec.with_weight_formats(formats) if formats else spec


def _rope_parameters(spec: ModelSpec) -> dict:
    scaling = dict(spec.rope_scaling or {})
    scaling.setdefault("rope_type", "default")
    if spec.partial_rotary_factor != 1.0 or spec.family == "glm4_moe":
        scaling["partial_rotary_factor"] = spec.partial_rotary_factor
    return {**scaling, "rope_theta": spec.rope_theta}


def spec_to_hf_config(spec: ModelSpec) -> dict:
    out = {
        "architectures": [ARCHITECTURES[spec.family]],
        "model_type": spec.family,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "rope_theta": spec.rope_theta,
        "rope_parameters": _rope_parameters(spec),
        "dtype": spec.dtype,
    }
    out.update(FAMILY_WRITERS[spec.family](spec))
    if spec.attention == "mla":
        del out["head_dim"]  # transformers sets it to qk_rope_head_dim itself
    if spec.family == "dbrx":
        out = nest_dbrx(out)
    out.update({k: v for k, v in spec.extra.items() if k not in out})
    quantization = quantization_config_for(spec.weight_formats, spec.family, spec.quantizable_modules)
    if quantization is not None:
        out["quantization_config"] = quantization
    out["moelens"] = {"name": spec.name, "source": spec.source}
    return out


def read_config_json(path: Path) -> dict:
    """The JSON object in a config.json file; UserError when unreadable or not an object."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON
        raise UserError(f"cannot read {path}: {err}", "fix config.json (it must be a JSON object)") from err
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object", "fix config.json")
    return config


def spec_from_config_json(path: Path, name: str | None = None, config: dict | None = None) -> ModelSpec:
    """The spec of a config.json (`config`: its contents, already read); named `name` or after its directory."""
    path = Path(path)
    config = read_config_json(path) if config is None else config
    if isinstance(config.get("moelens"), dict):  # written by us: the block holds name and source
        return spec_from_hf_config(config)
    spec = spec_from_hf_config(config, name=name or path.resolve().parent.name)
    return replace(spec, source=f"config.json at {path}")

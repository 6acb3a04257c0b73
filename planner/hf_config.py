"""Conversion between `ModelSpec` and HF `config.json` dicts, torch-free.

- `spec_from_hf_config(cfg, name=None) -> ModelSpec` reads published config.json files (old rope style:
  `rope_theta` + `rope_scaling` with `type`) and those transformers 5.x saves (`rope_parameters`, renamed
  attributes such as Qwen3's `num_local_experts`), for the families
  in `planner.spec.ALL_FAMILIES`. Unsupported layouts (sliding-window Qwen, sparse-step MoE layers, ...)
  raise `UserError`. Keys listed in `PRESERVED_KEYS` survive in `spec.extra`; other unknown keys are dropped.
- `spec_to_hf_config(spec) -> dict` writes a dict that transformers 5.23 `AutoConfig.for_model(model_type, **d)`
  accepts and whose model has exactly the spec's shapes; it carries a `moelens` block (name, source) so that
  `spec_from_hf_config(spec_to_hf_config(s)) == s`.
"""

from __future__ import annotations

from planner.errors import UserError
from planner.spec import ALL_FAMILIES, ModelSpec
from planner.values import is_finite_number, is_int

ARCHITECTURES = {
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "phimoe": "PhimoeForCausalLM",
    "dbrx": "DbrxForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
}
DEFAULT_ROPE_THETA = {"mixtral": 1e6, "phimoe": 1e6, "gpt_oss": 150000.0, "dbrx": 500000.0}
DEFAULT_EPS = {"qwen2_moe": 1e-6, "qwen3_moe": 1e-6, "deepseek_v2": 1e-6, "deepseek_v3": 1e-6}
PRESERVED_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "rope_interleave", "swiglu_alpha", "swiglu_limit")


_FIELD_KINDS = {
    "an integer": ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                   "vocab_size", "max_position_embeddings", "intermediate_size", "moe_intermediate_size",
                   "num_local_experts", "num_experts", "num_experts_per_tok", "n_routed_experts",
                   "n_shared_experts", "shared_expert_intermediate_size", "first_k_dense_replace", "moe_layer_freq",
                   "decoder_sparse_step", "n_group", "topk_group", "q_lora_rank", "kv_lora_rank",
                   "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "sliding_window", "d_model", "n_layers",
                   "n_heads", "max_seq_len"),
    "a finite number": ("rope_theta", "rms_norm_eps", "routed_scaling_factor", "clip_qkv"),
    "an object": ("rope_parameters", "rope_scaling", "quantization_config", "attn_config", "ffn_config", "moelens"),
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
                raise UserError(f"config.json field {key}={value!r}"[:200] + f" is not {kind}",
                                f"fix {key} in config.json")


def _family(cfg: dict) -> str:
    family = cfg.get("model_type")
    if family is None:
        by_arch = {arch: fam for fam, arch in ARCHITECTURES.items()}
        family = next((by_arch[a] for a in cfg.get("architectures") or [] if a in by_arch), None)
    if family not in ALL_FAMILIES:
        raise UserError(f"unsupported model_type {family!r} in config.json",
                        f"use a checkpoint of one of the families {list(ALL_FAMILIES)}")
    return family


def _require(cfg: dict, family: str, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if cfg.get(k) is None]
    if missing:
        raise UserError(f"{family} config.json lacks {missing}", "pass a complete HF config.json")


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
    if "type" in rest:
        kind = rest.pop("type")
        rest.setdefault("rope_type", kind)
    if set(rest) <= {"rope_type"} and rest.get("rope_type", "default") == "default":
        rest = {}
    if theta is not None and not is_finite_number(theta):
        raise UserError(f"config.json rope_theta={theta!r} is not a finite number"[:200], "fix rope_theta in config.json")
    return float(theta if theta is not None else DEFAULT_ROPE_THETA.get(family, 10000.0)), rest or None


def _read_dtype(cfg: dict) -> str:
    quant = cfg.get("quantization_config") or {}
    if quant.get("quant_method") == "fp8":
        return "float8_e4m3fn"
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16"
    return "bfloat16" if dtype == "auto" else str(dtype)


def _dense_prefix(cfg: dict, family: str) -> int:
    """Qwen `mlp_only_layers` / `decoder_sparse_step` -> number of leading dense layers."""
    dense = sorted(cfg.get("mlp_only_layers") or [])
    if cfg.get("decoder_sparse_step", 1) != 1 or dense != list(range(len(dense))):
        raise UserError(f"{family} config.json has MoE layers other than a dense prefix "
                        f"(decoder_sparse_step={cfg.get('decoder_sparse_step')}, mlp_only_layers={dense})",
                        "only models whose dense layers come first are supported")
    return len(dense)


def spec_from_hf_config(cfg: dict, name: str | None = None) -> ModelSpec:
    _check_field_types(cfg)
    family = _family(cfg)
    if family == "dbrx":
        cfg = _flatten_dbrx(cfg)
        _check_field_types(cfg)
    _require(cfg, family, ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"))
    ours = cfg.get("moelens") if isinstance(cfg.get("moelens"), dict) else {}
    default_name = (cfg.get("_name_or_path") or "").rstrip("/").split("/")[-1].lower() or f"{family}-custom"
    theta, rope_scaling = _read_rope(cfg, family)
    num_heads = cfg["num_attention_heads"]
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
    return ModelSpec(**{**common, **_FAMILY_READERS[family](cfg)})


def _read_mixtral(cfg: dict) -> dict:
    _require(cfg, "mixtral", ("num_local_experts", "num_experts_per_tok", "intermediate_size"))
    return dict(num_experts=cfg["num_local_experts"], top_k=cfg["num_experts_per_tok"],
                moe_intermediate_size=cfg["intermediate_size"], sliding_window=cfg.get("sliding_window"))


def _read_phimoe(cfg: dict) -> dict:
    return dict(_read_mixtral(cfg), attention_bias=bool(cfg.get("attention_bias", False)),
                lm_head_bias=bool(cfg.get("lm_head_bias", False)), norm_type="layernorm")


def _read_qwen(cfg: dict, family: str) -> dict:
    if "num_experts" not in cfg and "num_local_experts" in cfg:  # transformers 5.x Qwen3MoeConfig.to_dict()
        cfg = dict(cfg, num_experts=cfg["num_local_experts"])
    _require(cfg, family, ("num_experts", "num_experts_per_tok", "moe_intermediate_size"))
    if cfg.get("use_sliding_window"):
        raise UserError(f"{family} with use_sliding_window=true is not supported",
                        "use a checkpoint with use_sliding_window=false")
    out = dict(num_experts=cfg["num_experts"], top_k=cfg["num_experts_per_tok"],
               moe_intermediate_size=cfg["moe_intermediate_size"],
               dense_intermediate_size=cfg.get("intermediate_size") or 0,
               first_dense_layers=_dense_prefix(cfg, family),
               norm_topk_prob=bool(cfg.get("norm_topk_prob", False)))
    if family == "qwen2_moe":
        shared = cfg.get("shared_expert_intermediate_size", 0) or 0
        out.update(num_shared_experts=1 if shared else 0, shared_intermediate_size=shared,
                   has_shared_expert_gate=bool(shared), attention_bias=bool(cfg.get("qkv_bias", True)))
    else:
        out.update(qk_norm="per_head", attention_bias=bool(cfg.get("attention_bias", False)))
    return out


def _read_olmoe(cfg: dict) -> dict:
    _require(cfg, "olmoe", ("num_experts", "num_experts_per_tok", "intermediate_size"))
    return dict(num_experts=cfg["num_experts"], top_k=cfg["num_experts_per_tok"],
                moe_intermediate_size=cfg["intermediate_size"], qk_norm="full", clip_qkv=cfg.get("clip_qkv"),
                norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
                attention_bias=bool(cfg.get("attention_bias", False)))


def _read_deepseek(cfg: dict, family: str) -> dict:
    _require(cfg, family, ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "kv_lora_rank",
                           "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"))
    if cfg.get("moe_layer_freq", 1) != 1:
        raise UserError(f"{family} with moe_layer_freq={cfg['moe_layer_freq']} is not supported",
                        "use a checkpoint with moe_layer_freq=1")
    v3 = family == "deepseek_v3"
    shared = cfg.get("n_shared_experts") or 0
    return dict(
        num_kv_heads=cfg["num_attention_heads"],
        head_dim=cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"],
        num_experts=cfg["n_routed_experts"], top_k=cfg["num_experts_per_tok"],
        moe_intermediate_size=cfg["moe_intermediate_size"],
        num_shared_experts=shared, shared_intermediate_size=shared * cfg["moe_intermediate_size"],
        first_dense_layers=cfg.get("first_k_dense_replace") or 0,
        dense_intermediate_size=cfg.get("intermediate_size") or 0,
        scoring=cfg.get("scoring_func") or ("sigmoid" if v3 else "softmax"),
        topk_method=cfg.get("topk_method") or ("noaux_tc" if v3 else "greedy"),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", v3)),
        routed_scaling_factor=float(cfg.get("routed_scaling_factor") or 1.0),
        n_group=cfg.get("n_group") or 1, topk_group=cfg.get("topk_group") or 1,
        attention="mla", attention_bias=bool(cfg.get("attention_bias", False)),
        q_lora_rank=cfg.get("q_lora_rank") or 0, kv_lora_rank=cfg["kv_lora_rank"],
        qk_rope_head_dim=cfg["qk_rope_head_dim"], qk_nope_head_dim=cfg["qk_nope_head_dim"],
        v_head_dim=cfg["v_head_dim"],
    )


def _read_gpt_oss(cfg: dict) -> dict:
    _require(cfg, "gpt_oss", ("num_local_experts", "num_experts_per_tok", "intermediate_size"))
    layer_types = cfg.get("layer_types") or []
    window = cfg.get("sliding_window")
    if layer_types and "sliding_attention" not in layer_types:
        window = None
    if layer_types and window is not None:
        alternating = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(len(layer_types))]
        pattern = "even" if layer_types == alternating else "all"
        if pattern == "all" and set(layer_types) != {"sliding_attention"}:
            raise UserError(f"gpt_oss layer_types {layer_types} are not supported",
                            "use alternating sliding/full layers starting with sliding")
    else:
        pattern = "even"
    return dict(num_experts=cfg["num_local_experts"], top_k=cfg["num_experts_per_tok"],
                moe_intermediate_size=cfg["intermediate_size"], sliding_window=window,
                sliding_window_layers=pattern, attention_bias=bool(cfg.get("attention_bias", True)),
                attention_sinks=True, router_linear_bias=True, expert_bias=True)


def _flatten_dbrx(cfg: dict) -> dict:
    attn, ffn = cfg.get("attn_config") or {}, cfg.get("ffn_config") or {}
    flat = dict(cfg, hidden_size=cfg.get("d_model"), num_hidden_layers=cfg.get("n_layers"),
                num_attention_heads=cfg.get("n_heads"), max_position_embeddings=cfg.get("max_seq_len"),
                num_key_value_heads=attn.get("kv_n_heads"), clip_qkv=attn.get("clip_qkv"),
                num_local_experts=ffn.get("moe_num_experts"), num_experts_per_tok=ffn.get("moe_top_k"),
                intermediate_size=ffn.get("ffn_hidden_size"),
                norm_topk_prob=ffn.get("moe_normalize_expert_weights") is not None)
    flat.pop("head_dim", None)
    return flat


def _read_dbrx(cfg: dict) -> dict:
    return dict(_read_mixtral(cfg), sliding_window=None, clip_qkv=cfg.get("clip_qkv"),
                norm_topk_prob=cfg["norm_topk_prob"], norm_type="layernorm_no_bias")


_FAMILY_READERS = {
    "mixtral": _read_mixtral,
    "phimoe": _read_phimoe,
    "qwen2_moe": lambda cfg: _read_qwen(cfg, "qwen2_moe"),
    "qwen3_moe": lambda cfg: _read_qwen(cfg, "qwen3_moe"),
    "olmoe": _read_olmoe,
    "deepseek_v2": lambda cfg: _read_deepseek(cfg, "deepseek_v2"),
    "deepseek_v3": lambda cfg: _read_deepseek(cfg, "deepseek_v3"),
    "gpt_oss": _read_gpt_oss,
    "dbrx": _read_dbrx,
}


def _rope_parameters(spec: ModelSpec) -> dict:
    scaling = dict(spec.rope_scaling or {})
    scaling.setdefault("rope_type", "default")
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
    out.update(_FAMILY_WRITERS[spec.family](spec))
    if spec.attention == "mla":
        del out["head_dim"]  # transformers sets it to qk_rope_head_dim itself
    if spec.family == "dbrx":
        out = _nest_dbrx(out)
    out.update({k: v for k, v in spec.extra.items() if k not in out})
    out["moelens"] = {"name": spec.name, "source": spec.source}
    return out


def _write_mixtral(spec: ModelSpec) -> dict:
    return {"intermediate_size": spec.moe_intermediate_size, "num_local_experts": spec.num_experts,
            "num_experts_per_tok": spec.top_k, "sliding_window": spec.sliding_window}


def _write_phimoe(spec: ModelSpec) -> dict:
    return dict(_write_mixtral(spec), attention_bias=spec.attention_bias, lm_head_bias=spec.lm_head_bias)


def _write_qwen(spec: ModelSpec) -> dict:
    out = {"intermediate_size": spec.dense_intermediate_size or spec.moe_intermediate_size,
           "moe_intermediate_size": spec.moe_intermediate_size, "num_experts": spec.num_experts,
           "num_experts_per_tok": spec.top_k, "norm_topk_prob": spec.norm_topk_prob,
           "decoder_sparse_step": 1, "mlp_only_layers": list(range(spec.first_dense_layers)),
           "use_sliding_window": False}
    if spec.family == "qwen2_moe":
        out.update(shared_expert_intermediate_size=spec.shared_intermediate_size, qkv_bias=spec.attention_bias)
    else:
        out.update(attention_bias=spec.attention_bias)
    return out


def _write_olmoe(spec: ModelSpec) -> dict:
    return {"intermediate_size": spec.moe_intermediate_size, "num_experts": spec.num_experts,
            "num_experts_per_tok": spec.top_k, "norm_topk_prob": spec.norm_topk_prob,
            "attention_bias": spec.attention_bias, "clip_qkv": spec.clip_qkv}


def _write_deepseek(spec: ModelSpec) -> dict:
    return {
        "intermediate_size": spec.dense_intermediate_size or spec.moe_intermediate_size,
        "moe_intermediate_size": spec.moe_intermediate_size,
        "n_routed_experts": spec.num_experts, "num_experts_per_tok": spec.top_k,
        "n_shared_experts": spec.num_shared_experts, "first_k_dense_replace": spec.first_dense_layers,
        "moe_layer_freq": 1, "scoring_func": spec.scoring, "topk_method": spec.topk_method,
        "norm_topk_prob": spec.norm_topk_prob, "routed_scaling_factor": spec.routed_scaling_factor,
        "n_group": spec.n_group, "topk_group": spec.topk_group, "attention_bias": spec.attention_bias,
        "q_lora_rank": spec.q_lora_rank or None, "kv_lora_rank": spec.kv_lora_rank,
        "qk_rope_head_dim": spec.qk_rope_head_dim, "qk_nope_head_dim": spec.qk_nope_head_dim,
        "v_head_dim": spec.v_head_dim,
    }


def _write_gpt_oss(spec: ModelSpec) -> dict:
    layer_types = [
        "sliding_attention" if spec.is_sliding_layer(layer) else "full_attention" for layer in range(spec.num_layers)
    ]
    return {"intermediate_size": spec.moe_intermediate_size, "num_local_experts": spec.num_experts,
            "num_experts_per_tok": spec.top_k, "sliding_window": spec.sliding_window,
            "layer_types": layer_types, "attention_bias": spec.attention_bias}


def _write_dbrx(spec: ModelSpec) -> dict:
    return dict(_write_mixtral(spec), clip_qkv=spec.clip_qkv, norm_topk_prob=spec.norm_topk_prob)


def _nest_dbrx(out: dict) -> dict:
    return {
        "architectures": out["architectures"], "model_type": "dbrx", "vocab_size": out["vocab_size"],
        "d_model": out["hidden_size"], "n_heads": out["num_attention_heads"], "n_layers": out["num_hidden_layers"],
        "max_seq_len": out["max_position_embeddings"], "tie_word_embeddings": False,
        "rope_theta": out["rope_theta"], "rope_parameters": out["rope_parameters"], "dtype": out["dtype"],
        "attn_config": {"kv_n_heads": out["num_key_value_heads"], "clip_qkv": out["clip_qkv"],
                        "rope_theta": out["rope_theta"]},
        "ffn_config": {"ffn_hidden_size": out["intermediate_size"], "moe_num_experts": out["num_local_experts"],
                       "moe_top_k": out["num_experts_per_tok"],
                       "moe_normalize_expert_weights": 1.0 if out["norm_topk_prob"] else None},
    }


_FAMILY_WRITERS = {
    "mixtral": _write_mixtral,
    "phimoe": _write_phimoe,
    "qwen2_moe": _write_qwen,
    "qwen3_moe": _write_qwen,
    "olmoe": _write_olmoe,
    "deepseek_v2": _write_deepseek,
    "deepseek_v3": _write_deepseek,
    "gpt_oss": _write_gpt_oss,
    "dbrx": _write_dbrx,
}

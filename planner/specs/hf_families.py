"""Per-family key maps between HF `config.json` and `ModelSpec` fields, torch-free.

For each HF `model_type` in `planner.specs.model_spec.ALL_FAMILIES`: its architecture class name (`ARCHITECTURES`), the
defaults its config.json may omit (`DEFAULT_ROPE_THETA`, `DEFAULT_EPS`), a reader
`FAMILY_READERS[family](cfg) -> dict` of the family-specific `ModelSpec` fields (raises `UserError` for
missing keys or layouts the runtime does not support), and a writer `FAMILY_WRITERS[family](spec) -> dict`
of the family-specific config.json keys. DBRX nests its keys: `flatten_dbrx` / `nest_dbrx` convert between
its layout and the flat one the readers and writers use. `require_keys` is the shared missing-key check.
Fields common to all families, and type checking, live in `planner.specs.hf_config`.
"""

from __future__ import annotations

from planner.errors import UserError
from planner.specs.model_spec import ModelSpec

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
    "glm4_moe": "Glm4MoeForCausalLM",
}
DEFAULT_ROPE_THETA = {"mixtral": 1e6, "phimoe": 1e6, "gpt_oss": 150000.0, "dbrx": 500000.0}
DEFAULT_EPS = {"qwen2_moe": 1e-6, "qwen3_moe": 1e-6, "deepseek_v2": 1e-6, "deepseek_v3": 1e-6}


def require_keys(cfg: dict, family: str, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if cfg.get(k) is None]
    if missing:
        raise UserError(f"{family} config.json lacks {missing}", "pass a complete HF config.json")


def _dense_prefix(cfg: dict, family: str) -> int:
    """Qwen `mlp_only_layers` / `decoder_sparse_step` -> number of leading dense layers."""
    dense = sorted(cfg.get("mlp_only_layers") or [])
    if cfg.get("decoder_sparse_step", 1) != 1 or dense != list(range(len(dense))):
        raise UserError(
            f"{family} config.json has MoE layers other than a dense prefix "
            f"(decoder_sparse_step={cfg.get('decoder_sparse_step')}, mlp_only_layers={dense})",
            "only models whose dense layers come first are supported",
        )
    return len(dense)


def _read_mixtral(cfg: dict) -> dict:
    require_keys(cfg, "mixtral", ("num_local_experts", "num_experts_per_tok", "intermediate_size"))
    return dict(
        num_experts=cfg["num_local_experts"],
        top_k=cfg["num_experts_per_tok"],
        moe_intermediate_size=cfg["intermediate_size"],
        sliding_window=cfg.get("sliding_window"),
    )


def _read_phimoe(cfg: dict) -> dict:
    return dict(
        _read_mixtral(cfg),
        attention_bias=bool(cfg.get("attention_bias", False)),
        lm_head_bias=bool(cfg.get("lm_head_bias", False)),
        norm_type="layernorm",
        topk_method="sparsemixer",
    )


def _read_qwen(cfg: dict, family: str) -> dict:
    if "num_experts" not in cfg and "num_local_experts" in cfg:  # transformers 5.x Qwen3MoeConfig.to_dict()
        cfg = dict(cfg, num_experts=cfg["num_local_experts"])
    require_keys(cfg, family, ("num_experts", "num_experts_per_tok", "moe_intermediate_size"))
    if cfg.get("use_sliding_window"):
        raise UserError(
            f"{family} with use_sliding_window=true is not supported",
            "use a checkpoint with use_sliding_window=false",
        )
    out = dict(
        num_experts=cfg["num_experts"],
        top_k=cfg["num_experts_per_tok"],
        moe_intermediate_size=cfg["moe_intermediate_size"],
        dense_intermediate_size=cfg.get("intermediate_size") or 0,
        first_dense_layers=_dense_prefix(cfg, family),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
    )
    if family == "qwen2_moe":
        shared = cfg.get("shared_expert_intermediate_size", 0) or 0
        out.update(
            num_shared_experts=1 if shared else 0,
            shared_intermediate_size=shared,
            has_shared_expert_gate=bool(shared),
            attention_bias=bool(cfg.get("qkv_bias", True)),
        )
    else:
        out.update(qk_norm="per_head", attention_bias=bool(cfg.get("attention_bias", False)))
    return out


def _read_olmoe(cfg: dict) -> dict:
    require_keys(cfg, "olmoe", ("num_experts", "num_experts_per_tok", "intermediate_size"))
    return dict(
        num_experts=cfg["num_experts"],
        top_k=cfg["num_experts_per_tok"],
        moe_intermediate_size=cfg["intermediate_size"],
        qk_norm="full",
        clip_qkv=cfg.get("clip_qkv"),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        attention_bias=bool(cfg.get("attention_bias", False)),
    )


def _sigmoid_or_softmax_moe(cfg: dict, family: str, sigmoid: bool, dense_default: int) -> dict:
    """The MoE fields DeepSeek-V2/V3 and GLM-4.5 share: routed + shared experts, dense prefix, routing."""
    require_keys(cfg, family, ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size"))
    shared = cfg.get("n_shared_experts") or 0
    return dict(
        num_experts=cfg["n_routed_experts"],
        top_k=cfg["num_experts_per_tok"],
        moe_intermediate_size=cfg["moe_intermediate_size"],
        num_shared_experts=shared,
        shared_intermediate_size=shared * cfg["moe_intermediate_size"],
        first_dense_layers=cfg.get("first_k_dense_replace", dense_default) or 0,
        dense_intermediate_size=cfg.get("intermediate_size") or 0,
        scoring=cfg.get("scoring_func") or ("sigmoid" if sigmoid else "softmax"),
        topk_method=cfg.get("topk_method") or ("noaux_tc" if sigmoid else "greedy"),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", sigmoid)),
        routed_scaling_factor=float(cfg.get("routed_scaling_factor") or 1.0),
        n_group=cfg.get("n_group") or 1,
        topk_group=cfg.get("topk_group") or 1,
        attention_bias=bool(cfg.get("attention_bias", False)),
    )


def _read_deepseek(cfg: dict, family: str) -> dict:
    require_keys(cfg, family, ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"))
    if cfg.get("moe_layer_freq", 1) != 1:
        raise UserError(
            f"{family} with moe_layer_freq={cfg['moe_layer_freq']} is not supported",
            "use a checkpoint with moe_layer_freq=1",
        )
    return dict(
        _sigmoid_or_softmax_moe(cfg, family, sigmoid=family == "deepseek_v3", dense_default=0),
        num_kv_heads=cfg["num_attention_heads"],
        head_dim=cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"],
        attention="mla",
        q_lora_rank=cfg.get("q_lora_rank") or 0,
        kv_lora_rank=cfg["kv_lora_rank"],
        qk_rope_head_dim=cfg["qk_rope_head_dim"],
        qk_nope_head_dim=cfg["qk_nope_head_dim"],
        v_head_dim=cfg["v_head_dim"],
    )


def _read_glm4_moe(cfg: dict) -> dict:
    """GLM-4.5: GQA with q/k/v biases, optional per-head q/k norm, partial RoPE (default half the head)."""
    rope = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    factor = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.5))
    return dict(
        _sigmoid_or_softmax_moe(cfg, "glm4_moe", sigmoid=True, dense_default=1),
        qk_norm="per_head" if cfg.get("use_qk_norm") else "none",
        partial_rotary_factor=float(factor) if isinstance(factor, int | float) else factor,
    )


def _read_gpt_oss(cfg: dict) -> dict:
    require_keys(cfg, "gpt_oss", ("num_local_experts", "num_experts_per_tok", "intermediate_size"))
    layer_types = cfg.get("layer_types") or []
    window = cfg.get("sliding_window")
    if layer_types and "sliding_attention" not in layer_types:
        window = None
    if layer_types and window is not None:
        alternating = [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(len(layer_types))
        ]
        pattern = "even" if layer_types == alternating else "all"
        if pattern == "all" and set(layer_types) != {"sliding_attention"}:
            raise UserError(
                f"gpt_oss layer_types {layer_types} are not supported",
                "use alternating sliding/full layers starting with sliding",
            )
    else:
        pattern = "even"
    return dict(
        num_experts=cfg["num_local_experts"],
        top_k=cfg["num_experts_per_tok"],
        moe_intermediate_size=cfg["intermediate_size"],
        sliding_window=window,
        sliding_window_layers=pattern,
        attention_bias=bool(cfg.get("attention_bias", True)),
        attention_sinks=True,
        router_linear_bias=True,
        expert_bias=True,
    )


def flatten_dbrx(cfg: dict) -> dict:
    attn, ffn = cfg.get("attn_config") or {}, cfg.get("ffn_config") or {}
    flat = dict(
        cfg,
        hidden_size=cfg.get("d_model"),
        num_hidden_layers=cfg.get("n_layers"),
        num_attention_heads=cfg.get("n_heads"),
        max_position_embeddings=cfg.get("max_seq_len"),
        num_key_value_heads=attn.get("kv_n_heads"),
        clip_qkv=attn.get("clip_qkv"),
        num_local_experts=ffn.get("moe_num_experts"),
        num_experts_per_tok=ffn.get("moe_top_k"),
        intermediate_size=ffn.get("ffn_hidden_size"),
        norm_topk_prob=ffn.get("moe_normalize_expert_weights") is not None,
    )
    flat.pop("head_dim", None)
    return flat


def _read_dbrx(cfg: dict) -> dict:
    return dict(
        _read_mixtral(cfg),
        sliding_window=None,
        clip_qkv=cfg.get("clip_qkv"),
        norm_topk_prob=cfg["norm_topk_prob"],
        norm_type="layernorm_no_bias",
    )


FAMILY_READERS = {
    "mixtral": _read_mixtral,
    "phimoe": _read_phimoe,
    "qwen2_moe": lambda cfg: _read_qwen(cfg, "qwen2_moe"),
    "qwen3_moe": lambda cfg: _read_qwen(cfg, "qwen3_moe"),
    "olmoe": _read_olmoe,
    "deepseek_v2": lambda cfg: _read_deepseek(cfg, "deepseek_v2"),
    "deepseek_v3": lambda cfg: _read_deepseek(cfg, "deepseek_v3"),
    "gpt_oss": _read_gpt_oss,
    "dbrx": _read_dbrx,
    "glm4_moe": _read_glm4_moe,
}


def _write_mixtral(spec: ModelSpec) -> dict:
    return {
        "intermediate_size": spec.moe_intermediate_size,
        "num_local_experts": spec.num_experts,
        "num_experts_per_tok": spec.top_k,
        "sliding_window": spec.sliding_window,
    }


def _write_phimoe(spec: ModelSpec) -> dict:
    return dict(_write_mixtral(spec), attention_bias=spec.attention_bias, lm_head_bias=spec.lm_head_bias)


def _write_qwen(spec: ModelSpec) -> dict:
    out = {
        "intermediate_size": spec.dense_intermediate_size or spec.moe_intermediate_size,
        "moe_intermediate_size": spec.moe_intermediate_size,
        "num_experts": spec.num_experts,
        "num_experts_per_tok": spec.top_k,
        "norm_topk_prob": spec.norm_topk_prob,
        "decoder_sparse_step": 1,
        "mlp_only_layers": list(range(spec.first_dense_layers)),
        "use_sliding_window": False,
    }
    if spec.family == "qwen2_moe":
        out.update(
            shared_expert_intermediate_size=spec.shared_intermediate_size, qkv_bias=spec.attention_bias
        )
    else:
        out.update(attention_bias=spec.attention_bias)
    return out


def _write_olmoe(spec: ModelSpec) -> dict:
    return {
        "intermediate_size": spec.moe_intermediate_size,
        "num_experts": spec.num_experts,
        "num_experts_per_tok": spec.top_k,
        "norm_topk_prob": spec.norm_topk_prob,
        "attention_bias": spec.attention_bias,
        "clip_qkv": spec.clip_qkv,
    }


def _write_routed_experts(spec: ModelSpec) -> dict:
    """The expert and group-routing fields DeepSeek-V2/V3 and GLM-4.5 configs share."""
    return {
        "intermediate_size": spec.dense_intermediate_size or spec.moe_intermediate_size,
        "moe_intermediate_size": spec.moe_intermediate_size,
        "n_routed_experts": spec.num_experts,
        "num_experts_per_tok": spec.top_k,
        "n_shared_experts": spec.num_shared_experts,
        "first_k_dense_replace": spec.first_dense_layers,
        "norm_topk_prob": spec.norm_topk_prob,
        "routed_scaling_factor": spec.routed_scaling_factor,
        "n_group": spec.n_group,
        "topk_group": spec.topk_group,
        "attention_bias": spec.attention_bias,
    }


def _write_deepseek(spec: ModelSpec) -> dict:
    return {
        **_write_routed_experts(spec),
        "moe_layer_freq": 1,
        "scoring_func": spec.scoring,
        "topk_method": spec.topk_method,
        "q_lora_rank": spec.q_lora_rank or None,
        "kv_lora_rank": spec.kv_lora_rank,
        "qk_rope_head_dim": spec.qk_rope_head_dim,
        "qk_nope_head_dim": spec.qk_nope_head_dim,
        "v_head_dim": spec.v_head_dim,
    }


def _write_glm4_moe(spec: ModelSpec) -> dict:
    return {**_write_routed_experts(spec), "use_qk_norm": spec.qk_norm == "per_head"}


def _write_gpt_oss(spec: ModelSpec) -> dict:
    layer_types = [
        "sliding_attention" if spec.is_sliding_layer(layer) else "full_attention"
        for layer in range(spec.num_layers)
    ]
    return {
        "intermediate_size": spec.moe_intermediate_size,
        "num_local_experts": spec.num_experts,
        "num_experts_per_tok": spec.top_k,
        "sliding_window": spec.sliding_window,
        "layer_types": layer_types,
        "attention_bias": spec.attention_bias,
    }


def _write_dbrx(spec: ModelSpec) -> dict:
    return dict(_write_mixtral(spec), clip_qkv=spec.clip_qkv, norm_topk_prob=spec.norm_topk_prob)


def nest_dbrx(out: dict) -> dict:
    return {
        "architectures": out["architectures"],
        "model_type": "dbrx",
        "vocab_size": out["vocab_size"],
        "d_model": out["hidden_size"],
        "n_heads": out["num_attention_heads"],
        "n_layers": out["num_hidden_layers"],
        "max_seq_len": out["max_position_embeddings"],
        "tie_word_embeddings": False,
        "rope_theta": out["rope_theta"],
        "rope_parameters": out["rope_parameters"],
        "dtype": out["dtype"],
        "attn_config": {
            "kv_n_heads": out["num_key_value_heads"],
            "clip_qkv": out["clip_qkv"],
            "rope_theta": out["rope_theta"],
        },
        "ffn_config": {
            "ffn_hidden_size": out["intermediate_size"],
            "moe_num_experts": out["num_local_experts"],
            "moe_top_k": out["num_experts_per_tok"],
            "moe_normalize_expert_weights": 1.0 if out["norm_topk_prob"] else None,
        },
    }


FAMILY_WRITERS = {
    "mixtral": _write_mixtral,
    "phimoe": _write_phimoe,
    "qwen2_moe": _write_qwen,
    "qwen3_moe": _write_qwen,
    "olmoe": _write_olmoe,
    "deepseek_v2": _write_deepseek,
    "deepseek_v3": _write_deepseek,
    "gpt_oss": _write_gpt_oss,
    "dbrx": _write_dbrx,
    "glm4_moe": _write_glm4_moe,
}

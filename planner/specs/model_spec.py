"""`ModelSpec`: the architecture hyperparameters of one MoE model, torch-free, validated on construction.

The single source of architectural truth: the planner derives bytes, FLOPs and KV sizes from it, the runtime
builds its layers from it. `spec.fingerprint()` hashes the architecture fields only (`IDENTITY_FIELDS`, where
the facts came from, are left out), so the same model read from YAML or config.json has one fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from planner.errors import UserError
from planner.specs.weight_formats import (
    QUANT_MODULES,
    WEIGHT_FORMAT_BYTES,
    weight_formats_from_hf,
    weights_label,
)
from planner.values import is_int

# Families whose forward the runtime implements; the others have specs (planning) only.
RUNNABLE_FAMILIES = (
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v2",
    "deepseek_v3",
    "gpt_oss",
    "glm4_moe",
    "phimoe",
)
ALL_FAMILIES = RUNNABLE_FAMILIES + ("dbrx",)
# Families whose attention_bias covers q/k/v only (the others also bias o_proj).
QKV_ONLY_BIAS_FAMILIES = ("qwen2_moe", "glm4_moe")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")  # what the runtime computes in (fp8: `weight_formats`)

# Fields that say where a spec came from, not what the model is: outside its fingerprint.
IDENTITY_FIELDS = ("name", "source", "extra")

_CHOICES = {
    "family": ALL_FAMILIES,
    "scoring": ("softmax", "sigmoid"),
    "topk_method": ("greedy", "group_limited_greedy", "noaux_tc", "sparsemixer"),
    "attention": ("gqa", "mla"),
    "qk_norm": ("none", "per_head", "full"),
    "norm_type": ("rms", "layernorm", "layernorm_no_bias"),
    "sliding_window_layers": ("all", "even"),
    "dtype": tuple(DTYPE_BYTES),
}
_POSITIVE = (
    "num_layers",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "vocab_size",
    "num_experts",
    "top_k",
    "moe_intermediate_size",
    "n_group",
    "topk_group",
    "max_position_embeddings",
)
_NON_NEGATIVE = (
    "num_shared_experts",
    "shared_intermediate_size",
    "first_dense_layers",
    "dense_intermediate_size",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_rope_head_dim",
    "qk_nope_head_dim",
    "v_head_dim",
)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # e.g. "mixtral-8x7b"
    family: str  # one of ALL_FAMILIES
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int  # == num_heads for MHA and for MLA
    head_dim: int  # GQA head dim (MLA: qk_nope + qk_rope, informational)
    vocab_size: int
    num_experts: int  # routed experts per MoE layer
    top_k: int
    moe_intermediate_size: int  # per routed expert
    num_shared_experts: int = 0
    shared_intermediate_size: int = 0  # total intermediate width of the shared-expert MLP (0 if none)
    has_shared_expert_gate: bool = False  # Qwen2-MoE: shared output scaled by sigmoid(gate(x))
    first_dense_layers: int = 0  # DeepSeek first_k_dense_replace (Qwen: mlp_only_layers = a prefix)
    dense_intermediate_size: int = 0  # HF intermediate_size where it differs from the expert size
    # routing
    scoring: str = "softmax"  # "softmax" | "sigmoid" (DeepSeek-V3)
    norm_topk_prob: bool = True  # renormalise the k weights
    routed_scaling_factor: float = 1.0
    n_group: int = 1  # group-limited routing (DeepSeek); 1 = off
    topk_group: int = 1
    # "greedy" | "group_limited_greedy" | "noaux_tc" (adds a correction bias) | "sparsemixer" (Phi-3.5-MoE, top-2)
    topk_method: str = "greedy"
    router_linear_bias: bool = False  # gpt-oss: the router Linear has a bias
    expert_bias: bool = False  # gpt-oss: expert projections have biases
    # attention
    attention: str = "gqa"  # "gqa" | "mla"
    attention_bias: bool = False  # q/k/v biases (Qwen2-MoE: q/k/v only; other families also o_proj)
    qk_norm: str = "none"  # "none" | "per_head" (Qwen3) | "full" (OLMoE: over the whole projection)
    clip_qkv: float | None = None  # OLMoE / DBRX clamp of q, k, v
    attention_sinks: bool = False  # gpt-oss: one learned sink logit per head
    q_lora_rank: int = 0  # MLA; 0 = no q compression
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    sliding_window: int | None = None
    sliding_window_layers: str = "all"  # "all" | "even" (gpt-oss: layers 0, 2, 4, ... slide)
    # misc
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "yarn", "factor": ...}; None = plain RoPE
    partial_rotary_factor: float = 1.0  # GLM-4.5: RoPE rotates the first head_dim * factor dims of q and k
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    norm_type: str = "rms"  # "rms" | "layernorm" (Phi-3.5-MoE) | "layernorm_no_bias" (DBRX)
    lm_head_bias: bool = False  # Phi-3.5-MoE
    tie_word_embeddings: bool = False
    dtype: str = "bfloat16"
    weight_formats: dict = field(default_factory=dict)  # {module: fp8 | mxfp4}: weights stored quantized
    source: str = ""  # where the facts came from (URL / "config.json at <path>")
    extra: dict = field(default_factory=dict)  # family-specific leftovers kept for to_hf_config

    def __post_init__(self) -> None:
        self._validate()

    def _fail(self, cause: str, fix: str) -> UserError:
        return UserError(f"model spec {self.name!r}: {cause}", fix)

    def _validate(self) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise self._fail(
                    f"{key}={getattr(self, key)!r} is not one of {list(allowed)}",
                    f"set {key} to one of {list(allowed)}",
                )
        for key in _POSITIVE + _NON_NEGATIVE:
            value = getattr(self, key)
            low = 1 if key in _POSITIVE else 0
            if not is_int(value) or value < low:
                raise self._fail(f"{key}={value!r} must be an integer >= {low}", f"fix {key} in the spec")
        if not isinstance(self.name, str) or not self.name:
            raise self._fail("name must be a non-empty string", "set name to the YAML file's stem")
        for f in fields(self):
            if isinstance(f.default, bool) and not isinstance(getattr(self, f.name), bool):
                raise self._fail(f"{f.name}={getattr(self, f.name)!r} must be true or false", f"fix {f.name}")
        for key in (
            "rope_theta",
            "rms_norm_eps",
            "routed_scaling_factor",
            "clip_qkv",
            "partial_rotary_factor",
        ):
            value = getattr(self, key)
            if not (value is None and key == "clip_qkv") and not _is_positive_number(value):
                raise self._fail(
                    f"{key}={value!r} must be a finite, positive number", f"fix {key} in the spec"
                )
        if self.sliding_window is not None and not (is_int(self.sliding_window) and self.sliding_window > 0):
            raise self._fail(
                f"sliding_window={self.sliding_window!r} must be a positive integer or null",
                "fix sliding_window in the spec",
            )
        checks = [
            (self.top_k <= self.num_experts, "top_k exceeds num_experts"),
            (self.num_heads % self.num_kv_heads == 0, "num_heads is not a multiple of num_kv_heads"),
            (self.first_dense_layers <= self.num_layers, "first_dense_layers exceeds num_layers"),
            (
                self.first_dense_layers == 0 or self.dense_intermediate_size > 0,
                "dense layers need dense_intermediate_size > 0",
            ),
            (
                (self.num_shared_experts > 0) == (self.shared_intermediate_size > 0),
                "num_shared_experts and shared_intermediate_size must be both zero or both positive",
            ),
            (self.num_experts % self.n_group == 0, "num_experts is not a multiple of n_group"),
            (self.topk_group <= self.n_group, "topk_group exceeds n_group"),
            (
                self.rope_scaling is None or isinstance(self.rope_scaling, dict),
                "rope_scaling must be a mapping",
            ),
            (isinstance(self.extra, dict), "extra must be a mapping"),
            (
                isinstance(self.weight_formats, dict)
                and set(self.weight_formats) <= set(QUANT_MODULES)
                and set(self.weight_formats.values()) <= set(WEIGHT_FORMAT_BYTES),
                f"weight_formats maps modules {list(QUANT_MODULES)} to {list(WEIGHT_FORMAT_BYTES)}",
            ),
            (
                0 < self.partial_rotary_factor <= 1
                and self.head_dim < 2**31
                and self.rotary_dim > 0
                and self.rotary_dim % 2 == 0,
                "head_dim * partial_rotary_factor must be an even, positive number of rotary dims (0 < factor <= 1)",
            ),
            (self.topk_method != "sparsemixer" or self.top_k == 2, "sparsemixer routing picks top_k = 2"),
        ]
        if self.attention == "mla":
            checks += [
                (
                    min(self.kv_lora_rank, self.qk_rope_head_dim, self.qk_nope_head_dim, self.v_head_dim) > 0,
                    "MLA needs kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim and v_head_dim > 0",
                ),
                (self.num_kv_heads == self.num_heads, "MLA needs num_kv_heads == num_heads"),
            ]
        if self.family.startswith("deepseek") or self.family == "glm4_moe":
            checks.append(
                (
                    self.shared_intermediate_size == self.num_shared_experts * self.moe_intermediate_size,
                    f"{self.family} needs shared_intermediate_size == num_shared_experts * moe_intermediate_size",
                )
            )
        if self.family in ("olmoe", "dbrx"):
            checks.append(
                (
                    self.num_heads * self.head_dim == self.hidden_size,
                    f"{self.family} needs num_heads * head_dim == hidden_size",
                )
            )
        for ok, cause in checks:
            if not ok:
                raise self._fail(cause, "fix the spec's hyperparameters")

    # ----- derived shape facts (costs live in planner.perf.costs) -----
    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def weight_bytes(self, module: str) -> float:
        """Stored bytes per parameter of a module's weights (its storage format's, else the dtype's)."""
        fmt = self.weight_formats.get(module)
        return WEIGHT_FORMAT_BYTES[fmt] if fmt else self.dtype_bytes

    @property
    def quantizable_modules(self) -> tuple[str, ...]:
        """The modules of `QUANT_MODULES` this model has (no shared experts: not that one)."""
        has = {
            "shared_experts": self.num_shared_experts > 0,
            "dense_mlp": not all(self.is_moe_layer(layer) for layer in range(self.num_layers)),
        }
        return tuple(m for m in QUANT_MODULES if has.get(m, True))

    def with_weight_formats(self, formats: dict[str, str]) -> ModelSpec:
        """A copy storing `formats` for the modules this model has."""
        return replace(
            self, weight_formats={m: f for m, f in formats.items() if m in self.quantizable_modules}
        )

    @property
    def weights_label(self) -> str:
        """The weights' storage format(s) in words: `bfloat16`, `fp8 (experts), bfloat16 elsewhere`."""
        return weights_label(self.dtype, self.weight_formats)

    @property
    def is_runnable(self) -> bool:
        return self.family in RUNNABLE_FAMILIES

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_dense_layers

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_dense_layers

    @property
    def rotary_dim(self) -> int:
        """Dims of each GQA head that RoPE rotates (the first ones; the rest pass through)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def has_o_bias(self) -> bool:
        return self.attention_bias and self.family not in QKV_ONLY_BIAS_FAMILIES

    def is_sliding_layer(self, layer: int) -> bool:
        if self.sliding_window is None:
            return False
        return self.sliding_window_layers == "all" or layer % 2 == 0

    def keeps_window_only(self, layer: int) -> bool:
        """The KV cache keeps only the window's tokens for this layer (a per-sequence ring): sliding layers
        of models that also have full-attention layers (gpt-oss); where every layer slides, KV stays paged."""
        return self.is_sliding_layer(layer) and self.sliding_window_layers == "even" and self.num_layers > 1

    @property
    def swiglu_alpha_limit(self) -> tuple[float, float]:
        """gpt-oss clamped SwiGLU constants (config.json `swiglu_alpha`, `swiglu_limit`)."""
        return float(self.extra.get("swiglu_alpha", 1.702)), float(self.extra.get("swiglu_limit", 7.0))

    @property
    def has_score_correction_bias(self) -> bool:
        """DeepSeek-V3 `e_score_correction_bias` [E] (canonical `moe.router_bias`)."""
        return self.topk_method == "noaux_tc"

    # ----- conversions -----
    def with_layers(self, num_layers: int) -> ModelSpec:
        if not 1 <= num_layers <= self.num_layers:
            raise UserError(
                f"cannot truncate {self.name} ({self.num_layers} layers) to {num_layers} layers",
                f"pass a layer count between 1 and {self.num_layers}",
            )
        return replace(
            self,
            name=f"{self.name}-L{num_layers}",
            num_layers=num_layers,
            first_dense_layers=min(self.first_dense_layers, num_layers),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def architecture(self) -> dict:
        """The fields that say what the model is (all but `IDENTITY_FIELDS`)."""
        fields_ = {k: v for k, v in asdict(self).items() if k not in IDENTITY_FIELDS}
        if not fields_["weight_formats"]:  # unquantized specs keep the fingerprint they had before it
            del fields_["weight_formats"]
        return fields_

    def fingerprint(self) -> str:
        """12 hex digits over the architecture fields: equal for the same model however it was read."""
        blob = json.dumps(self.architecture(), sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict, origin: str = "spec") -> ModelSpec:
        if not isinstance(data, dict):
            raise UserError(
                f"{origin}: a model spec must be a mapping of fields", "see models/mixtral-8x7b.yaml"
            )
        known = {f.name for f in fields(cls)} | {"quantization_config"}  # as config.json: weight_formats
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            raise UserError(
                f"{origin}: unknown spec fields {unknown}",
                f"use only the fields of ModelSpec: {sorted(known)}",
            )
        missing = [k for k in _required_fields() if k not in data]
        if missing:
            raise UserError(
                f"{origin}: missing spec fields {missing}", "add them (see models/mixtral-8x7b.yaml)"
            )
        _check_plain(data, origin)
        quantization = data.get("quantization_config")
        spec = cls(**{k: v for k, v in data.items() if k != "quantization_config"})
        if quantization is None:
            return spec
        if spec.weight_formats:
            raise UserError(
                f"{origin}: both weight_formats and quantization_config given", "keep quantization_config"
            )
        return spec.with_weight_formats(weight_formats_from_hf(data, spec.family))

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _is_positive_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:  # an int beyond float range
        return False


def _required_fields() -> list[str]:
    return [f.name for f in fields(ModelSpec) if f.default is MISSING and f.default_factory is MISSING]


def _check_plain(value: object, origin: str) -> None:
    """A spec holds only what YAML writes back unchanged: text (valid UTF-8), numbers, booleans, None, lists, maps."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, origin)
            _check_plain(item, origin)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_plain(item, origin)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(
                f"{origin}: text {value!r} is not valid UTF-8", "write the spec as UTF-8 text"
            ) from None
    elif value is not None and not isinstance(value, bool | int | float):
        raise UserError(
            f"{origin}: {value!r} ({type(value).__name__}) is not a number, text or list",
            "write plain numbers and quoted text in the spec (YAML reads unquoted dates as dates)",
        )

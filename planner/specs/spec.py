"""Model specs: the architecture hyperparameters of one MoE model, torch-free.

`ModelSpec` is the single source of architectural truth for the whole project: the planner derives bytes,
FLOPs and KV sizes from it (`planner.perf.costs.ModelCosts`); the runtime builds its layers from it;
`runtime make-checkpoint` writes its config.json from it.

- `load_spec(ref) -> ModelSpec`: `ref` is a short name (`mixtral` -> mixtral-8x7b, see `ALIASES`), a full
  name (the stem of a YAML in the user dir or the shipped specs, planner.locations), a path to such a YAML, a checkpoint directory (its
  `config.json`), a `config.json` path or a Hugging Face id `org/name` (`planner.specs.hf_hub`: the cached
  snapshot's config.json, else the shipped spec of that model). Unknown names raise `UserError` listing `list_specs()`.
- `ModelSpec.from_hf_config(cfg, name=None)` / `spec.to_hf_config()`: HF config.json dicts, both rope styles
  read (`rope_theta`/`rope_scaling` and transformers 5.x `rope_parameters`); see `planner.specs.hf_config`.
- `spec.with_layers(n)`: a copy truncated to the first n layers, named `<name>-L{n}`.
- `spec.to_dict()` / `ModelSpec.from_dict(d, origin)`: the YAML form (a flat mapping of the fields).
Invalid values (unknown family, negative sizes, top_k > num_experts, ...) raise `UserError`.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from planner import locations
from planner.errors import UserError
from planner.specs.hf_hub import download_hint, hub_cache_dir, is_hub_id, local_snapshot, shipped_spec_name
from planner.values import is_int

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# Families whose forward the runtime implements; the others have specs (planning) only.
RUNNABLE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss")
ALL_FAMILIES = RUNNABLE_FAMILIES + ("phimoe", "dbrx")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}

ALIASES = {
    "mixtral": "mixtral-8x7b",
    "mixtral-8x7b-v0.1": "mixtral-8x7b",
    "mixtral-large": "mixtral-8x22b",
    "deepseek-r1": "deepseek-v3",
    "deepseek": "deepseek-v3",
    "qwen3": "qwen3-30b-a3b",
    "qwen3-moe": "qwen3-30b-a3b",
    "qwen3-235b": "qwen3-235b-a22b",
    "qwen2-moe": "qwen1.5-moe-a2.7b",
    "qwen1.5-moe": "qwen1.5-moe-a2.7b",
    "qwen2-57b": "qwen2-57b-a14b",
    "olmoe": "olmoe-1b-7b",
    "olmoe-1b-7b-0924": "olmoe-1b-7b",
    "phimoe": "phi-3.5-moe",
    "phi-moe": "phi-3.5-moe",
    "gpt-oss": "gpt-oss-20b",
}

_CHOICES = {
    "family": ALL_FAMILIES,
    "scoring": ("softmax", "sigmoid"),
    "topk_method": ("greedy", "group_limited_greedy", "noaux_tc"),
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
    topk_method: str = "greedy"  # "greedy" | "group_limited_greedy" | "noaux_tc" (adds a correction bias)
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
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    norm_type: str = "rms"  # "rms" | "layernorm" (Phi-3.5-MoE) | "layernorm_no_bias" (DBRX)
    lm_head_bias: bool = False  # Phi-3.5-MoE
    tie_word_embeddings: bool = False
    dtype: str = "bfloat16"
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
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise self._fail(f"{key}={value!r} must be an integer >= {low}", f"fix {key} in the spec")
        if not isinstance(self.name, str) or not self.name:
            raise self._fail("name must be a non-empty string", "set name to the YAML file's stem")
        for f in fields(self):
            if isinstance(f.default, bool) and not isinstance(getattr(self, f.name), bool):
                raise self._fail(f"{f.name}={getattr(self, f.name)!r} must be true or false", f"fix {f.name}")
        for key in ("rope_theta", "rms_norm_eps", "routed_scaling_factor", "clip_qkv"):
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
        ]
        if self.attention == "mla":
            checks += [
                (
                    min(self.kv_lora_rank, self.qk_rope_head_dim, self.qk_nope_head_dim, self.v_head_dim) > 0,
                    "MLA needs kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim and v_head_dim > 0",
                ),
                (self.num_kv_heads == self.num_heads, "MLA needs num_kv_heads == num_heads"),
            ]
        if self.family.startswith("deepseek"):
            checks.append(
                (
                    self.shared_intermediate_size == self.num_shared_experts * self.moe_intermediate_size,
                    "DeepSeek needs shared_intermediate_size == num_shared_experts * moe_intermediate_size",
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

    @property
    def is_runnable(self) -> bool:
        return self.family in RUNNABLE_FAMILIES

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_dense_layers

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_dense_layers

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

    @classmethod
    def from_dict(cls, data: dict, origin: str = "spec") -> ModelSpec:
        if not isinstance(data, dict):
            raise UserError(
                f"{origin}: a model spec must be a mapping of fields", "see models/mixtral-8x7b.yaml"
            )
        known = {f.name for f in fields(cls)}
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
        return cls(**data)

    @classmethod
    def from_hf_config(cls, cfg: dict, name: str | None = None) -> ModelSpec:
        from planner.specs.hf_config import spec_from_hf_config

        return spec_from_hf_config(cfg, name)

    def to_hf_config(self) -> dict:
        from planner.specs.hf_config import spec_to_hf_config

        return spec_to_hf_config(self)

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


def list_specs() -> list[str]:
    """Names of the model specs in the user dir and the shipped specs, sorted."""
    return locations.names("models")


def _load_yaml(path: Path | Traversable) -> ModelSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError) as err:  # ValueError: not UTF-8, huge int
        raise UserError(
            f"cannot read model spec {path}: {str(err)[:300]}", "pass a readable YAML model spec"
        ) from None
    return ModelSpec.from_dict(data, origin=str(path))


def _load_config_json(path: Path) -> ModelSpec:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON
        raise UserError(
            f"cannot read {path}: {err}", "pass a checkpoint directory with a valid config.json"
        ) from err
    if not isinstance(cfg, dict):
        raise UserError(f"{path} is not a JSON object", "pass a HF config.json")
    written_by_us = isinstance(cfg.get("moelens"), dict)
    spec = ModelSpec.from_hf_config(cfg, name=None if written_by_us else path.resolve().parent.name)
    return spec if written_by_us else replace(spec, source=f"config.json at {path}")


def _load_hub_id(repo_id: str) -> ModelSpec:
    """A Hugging Face id: its cached snapshot's config.json, else the shipped spec made from that model."""
    snapshot = local_snapshot(repo_id)
    if snapshot is not None:
        spec = _load_config_json(snapshot / "config.json")
        return spec if spec.name != snapshot.name else replace(spec, name=repo_id.split("/")[-1].lower())
    shipped = shipped_spec_name(repo_id)
    if shipped is not None:
        return _load_yaml(locations.find("models", shipped))
    raise UserError(
        f"{repo_id} is neither in the local Hugging Face cache ({hub_cache_dir()}) nor a shipped spec",
        download_hint(repo_id),
    )


def load_spec(ref: str | Path | ModelSpec) -> ModelSpec:
    """A spec from a short name, full name, YAML path, checkpoint directory or config.json path."""
    if isinstance(ref, ModelSpec):
        return ref
    path = Path(ref)
    text = str(ref)
    if is_hub_id(text):
        return _load_hub_id(text)
    if path.exists() or "/" in text or path.suffix in (".yaml", ".yml", ".json"):
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise UserError(
                    f"{path} is a directory without config.json",
                    "pass a checkpoint directory (with config.json) or a model spec name",
                )
            return _load_config_json(path / "config.json")
        if not path.is_file():
            raise UserError(f"model spec file {path} does not exist", "check the path")
        return _load_config_json(path) if path.suffix == ".json" else _load_yaml(path)
    key = text.lower()
    stem = ALIASES.get(key, key)
    candidate = locations.find("models", stem)
    if candidate is not None:
        return _load_yaml(candidate)
    available = list_specs()
    raise UserError(
        f"unknown model {text!r}",
        f"use one of {available} (short names: {sorted(ALIASES)}), a YAML path or a checkpoint directory",
    )


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

"""Finding a model spec: `load_spec(ref) -> ModelSpec` and `list_specs()` (the spec itself: `model_spec`).

`ref` is a short name (`mixtral` -> mixtral-8x7b, see `ALIASES`), a full name (a YAML's stem in the user dir or
the shipped specs, planner.locations), a YAML path, a checkpoint directory or `config.json` path (read by
`planner.specs.hf_config.read_config_json`, the one config.json reader), or a Hugging Face id `org/name` (the
cached snapshot's config.json, else the shipped spec of that model). Unknown names raise `UserError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from planner import locations
from planner.errors import UserError
from planner.specs.hf_config import spec_from_config_json
from planner.specs.hf_hub import download_hint, hub_cache_dir, is_hub_id, local_snapshot, shipped_spec_name
from planner.specs.model_spec import (  # noqa: F401  (re-exported: the names callers import from here)
    ALL_FAMILIES,
    COMPUTE_DTYPES,
    DTYPE_BYTES,
    IDENTITY_FIELDS,
    RUNNABLE_FAMILIES,
    ModelSpec,
)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

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
    "glm": "glm-4.5",
    "glm4-moe": "glm-4.5",
    "glm-air": "glm-4.5-air",
    "kimi": "kimi-k2",
    "kimi-k2-instruct": "kimi-k2",
}


def list_specs() -> list[str]:
    """Names of the model specs in the user dir and the shipped specs, sorted."""
    return locations.known_names("models")


def _load_yaml(path: Path | Traversable) -> ModelSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError) as err:  # ValueError: not UTF-8, huge int
        raise UserError(
            f"cannot read model spec {path}: {str(err)[:300]}", "pass a readable YAML model spec"
        ) from None
    return ModelSpec.from_dict(data, origin=str(path))


def _load_hub_id(repo_id: str) -> ModelSpec:
    """A Hugging Face id: its cached snapshot's config.json, else the shipped spec made from that model."""
    snapshot = local_snapshot(repo_id)
    if snapshot is not None:
        return spec_from_config_json(snapshot / "config.json", name=repo_id.split("/")[-1].lower())
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
            return spec_from_config_json(path / "config.json")
        if not path.is_file():
            raise UserError(f"model spec file {path} does not exist", "check the path")
        return spec_from_config_json(path) if path.suffix == ".json" else _load_yaml(path)
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

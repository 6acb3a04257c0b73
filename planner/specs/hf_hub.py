"""Hugging Face model ids (`org/name`) resolved from the local Hugging Face cache, never from the network.

How it works: docs/design.md, `planner/specs/hf_hub.py`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from planner.errors import UserError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = (
        Path(os.environ["HF_HOME"]).expanduser()
        if os.environ.get("HF_HOME")
        else Path.home() / ".cache/huggingface"
    )
    return home / "hub"


def is_hub_id(ref: str | Path) -> bool:
    text = str(ref)
    return (
        bool(HUB_ID.match(text)) and not Path(text).exists() and not text.endswith((".yaml", ".yml", ".json"))
    )


def local_snapshot(repo_id: str) -> Path | None:
    repo = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if (snapshot / "config.json").is_file():
            return snapshot
    snapshots = [s for s in (repo / "snapshots").glob("*") if (s / "config.json").is_file()]
    return max(snapshots, key=lambda s: s.stat().st_mtime) if snapshots else None


def shipped_spec_name(repo_id: str) -> str | None:
    from planner import locations

    for name in locations.known_names("models"):
        try:
            source = str(yaml.safe_load(locations.find("models", name).read_text()).get("source", ""))
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if source.split(" ")[0].lower() == repo_id.lower():
            return name
    return None


def download_hint(repo_id: str) -> str:
    return (
        f"download it first (`huggingface-cli download {repo_id}`, into {hub_cache_dir()}; set HF_HUB_CACHE "
        "or HF_HOME if your cache lives elsewhere), or pass a local checkpoint directory"
    )


def require_snapshot(repo_id: str) -> Path:
    snapshot = local_snapshot(repo_id)
    if snapshot is None:
        raise UserError(
            f"{repo_id} is not in the local Hugging Face cache ({hub_cache_dir()}) and moelens "
            "never downloads",
            download_hint(repo_id),
        )
    return snapshot

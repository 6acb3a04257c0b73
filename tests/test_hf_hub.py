"""Hugging Face ids resolved from the local cache layout (never the network), and mapped to shipped specs."""

from __future__ import annotations

import json

import pytest

from planner.errors import UserError
from planner.plans.workload import Workload
from planner.specs.hf_config import spec_to_hf_config
from planner.specs.hf_hub import is_hub_id, local_snapshot, shipped_spec_name
from planner.specs.spec import load_spec


def fake_snapshot(cache, repo_id: str, revision: str = "abc123", config: dict | None = None):
    snapshot = cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config or {}))
    (cache / ("models--" + repo_id.replace("/", "--")) / "refs").mkdir()
    (cache / ("models--" + repo_id.replace("/", "--")) / "refs" / "main").write_text(revision)
    return snapshot


def test_ids_map_to_shipped_specs_without_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert (
        is_hub_id("mistralai/Mixtral-8x7B-v0.1") and not is_hub_id("mixtral") and not is_hub_id(str(tmp_path))
    )
    assert shipped_spec_name("mistralai/Mixtral-8x7B-v0.1") == "mixtral-8x7b"
    assert load_spec("mistralai/Mixtral-8x7B-v0.1").name == "mixtral-8x7b"
    assert load_spec("Qwen/Qwen3-30B-A3B").name == "qwen3-30b-a3b"


def test_unknown_id_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="huggingface-cli download someone/some-moe"):
        load_spec("someone/some-moe")


def test_cached_snapshot_wins_and_hf_home_is_honoured(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    config = spec_to_hf_config(load_spec("olmoe-1b-7b"))
    snapshot = fake_snapshot(tmp_path / "hub", "allenai/OLMoE-1B-7B-0924", config=config)
    assert local_snapshot("allenai/OLMoE-1B-7B-0924") == snapshot
    spec = load_spec("allenai/OLMoE-1B-7B-0924")
    assert spec.num_experts == config["num_experts"]
    (snapshot / "tokenizer.json").write_text("not a tokenizer")
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(UserError, match="cannot read tokenizer"):  # found in the snapshot, then read
        Workload.from_file(path, 4, tokenizer_path="allenai/OLMoE-1B-7B-0924")


def test_planner_and_runtime_read_a_line_the_same_way(tmp_path):
    from runtime.jobio import ParseContext, scan_input

    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": [1, 2, 3]}) + "\n" + json.dumps({"id": 2, "prompt": "x", "tools": []}) + "\n"
    )
    context = ParseContext(tokenizer=None, max_context=64, vocab_size=100)
    with pytest.raises(UserError) as planner_error:
        Workload.from_file(path, 4)
    with pytest.raises(UserError) as runtime_error:
        scan_input(path, context)
    assert planner_error.value.cause == runtime_error.value.cause
    assert "line 2" in planner_error.value.cause

"""The planner's host memory is what the engine keeps: the streamed weights' pinned arena (host copies of
device-resident weights are freed and not counted) and the KV cache, within 1%, with pinning replaced by a
recorder on the CPU; and Mixtral-8x7B on an H100 with 125 GiB of host memory gets the KV cache that fits."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from planner.cli import main as planner_main
from planner.hardware.profile import load_profile
from planner.perf.layout import RESIDENCY_ORDER
from planner.perf.memory import Budgets
from planner.perf.model import Candidates, PerfModel
from planner.plans.workload import Workload
from planner.specs.spec import load_spec
from runtime.checkpoint import open_checkpoint, write_random_checkpoint
from runtime.engine.config import EngineConfig
from runtime.engine.host_arena import PinRecorder
from runtime.engine.kv_cache import HostKVCache
from runtime.engine.weights import WeightStore

GiB = float(1 << 30)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = dataclasses.replace(
        load_spec("mixtral-mini"),
        name="mixtral-host-accounting",
        num_layers=2,
        hidden_size=256,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        vocab_size=1024,
        moe_intermediate_size=512,
        max_position_embeddings=512,
    )
    directory = tmp_path_factory.mktemp("host-accounting")
    write_random_checkpoint(spec, directory, dtype="bf16", seed=1)
    return open_checkpoint(directory)


@pytest.mark.parametrize("residency", [0, 2, len(RESIDENCY_ORDER), len(RESIDENCY_ORDER) + 3])
def test_planner_host_and_pinned_bytes_equal_what_the_engine_allocates(checkpoint, residency):
    spec = checkpoint.spec
    profile = load_profile("h100-sxm-lambda")
    model = PerfModel(
        spec, profile, Workload.fixed(64, 32, 100), Budgets.from_args(profile, 0.05, host_gb=16)
    )
    candidate = Candidates.of(
        residency=residency, attn_batch=16, expert_batch=256, prefill_chunk=512, attention_threads=1
    )
    host, _ = model.memory.breakdown(candidate, 8.0)
    groups, experts = model.layout.resident_groups(residency)
    config = EngineConfig.build(
        force_streaming=True,
        resident_modules=groups,
        resident_experts_per_layer=experts,
        kv_budget_bytes=int(host["kv_cache"]),
        kv_block_size=model.layout.block_size,
    )
    recorder = PinRecorder()
    store = WeightStore(checkpoint.weights, spec, config, pinner=recorder)
    try:
        assert host["weights"] > 0 and host["pinned_weights"] == host["weights"]
        assert store.arena.nbytes == pytest.approx(host["weights"], rel=0.01)
        assert recorder.pinned == [store.arena.nbytes]  # one region, pinned once, exactly
        # the final norm stays on the device whatever the plan: a few hundred bytes
        assert store.resident_bytes == pytest.approx(
            model.layout.resident_bytes[residency], rel=0.01, abs=4096
        )
    finally:
        store.close()
    kv = HostKVCache(spec, torch.bfloat16, config.decisions.kv_budget_bytes, config.decisions.kv_block_size)
    assert kv.nbytes == pytest.approx(host["kv_cache"], rel=0.01)


def test_mixtral_on_an_h100_gets_the_kv_cache_that_fits(tmp_path, capsys):
    out = tmp_path / "plan.yaml"
    code = planner_main(
        [
            "solve",
            "--model",
            "mixtral",
            "--kv-gb",
            "100",
            "--host-gb",
            "125",
            "--profile",
            "h100-sxm-lambda",
            "--prompt-len",
            "512",
            "--gen-len",
            "256",
            "--num-prompts",
            "20000",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    plan = yaml.safe_load(out.read_text())
    host = plan["memory"]["host"]
    assert plan["kv_budget_bytes"] >= 70 * GiB
    assert host["weights"] == host["pinned_weights"] < 30 * GiB  # only the streamed weights stay on the host
    assert host["total"] <= host["budget"]

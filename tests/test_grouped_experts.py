"""Grouped experts: a constant number of GEMMs per decode step whatever the experts hit, both expert paths
equal to the reference's routed-expert sum on split (resident + streamed) stacks and in row windows, the
switch that forces a path, and the planner's price of the grouped windows."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from planner.specs.spec import load_spec
from runtime.checkpoint import open_checkpoint, write_random_checkpoint
from runtime.engine import Engine, EngineConfig, Request
from runtime.engine.expert_stacks import fill_down, fill_gate_up, stack_names
from runtime.engine.ffn import grouped_experts, looped_experts
from runtime.model.moe import routed_experts
from runtime.sampling import SamplingParams

GEMMS = {"linear", "mm", "addmm", "bmm", "baddbmm", "matmul", "_grouped_mm"}  # as the dispatcher sees them

pytestmark = pytest.mark.usefixtures("single_torch_thread")


class GemmCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in GEMMS and not self.paused:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


def many_expert_spec():
    return dataclasses.replace(
        load_spec("qwen3-mini"),
        name="qwen3-gemm-count",
        num_layers=2,
        hidden_size=64,
        num_heads=2,
        num_kv_heads=1,
        head_dim=64,
        vocab_size=320,
        moe_intermediate_size=32,
        max_position_embeddings=128,
    )


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qwen3-gemm-count")
    write_random_checkpoint(many_expert_spec(), directory, dtype="fp32", seed=11)
    return open_checkpoint(directory)


def decode_step_gemms(checkpoint, grouped: bool) -> list[tuple[int, int, Counter]]:
    """(sequences, experts hit summed over layers, GEMM calls) of every decode step of a run whose batch shrinks
    from 8 sequences to 1 as they finish."""
    engine = Engine(
        checkpoint,
        EngineConfig.build(
            num_seqs=8,
            attn_batch=8,
            kv_budget_bytes=8 << 20,
            attention_threads=1,
            grouped_experts=grouped,
            token_groups=1,
        ),
    )
    steps, forward, attend = [], engine.stack.forward, engine.stack.backend.decode
    counter = None

    def cpu_attention(*args, **kwargs):
        """The CPU attention kernel (its torch fallback multiplies per sequence): not a device GEMM."""
        counter.paused = True
        try:
            return attend(*args, **kwargs)
        finally:
            counter.paused = False

    def counted(batch):
        nonlocal counter
        with GemmCounter() as counter:
            hidden, hits = forward(batch)
        if batch.num_prefill == 0:  # a decode-only step
            steps.append((batch.num_rows, sum(int(h.sum()) for h in hits if h is not None), counter.calls))
        return hidden, hits

    engine.stack.forward, engine.stack.backend.decode = counted, cpu_attention
    try:
        engine.run(
            [
                Request(i, [3 + i, 7, 9 + 2 * i], SamplingParams(max_tokens=2 + i, ignore_eos=True))
                for i in range(8)
            ]
        )
    finally:
        engine.close()
    return steps


def test_grouped_path_runs_a_constant_number_of_gemms_per_decode_step(qwen3):
    spec = qwen3.spec
    grouped = decode_step_gemms(qwen3, grouped=True)
    assert len({hit for _, hit, _ in grouped}) >= 4  # from ~2 x 4 experts per layer to most of the 32
    counts = {tuple(sorted(calls.items())) for _, _, calls in grouped}
    assert len(counts) == 1
    calls = grouped[0][2]
    assert calls["_grouped_mm"] == 2 * spec.num_moe_layers  # gate_up and down, once per layer
    # the looped path's count grows with the experts hit: what the grouped path removes
    looped = decode_step_gemms(qwen3, grouped=False)
    per_step = {hit: sum(calls.values()) for _, hit, calls in looped}
    assert len(set(per_step.values())) > 1 and per_step[max(per_step)] > per_step[min(per_step)]


@pytest.mark.parametrize("path", [grouped_experts, looped_experts])
@pytest.mark.parametrize("split, window", [(0, 1024), (3, 1024), (3, 5), (8, 7)])
def test_expert_paths_equal_the_reference_sum(path, split, window):
    """Stacks split at `split` (experts 0..split-1 in one stack, the rest in another), rows in windows."""
    generator = torch.Generator().manual_seed(split + window)
    experts, hidden, inter, tokens, top_k = 8, 16, 12, 9, 3
    weights = {
        f"layers.0.moe.experts.{e}.{p}": torch.randn(shape, generator=generator)
        for e in range(experts)
        for p, shape in (
            ("gate_proj", (inter, hidden)),
            ("up_proj", (inter, hidden)),
            ("down_proj", (hidden, inter)),
        )
    }
    w = {}
    for lo, hi in ((0, split), (split, experts)):
        if hi > lo:
            gate_up, down = stack_names(lo, hi)
            w[gate_up], w[down] = torch.empty(hi - lo, 2 * inter, hidden), torch.empty(hi - lo, hidden, inter)
            fill_gate_up(w[gate_up], weights, 0, lo)
            fill_down(w[down], weights, 0, lo)
    x = torch.randn(tokens, hidden, generator=generator)
    topk_weights, topk_ids = torch.topk(
        torch.softmax(torch.randn(tokens, experts, generator=generator), -1), top_k
    )
    out, hit = path(x, topk_ids, topk_weights, w, experts, window)
    per_expert = {k.removeprefix("layers.0."): v for k, v in weights.items()}
    torch.testing.assert_close(
        out, routed_experts(x, topk_ids, topk_weights, per_expert), rtol=1e-5, atol=1e-5
    )
    assert hit.tolist() == [bool((topk_ids == e).any()) for e in range(experts)]


def test_grouped_path_is_forced_by_the_config_or_the_environment(monkeypatch):
    from planner.settings import GROUPED_EXPERTS as GROUPED_ENV
    from runtime.engine.ffn import use_grouped

    spec, cpu = many_expert_spec(), torch.device("cpu")
    monkeypatch.delenv(GROUPED_ENV, raising=False)
    assert EngineConfig().grouped_experts is None and use_grouped(None, cpu, torch.float32, spec)
    assert not use_grouped(False, cpu, torch.bfloat16, spec)
    monkeypatch.setenv(GROUPED_ENV, "1")
    assert (
        EngineConfig().grouped_experts is True
        and EngineConfig.build(grouped_experts=False).grouped_experts is False
    )


def test_planner_prices_grouped_windows_so_tiny_ones_cost_more():
    """The grouped path re-reads an expert's weights once per window its rows span: b_e = 1 is no free choice."""
    import numpy as np

    from planner.hardware.profile import load_profile
    from planner.perf.memory import Budgets
    from planner.perf.model import Candidates, PerfModel
    from planner.plans.workload import Workload

    profile = load_profile("h100-sxm-lambda")
    model = PerfModel(
        load_spec("mixtral"), profile, Workload.fixed(512, 256, 20_000), Budgets.from_args(profile, 100)
    )
    assert model.grouped_experts
    c = Candidates.of(
        residency=7, attn_batch=256, expert_batch=[1, 64, 4096], prefill_chunk=8192, attention_threads=8
    )
    experts = model.decode_step(c, np.array([1024.0]))["experts"]
    assert experts[0] > experts[1] > experts[2] > 0

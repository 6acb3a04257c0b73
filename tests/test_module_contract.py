"""The module contract between planner and engine: in a decode step, the engine's module timers count the calls
the planner prices (`planner.modules.DECODE_CALLS`) plus its other timed blocks (`UNPRICED_CALLS`), per module,
with one token group and with two (the overlap pipeline), for MoE, dense and shared-expert layers."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from planner.modules import DECODE_CALLS, UNPRICED_CALLS, step_calls
from planner.specs.spec import load_spec
from runtime.checkpoint import open_checkpoint, write_random_checkpoint
from runtime.engine import Engine, EngineConfig, Request
from runtime.sampling import SamplingParams

pytestmark = pytest.mark.usefixtures("single_torch_thread")
NUM_SEQS, ATTN_BATCH = 8, 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = dataclasses.replace(
        load_spec("qwen2-moe-mini"),
        name="contract-tiny",
        num_layers=3,
        first_dense_layers=1,
        hidden_size=128,
        num_heads=2,
        num_kv_heads=1,
        head_dim=64,
        vocab_size=320,
        num_experts=4,
        top_k=2,
        moe_intermediate_size=32,
        shared_intermediate_size=32,
        dense_intermediate_size=48,
        max_position_embeddings=64,
    )
    directory = tmp_path_factory.mktemp("contract")
    write_random_checkpoint(spec, directory, dtype="fp32", seed=3)
    return open_checkpoint(directory)


@pytest.mark.parametrize("groups", [1, 2])
def test_decode_step_timer_calls_are_the_planners_call_counts(checkpoint, groups):
    config = EngineConfig.build(
        num_seqs=NUM_SEQS, attn_batch=ATTN_BATCH, kv_block_size=4, token_groups=groups, device="cpu"
    )
    engine = Engine(checkpoint, config)
    full_decode_steps = []
    step = engine._step

    def counted_step(step_plan, sampled, stats):
        before = Counter(engine.timer.calls)
        step(step_plan, sampled, stats)
        if not step_plan.prefill and len(step_plan.decode) == NUM_SEQS:
            full_decode_steps.append(Counter(engine.timer.calls) - before)

    engine._step = counted_step
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    engine.run([Request(id=i, prompt_token_ids=[1 + i, 2, 3], params=params) for i in range(NUM_SEQS)])
    engine.close()
    assert full_decode_steps, "no decode step ran all sequences"

    spec = checkpoint.spec
    layers = {
        "all": spec.num_layers,
        "moe": spec.num_moe_layers,
        "dense": spec.num_layers - spec.num_moe_layers,
        "shared": spec.num_moe_layers if spec.num_shared_experts else 0,
    }
    priced = step_calls(DECODE_CALLS, NUM_SEQS, groups, ATTN_BATCH, layers)
    unpriced = step_calls(UNPRICED_CALLS, NUM_SEQS, groups, ATTN_BATCH, layers)
    expected = {m: int(priced[m] + unpriced.get(m, 0)) for m in priced}
    assert layers["dense"] and layers["shared"]
    for measured in full_decode_steps:
        assert {m: measured[m] for m in expected} == expected

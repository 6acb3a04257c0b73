"""The engine end to end on tiny fp32 checkpoints of every GQA family (gpt-oss: sinks, windowed layers
keeping only a ring of KV blocks per slot, biased clamped-SwiGLU experts): greedy output token-identical to the
reference forward, with refills (more prompts than slots), chunked prefill (prompts longer than the chunk),
preemption (a KV budget smaller than the sequences in flight need), expert chunks smaller than the tokens
routed, streaming forced on and off, module batching on and off, the two-group overlap pipeline, and routed experts
looped or as grouped GEMMs (`EngineConfig.grouped_experts`; with one resident expert per layer, two stacks).
Head dim 64 so decode attention runs the C++ kernel where it builds. Also: `runtime.LLM` with an
EngineConfig gives the reference API's outputs (greedy, seeded sampling, EOS, stop strings), and RunStats.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from planner.errors import UserError
from planner.modules import ALL_MODULES
from planner.specs.spec import load_spec
from runtime.checkpoint import open_checkpoint, write_random_checkpoint
from runtime.engine import Engine, EngineBackend, EngineConfig, Request
from runtime.engine.kv_cache import ring_blocks
from runtime.model.generation import ReferenceBackend
from runtime.model.reference import ReferenceModel
from runtime.sampling import GenerationState, SamplingParams

FAMILY_SPECS = {
    "mixtral": "mixtral-mini",
    "qwen2_moe": "qwen2-moe-mini",
    "qwen3_moe": "qwen3-mini",
    "olmoe": "olmoe-mini",
    "gpt_oss": "gpt-oss-mini",
}
BLOCK_SIZE = 4
CONFIGS = {
    "in_place": dict(),
    "streamed_overlap": dict(
        force_streaming=True, resident_modules=("embed", "lm_head", "router"), token_groups=2
    ),
    "model_batching_streamed": dict(batching="model", force_streaming=True, resident_experts_per_layer=1),
}


def tiny_spec(family: str):
    spec = load_spec(FAMILY_SPECS[family])
    changes = dict(
        name=f"{family}-engine-tiny",
        num_layers=3,
        hidden_size=128,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        vocab_size=320,
        num_experts=6,
        top_k=2,
        moe_intermediate_size=48,
        max_position_embeddings=256,
    )
    if family == "olmoe":  # needs heads * head_dim == hidden
        changes.update(num_heads=2, num_kv_heads=2)
    if family in ("mixtral", "gpt_oss"):  # gpt-oss: layers 0 and 2 keep a ring of 4 blocks per slot
        changes.update(sliding_window=9)
    if spec.num_shared_experts:
        changes.update(shared_intermediate_size=80)
    return dataclasses.replace(spec, **changes)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module", params=sorted(FAMILY_SPECS))
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    write_random_checkpoint(tiny_spec(request.param), directory, dtype="fp32", seed=5)
    return open_checkpoint(directory)


@pytest.fixture(scope="module")
def workload(checkpoint):
    generator = torch.Generator().manual_seed(9)
    lengths = [1, 23, 7, 30, 2, 13, 18, 5, 11]
    prompts = [
        torch.randint(3, checkpoint.spec.vocab_size, (n,), generator=generator).tolist() for n in lengths
    ]
    max_tokens = [12, 3, 14, 6, 9, 1, 10, 13, 4]
    return prompts, max_tokens


def new_states(workload, eos_ids=frozenset()) -> list[GenerationState]:
    prompts, max_tokens = workload
    return [
        GenerationState(prompt, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), eos_ids, None)
        for prompt, n in zip(prompts, max_tokens)
    ]


@pytest.fixture(scope="module")
def reference_tokens(checkpoint, workload):
    states = new_states(workload)
    ReferenceBackend(ReferenceModel(checkpoint.spec, checkpoint.weights)).run(states)
    return [state.token_ids for state in states]


def kv_budget(spec, blocks: int, slots: int = 3) -> int:
    """Bytes for `blocks` paged blocks of every full-attention layer plus `slots` rings of windowed layers."""
    per_layer_block = BLOCK_SIZE * 2 * spec.num_kv_heads * spec.head_dim * 4
    windowed = sum(spec.keeps_window_only(layer) for layer in range(spec.num_layers))
    return per_layer_block * (
        blocks * (spec.num_layers - windowed) + slots * windowed * ring_blocks(spec, BLOCK_SIZE)
    )


@pytest.mark.parametrize("grouped", [False, True], ids=["looped", "grouped"])
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_engine_greedy_tokens_match_reference(checkpoint, workload, reference_tokens, config_name, grouped):
    spec = checkpoint.spec
    # 3 slots, 11 blocks of 4 tokens: fewer than three sequences of up to 36 tokens need: some are preempted
    config = EngineConfig.build(
        num_seqs=3,
        attn_batch=2,
        expert_batch=3,
        kv_budget_bytes=kv_budget(spec, 11),
        kv_block_size=BLOCK_SIZE,
        prefill_chunk=12,
        attention_threads=1,
        grouped_experts=grouped,
        **CONFIGS[config_name],
    )
    engine = Engine(checkpoint, config)
    assert engine.stack.grouped == grouped
    backend = EngineBackend(engine)
    states = new_states(workload)
    try:
        backend.run(states)
    finally:
        engine.close()
    assert [state.token_ids for state in states] == reference_tokens
    assert all(state.finish_reason == "length" for state in states)
    stats = backend.last_stats
    assert stats.num_preemptions > 0
    assert stats.num_requests == len(states)
    assert stats.generated_tokens == sum(len(t) for t in reference_tokens)
    assert stats.prefill_tokens >= sum(len(p) for p in workload[0])
    assert stats.decode_tokens == stats.decode_batch_sizes_sum and stats.mean_decode_batch <= 3
    assert (engine.streamer is not None) == config.force_streaming
    assert (
        stats.steps < stats.decode_steps + stats.prefill_forwards
    )  # some steps prefilled and decoded at once
    if engine.streamer is not None:
        assert engine.streamer.max_slots_in_use <= 2
        # one pass per step: every layer crosses once per step (plus the slots filled ahead for the next step)
        layers = spec.num_layers
        assert (
            stats.steps * layers
            <= len(engine.streamer.copy_log)
            <= stats.steps * layers + config.decisions.stream_slots
        )
        per_cycle = sum(layer.nbytes for layer in engine.store.packed)
        assert engine.streamer.copied_bytes == sum(
            engine.store.packed[i].nbytes for i, _ in engine.streamer.copy_log
        )
        assert engine.streamer.copied_bytes >= stats.steps * per_cycle
        assert sum(phase.get("weight_copy", 0) for phase in stats.module_seconds.values()) > 0
    measured = set(stats.module_seconds["decode"]) | set(stats.module_seconds["prefill"])
    assert {
        "embed",
        "qkv_proj",
        "attention",
        "o_proj",
        "router",
        "experts",
        "lm_head",
        "sampling",
    } <= measured
    assert measured <= set(ALL_MODULES)
    assert ("shared_experts" in measured) == (spec.num_shared_experts > 0)
    assert all(1 <= mean <= spec.num_experts for mean in stats.activated_experts_per_layer)
    assert set(stats.per_decode_step()) >= {"experts", "prefill"} and "prefill" in stats.per_prefill_chunk()


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mixtral-api")
    write_random_checkpoint(tiny_spec("mixtral"), directory, dtype="fp32", seed=6)
    return open_checkpoint(directory)


def test_engine_runs_several_jobs_in_turn(mixtral):
    generator = torch.Generator().manual_seed(2)
    workload = (
        [torch.randint(3, 320, (n,), generator=generator).tolist() for n in (9, 2, 17, 5)],
        [6, 9, 3, 7],
    )
    reference = new_states(workload)
    ReferenceBackend(ReferenceModel(mixtral.spec, mixtral.weights)).run(reference)
    config = EngineConfig.build(
        num_seqs=4,
        kv_budget_bytes=kv_budget(mixtral.spec, 64),
        kv_block_size=BLOCK_SIZE,
        prefill_chunk=64,
        attention_threads=1,
    )
    engine = Engine(mixtral, config)
    too_long = [
        Request("ok", [5] * 9, SamplingParams(temperature=0, max_tokens=30)),
        Request("long", [5] * 300, SamplingParams()),
    ]
    with pytest.raises(UserError, match="'long'"):
        engine.run(too_long)
    assert engine.kv.allocator.num_used == 0
    completions = []
    for _ in range(2):
        states = new_states(workload)
        engine.run(
            (Request(i, s.prompt_token_ids, s.params, state=s) for i, s in enumerate(states)),
            on_finish=completions.append,
        )
        assert [state.token_ids for state in states] == [state.token_ids for state in reference]
        assert engine.kv.allocator.num_used == 0
    engine.close()
    assert len(completions) == 2 * len(reference)
    by_id = {c.id: c for c in completions}
    assert by_id[2].token_ids == reference[2].token_ids and by_id[2].prompt_token_ids == workload[0][2]
    assert by_id[2].finish_reason == "length" and by_id[2].num_preemptions == 0


def test_llm_with_an_engine_config_matches_the_reference_api(mixtral):
    from runtime import LLM

    checkpoint = mixtral
    reference = LLM(checkpoint.dir, reference=True)
    config = EngineConfig.build(
        num_seqs=2,
        kv_budget_bytes=kv_budget(checkpoint.spec, 32),
        kv_block_size=BLOCK_SIZE,
        prefill_chunk=8,
        attention_threads=1,
    )
    engine_llm = LLM(checkpoint.dir, plan=config)
    assert isinstance(engine_llm.backend, EngineBackend)
    prompts = ["The capital of", "def f(x):", "Hello", "import os\nimport sys"]
    params = [
        SamplingParams(temperature=0, max_tokens=10),
        SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, top_k=50, seed=3),
        SamplingParams(max_tokens=12, temperature=1.0, seed=4, stop=[" ", "e", "t", "a", "o", "i", "n"]),
        SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
    ]
    outputs = engine_llm.generate(prompts, params)
    for ours, theirs in zip(outputs, reference.generate(prompts, params)):
        ours, theirs = ours.outputs[0], theirs.outputs[0]
        assert (ours.token_ids, ours.text, ours.finish_reason) == (
            theirs.token_ids,
            theirs.text,
            theirs.finish_reason,
        )
    assert outputs[2].outputs[0].finish_reason == "stop" and len(outputs[2].outputs[0].token_ids) < 12

    # EOS: make the third greedy token of each prompt an end-of-sequence id
    greedy = SamplingParams(temperature=0, max_tokens=10)
    eos_ids = frozenset(out.outputs[0].token_ids[2] for out in reference.generate(prompts, greedy))
    ours = [GenerationState(reference.encode(p), greedy, eos_ids, None) for p in prompts]
    theirs = [GenerationState(reference.encode(p), greedy, eos_ids, None) for p in prompts]
    engine_llm.backend.run(ours)
    reference.backend.run(theirs)
    assert [(s.token_ids, s.finish_reason) for s in ours] == [(s.token_ids, s.finish_reason) for s in theirs]
    assert all(s.finish_reason == "stop" and len(s.token_ids) <= 3 for s in ours)
    engine_llm.backend.engine.close()

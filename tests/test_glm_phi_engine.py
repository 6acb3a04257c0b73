"""The engine on GLM-4.5 and Phi-3.5-MoE models: greedy output token-identical to the reference forward.

Five prompts through two slots (so finished sequences are refilled), prompts longer than the prefill chunk
(so chunked prefill attends over the cached prefix), KV blocks of 4 tokens, attention micro-batches of one
sequence; with streaming forced off and on (the second also with the two-group CPU/device overlap), and
routed experts looped or as grouped GEMMs. The models are the tiny transformers ones of tests/test_glm_phi.py
(GLM: partial rotary, q/k norm, biases, correction-bias routing, shared expert, dense first layer; Phi:
LayerNorm and lm_head biases, o_proj bias, sparsemixer routing, a sliding window).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from test_glm_phi import VOCAB, build_checkpoint  # noqa: E402

from runtime.checkpoint import open_checkpoint  # noqa: E402
from runtime.engine import Engine, EngineBackend, EngineConfig  # noqa: E402
from runtime.model.generation import ReferenceBackend  # noqa: E402
from runtime.model.reference import ReferenceModel  # noqa: E402
from runtime.sampling import GenerationState, SamplingParams  # noqa: E402

MAX_TOKENS = 32
CASES = ("glm", "phi")


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module", params=CASES)
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    build_checkpoint(request.param, directory, seed=5)
    return open_checkpoint(directory)


@pytest.fixture(scope="module")
def prompts():
    generator = torch.Generator().manual_seed(4)
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in (3, 19, 11, 6, 14)]


def new_states(prompts: list[list[int]]) -> list[GenerationState]:
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [GenerationState(prompt, params, frozenset(), None) for prompt in prompts]


@pytest.fixture(scope="module")
def reference_tokens(checkpoint, prompts):
    states = new_states(prompts)
    ReferenceBackend(ReferenceModel(checkpoint.spec, checkpoint.weights)).run(states)
    return [state.token_ids for state in states]


@pytest.mark.filterwarnings("ignore:CPU attention kernel does not cover:RuntimeWarning")
@pytest.mark.parametrize("grouped", [False, True], ids=["looped", "grouped"])
@pytest.mark.parametrize("force_streaming", [False, True])
def test_engine_greedy_tokens_match_reference(
    checkpoint, prompts, reference_tokens, force_streaming, grouped
):
    config = EngineConfig.build(
        num_seqs=2,
        attn_batch=1,
        kv_budget_bytes=4 << 20,
        kv_block_size=4,
        prefill_chunk=8,
        force_streaming=force_streaming,
        token_groups=2 if force_streaming else 1,
        grouped_experts=grouped,
    )
    engine = Engine(checkpoint, config)
    backend = EngineBackend(engine)
    states = new_states(prompts)
    try:
        backend.run(states)
    finally:
        engine.close()
    assert [state.token_ids for state in states] == reference_tokens
    assert len({token for tokens in reference_tokens for token in tokens}) > 4, "degenerate generations"
    assert backend.last_stats.num_requests == len(prompts)
    assert backend.last_stats.num_preemptions >= 0
    assert (engine.streamer is not None) == force_streaming

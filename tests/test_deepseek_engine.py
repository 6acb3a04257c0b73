"""The engine on DeepSeek models: greedy output token-identical to the reference forward.

Five prompts through two slots (so finished sequences are refilled), prompts longer than the prefill chunk
(so chunked prefill attends over cached latent rows), KV blocks of 4 tokens, attention micro-batches of one
sequence; with streaming forced off and on (the second also with the two-group CPU/device overlap), and routed
experts looped or as grouped GEMMs.
A V2-Lite-like model has the published latent width (kv_lora_rank 512 + rope 64), so decode runs the
C++ MLA kernel where it builds; a V3 model with group-limited routing and a small latent runs its torch
fallback. The engine attends in the absorbed form throughout, the reference prefills in the expanded form.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from test_deepseek import VOCAB, build_checkpoint  # noqa: E402

from runtime.checkpoint import open_checkpoint  # noqa: E402
from runtime.engine import Engine, EngineBackend, EngineConfig  # noqa: E402
from runtime.model.generation import ReferenceBackend  # noqa: E402
from runtime.model.reference import ReferenceModel  # noqa: E402
from runtime.sampling import GenerationState, SamplingParams  # noqa: E402

MAX_TOKENS = 32
CASES = {
    "v2_lite": dict(kv_lora_rank=512, qk_rope_head_dim=64),
    "v3_group_limited": {},
}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    build_checkpoint(request.param, directory, seed=3, **CASES[request.param])
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
    assert engine.kv.layout.kind == "mla"
    assert engine.kv.layout.head_dim == checkpoint.spec.kv_lora_rank + checkpoint.spec.qk_rope_head_dim
    backend = EngineBackend(engine)
    states = new_states(prompts)
    try:
        backend.run(states)
    finally:
        engine.close()
    assert [state.token_ids for state in states] == reference_tokens
    assert backend.last_stats.num_requests == len(prompts)
    assert (engine.streamer is not None) == force_streaming

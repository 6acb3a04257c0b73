"""The vLLM-style Python API: prompt forms, sampling, stop conditions, validation, and a light import.

Runs on a tiny random Mixtral saved by transformers with a character-level tokenizer (see
tests/test_reference_forward.py for the model and tokenizer builders).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from test_reference_forward import build_hf_checkpoint  # noqa: E402

from planner.errors import UserError  # noqa: E402
from runtime import LLM, SamplingParams  # noqa: E402
from runtime.sampling import sample_next_token  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GREEDY_LONG = SamplingParams(max_tokens=24, ignore_eos=True)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("llm-api")
    build_hf_checkpoint("mixtral", directory, seed=5, with_tokenizer=True)
    return directory


@pytest.fixture(scope="module")
def llm(checkpoint_dir) -> LLM:
    return LLM(checkpoint_dir)


def test_prompt_forms_agree(llm):
    text = "Hello, MoE"
    ids = llm.tokenizer.encode(text)
    forms = [text, ids, {"prompt": text}, {"prompt_token_ids": ids}]
    outputs = llm.generate(forms, SamplingParams(max_tokens=8, ignore_eos=True))
    assert [o.index for o in outputs] == [0, 1, 2, 3]
    for output in outputs:
        assert output.prompt_token_ids == ids
        assert output.token_ids == outputs[0].token_ids
        assert output.text == llm.tokenizer.decode(output.token_ids)
    assert outputs[0].prompt == text and outputs[1].prompt is None
    single = llm.generate(text, SamplingParams(max_tokens=8, ignore_eos=True))
    assert len(single) == 1 and single[0].token_ids == outputs[0].token_ids
    single_ids = llm.generate(ids, SamplingParams(max_tokens=8, ignore_eos=True))
    assert len(single_ids) == 1 and single_ids[0].token_ids == outputs[0].token_ids


def test_default_params_are_greedy_16_tokens(llm):
    (output,) = llm.generate([[5, 6, 7]])
    (again,) = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, ignore_eos=False))
    assert output.token_ids == again.token_ids
    assert len(output.token_ids) <= 16


def test_max_tokens_and_length_finish(llm):
    for max_tokens in (1, 5):
        (output,) = llm.generate("abc", SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        assert len(output.token_ids) == max_tokens
        assert output.finish_reason == "length"


def test_sampling_is_deterministic_per_seed_and_varies_across_seeds(llm):
    prompts = ["The quick", "brown fox jumps"]
    sample = [SamplingParams(temperature=1.5, max_tokens=16, ignore_eos=True, seed=seed) for seed in (0, 0, 1)]
    first, repeat, other = (llm.generate(prompts, params) for params in sample)
    assert [o.token_ids for o in first] == [o.token_ids for o in repeat]
    assert [o.token_ids for o in first] != [o.token_ids for o in other]
    greedy = [o.token_ids for o in llm.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))]
    assert [o.token_ids for o in first] != greedy


def test_top_k_1_and_tiny_top_p_reduce_to_greedy(llm):
    prompts = ["greedy?", [9, 10, 11, 12]]
    greedy = [o.token_ids for o in llm.generate(prompts, GREEDY_LONG)]
    for params in (SamplingParams(temperature=2.0, top_k=1, max_tokens=24, ignore_eos=True, seed=3),
                   SamplingParams(temperature=2.0, top_p=1e-6, max_tokens=24, ignore_eos=True, seed=3)):
        assert [o.token_ids for o in llm.generate(prompts, params)] == greedy


def test_sampler_respects_top_k_and_top_p():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, -1.0])
    seen_k, seen_p = set(), set()
    for seed in range(200):
        generator = torch.Generator().manual_seed(seed)
        seen_k.add(sample_next_token(logits, SamplingParams(temperature=5.0, top_k=3), generator))
        seen_p.add(sample_next_token(logits, SamplingParams(temperature=1.0, top_p=0.7), generator))
    assert seen_k == {0, 1, 2}
    # softmax([4,3,2,...]) = 0.64, 0.24, ...: the nucleus of 0.7 holds the two most likely tokens
    assert seen_p == {0, 1}


def test_stop_strings_truncate_text(llm):
    (full,) = llm.generate("stop here", GREEDY_LONG)
    assert len(full.text) >= 6, full.text
    stop = full.text[4:6]
    cut = full.text.find(stop)
    (stopped,) = llm.generate("stop here", SamplingParams(max_tokens=24, ignore_eos=True, stop=["\x7f", stop]))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:cut]
    assert full.token_ids[: len(stopped.token_ids)] == stopped.token_ids
    assert len(stopped.token_ids) < len(full.token_ids)


def test_eos_stops_unless_ignored(llm, checkpoint_dir):
    prompt = [20, 21, 22, 23]
    (full,) = llm.generate([prompt], GREEDY_LONG)
    eos = full.token_ids[6]
    generation_config = checkpoint_dir / "generation_config.json"
    saved = generation_config.read_text()
    generation_config.write_text(json.dumps({**json.loads(saved), "eos_token_id": [2, eos]}))
    try:
        with_eos = LLM(checkpoint_dir)
    finally:
        generation_config.write_text(saved)
    assert eos in with_eos.eos_token_ids
    first_eos = next(i for i, t in enumerate(full.token_ids) if t in with_eos.eos_token_ids)
    (stopped,) = with_eos.generate([prompt], SamplingParams(max_tokens=24))
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == full.token_ids[: first_eos + 1]
    (ignored,) = with_eos.generate([prompt], GREEDY_LONG)
    assert ignored.token_ids == full.token_ids and ignored.finish_reason == "length"


def test_per_prompt_sampling_params(llm):
    params = [SamplingParams(max_tokens=2, ignore_eos=True), SamplingParams(max_tokens=4, ignore_eos=True)]
    assert [len(o.token_ids) for o in llm.generate(["a", "b"], params)] == [2, 4]
    with pytest.raises(UserError):
        llm.generate(["a", "b"], params[:1])


@pytest.mark.parametrize("kwargs", [
    dict(max_tokens=0), dict(max_tokens=-3), dict(max_tokens=2.5), dict(temperature=-0.1),
    dict(temperature=float("nan")), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-2), dict(seed="7"),
    dict(stop=""), dict(stop=["ok", 3]),
])
def test_invalid_sampling_params_raise_user_error(kwargs):
    with pytest.raises(UserError):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("prompts", [[], [[]], [[0, 10_000]], [{"text": "x"}], [[-1]], 42])
def test_invalid_prompts_raise_user_error(llm, prompts):
    with pytest.raises(UserError):
        llm.generate(prompts)


def test_prompt_longer_than_positions_raises_user_error(llm):
    too_long = [5] * llm.spec.max_position_embeddings
    with pytest.raises(UserError):
        llm.generate([too_long], SamplingParams(max_tokens=1))


def test_importing_runtime_does_not_import_torch():
    code = "import sys, runtime; runtime.SamplingParams(top_k=3); assert 'torch' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr

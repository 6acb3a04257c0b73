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

pytest.importorskip("transformers")

from test_reference_forward import build_hf_checkpoint  # noqa: E402

from planner.errors import UserError  # noqa: E402
from runtime import LLM, SamplingParams  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GREEDY_LONG = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
GREEDY_8 = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("llm-api")
    build_hf_checkpoint("mixtral", directory, seed=5, with_tokenizer=True)
    return directory


@pytest.fixture(scope="module")
def llm(checkpoint_dir) -> LLM:
    return LLM(checkpoint_dir, reference=True)


def test_prompt_forms_agree(llm):
    text = "Hello, MoE"
    ids = llm.tokenizer.encode(text)
    forms = [text, ids, {"prompt": text}, {"prompt_token_ids": ids}]
    outputs = llm.generate(forms, GREEDY_8)
    assert len({o.request_id for o in outputs}) == 4 and all(o.finished for o in outputs)
    first = outputs[0].outputs[0]
    for output in outputs:
        (completion,) = output.outputs
        assert output.prompt_token_ids == ids and completion.index == 0
        assert completion.token_ids == first.token_ids
        assert completion.text == llm.tokenizer.decode(completion.token_ids)
        assert completion.logprobs is None and completion.cumulative_logprob is None
    assert outputs[0].prompt == text and outputs[1].prompt is None
    single = llm.generate(text, GREEDY_8)
    assert len(single) == 1 and single[0].outputs[0].token_ids == first.token_ids
    single_ids = llm.generate(ids, GREEDY_8)
    assert len(single_ids) == 1 and single_ids[0].outputs[0].token_ids == first.token_ids


def test_default_params_are_vllms():
    params = SamplingParams()
    assert (
        params.n,
        params.temperature,
        params.top_p,
        params.top_k,
        params.min_p,
        params.max_tokens,
        params.presence_penalty,
        params.frequency_penalty,
        params.repetition_penalty,
        params.min_tokens,
        params.logprobs,
        params.seed,
    ) == (1, 1.0, 1.0, 0, 0.0, 16, 0.0, 0.0, 1.0, 0, None, None)
    assert not params.is_greedy and SamplingParams(temperature=0).is_greedy


def test_max_tokens_and_length_finish(llm):
    for max_tokens in (1, 5):
        ((output,),) = (
            o.outputs for o in llm.generate("abc", SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        )
        assert len(output.token_ids) == max_tokens
        assert output.finish_reason == "length"


def first_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def test_sampling_is_deterministic_per_seed_and_varies_across_seeds(llm):
    prompts = ["The quick", "brown fox jumps"]
    sample = [
        SamplingParams(temperature=1.5, max_tokens=16, ignore_eos=True, seed=seed) for seed in (0, 0, 1)
    ]
    first, repeat, other = (first_ids(llm.generate(prompts, params)) for params in sample)
    assert first == repeat and first != other
    assert first != first_ids(
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    )


def test_n_gives_n_distinct_seeded_completions(llm):
    params = SamplingParams(n=4, temperature=1.5, max_tokens=12, ignore_eos=True, seed=7)
    (output,) = llm.generate("Once", params)
    assert [c.index for c in output.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in output.outputs}) == 4
    (again,) = llm.generate("Once", params)
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in output.outputs]


def test_top_k_1_and_tiny_top_p_reduce_to_greedy(llm):
    prompts = ["greedy?", [9, 10, 11, 12]]
    greedy = first_ids(llm.generate(prompts, GREEDY_LONG))
    for params in (
        SamplingParams(temperature=2.0, top_k=1, max_tokens=24, ignore_eos=True, seed=3),
        SamplingParams(temperature=2.0, top_p=1e-6, max_tokens=24, ignore_eos=True, seed=3),
        SamplingParams(temperature=2.0, min_p=1.0, max_tokens=24, ignore_eos=True, seed=3),
    ):
        assert first_ids(llm.generate(prompts, params)) == greedy


def test_logprobs_are_vllm_shaped(llm):
    (output,) = llm.generate("Hi", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=3))
    completion = output.outputs[0]
    assert len(completion.logprobs) == 5
    for token, entry in zip(completion.token_ids, completion.logprobs):
        assert entry[token].rank == 1 and len(entry) == 3  # greedy: the chosen token is the top one
        assert sorted(e.rank for e in entry.values()) == [1, 2, 3]
        assert all(e.logprob <= 0 and isinstance(e.decoded_token, str) for e in entry.values())
    assert completion.cumulative_logprob == pytest.approx(
        sum(e[t].logprob for t, e in zip(completion.token_ids, completion.logprobs))
    )


def test_stop_strings_truncate_text(llm):
    (full,) = (o.outputs[0] for o in llm.generate("stop here", GREEDY_LONG))
    assert len(full.text) >= 6, full.text
    stop = full.text[4:6]
    cut = full.text.find(stop)
    (stopped,) = (
        o.outputs[0]
        for o in llm.generate(
            "stop here", SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=["\x7f", stop])
        )
    )
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert stopped.text == full.text[:cut]
    assert full.token_ids[: len(stopped.token_ids)] == stopped.token_ids
    assert len(stopped.token_ids) < len(full.token_ids)
    (kept,) = (
        o.outputs[0]
        for o in llm.generate(
            "stop here",
            SamplingParams(
                temperature=0, max_tokens=24, ignore_eos=True, stop=stop, include_stop_str_in_output=True
            ),
        )
    )
    assert kept.text == full.text[: cut + len(stop)]


def test_stop_token_ids_and_min_tokens(llm):
    (full,) = (o.outputs[0] for o in llm.generate([[30, 31, 32]], GREEDY_LONG))
    stop_id = full.token_ids[3]
    first = full.token_ids.index(stop_id)
    (stopped,) = (
        o.outputs[0]
        for o in llm.generate(
            [[30, 31, 32]], SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_id])
        )
    )
    assert stopped.token_ids == full.token_ids[: first + 1]
    assert (stopped.finish_reason, stopped.stop_reason) == ("stop", stop_id)
    assert stopped.text == llm.tokenizer.decode(full.token_ids[:first])
    (late,) = (
        o.outputs[0]
        for o in llm.generate(
            [[30, 31, 32]],
            SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_id], min_tokens=first + 2),
        )
    )
    assert len(late.token_ids) >= first + 2 and stop_id not in late.token_ids[: first + 1]


def test_eos_stops_unless_ignored(llm, checkpoint_dir):
    prompt = [20, 21, 22, 23]
    (full,) = (o.outputs[0] for o in llm.generate([prompt], GREEDY_LONG))
    eos = full.token_ids[6]
    generation_config = checkpoint_dir / "generation_config.json"
    saved = generation_config.read_text()
    generation_config.write_text(json.dumps({**json.loads(saved), "eos_token_id": [2, eos]}))
    try:
        with_eos = LLM(checkpoint_dir, reference=True)
    finally:
        generation_config.write_text(saved)
    assert eos in with_eos.eos_token_ids
    first_eos = next(i for i, t in enumerate(full.token_ids) if t in with_eos.eos_token_ids)
    (stopped,) = (
        o.outputs[0] for o in with_eos.generate([prompt], SamplingParams(temperature=0, max_tokens=24))
    )
    assert (stopped.finish_reason, stopped.stop_reason) == ("stop", None)
    assert stopped.token_ids == full.token_ids[: first_eos + 1]
    (ignored,) = (o.outputs[0] for o in with_eos.generate([prompt], GREEDY_LONG))
    assert ignored.token_ids == full.token_ids and ignored.finish_reason == "length"


def test_generation_config_defaults_apply_unless_switched_off(checkpoint_dir):
    generation_config = checkpoint_dir / "generation_config.json"
    saved = generation_config.read_text()
    generation_config.write_text(
        json.dumps({**json.loads(saved), "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 7})
    )
    try:
        auto = LLM(checkpoint_dir, reference=True)
        plain = LLM(checkpoint_dir, reference=True, generation_config="vllm")
    finally:
        generation_config.write_text(saved)
    defaults = auto.get_default_sampling_params()
    assert (defaults.temperature, defaults.top_p, defaults.max_tokens) == (0.6, 0.9, 7)
    assert plain.get_default_sampling_params() == SamplingParams()
    (output,) = auto.generate("x", None)
    assert len(output.outputs[0].token_ids) <= 7


def test_per_prompt_sampling_params(llm):
    params = [SamplingParams(max_tokens=2, ignore_eos=True), SamplingParams(max_tokens=4, ignore_eos=True)]
    assert [len(ids) for ids in first_ids(llm.generate(["a", "b"], params))] == [2, 4]
    with pytest.raises(UserError):
        llm.generate(["a", "b"], params[:1])


@pytest.mark.parametrize("kwargs", [dict(logit_bias={1: 2.0}), dict(best_of=2), dict(prompt_logprobs=1)])
def test_unsupported_vllm_fields_name_themselves(kwargs):
    with pytest.raises(UserError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)


def test_unsupported_engine_args_name_themselves(checkpoint_dir):
    with pytest.raises(UserError, match="tensor_parallel_size"):
        LLM(checkpoint_dir, tensor_parallel_size=2)
    with pytest.raises(UserError, match="quantizatio"):
        LLM(checkpoint_dir, quantizatio="awq")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_tokens=0),
        dict(max_tokens=-3),
        dict(max_tokens=2.5),
        dict(temperature=-0.1),
        dict(temperature=float("nan")),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=-2),
        dict(seed="7"),
        dict(stop=""),
        dict(stop=["ok", 3]),
        dict(n=0),
        dict(min_p=1.5),
        dict(presence_penalty=3),
        dict(repetition_penalty=0),
        dict(min_tokens=20, max_tokens=4),
        dict(logprobs=21),
        dict(stop_token_ids=[-1]),
    ],
)
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

"""Prompts JSONL parsing and validation, and the resumable output writer (runtime.jobio), without a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.errors import UserError
from runtime.jobio import (
    JobIdentity,
    JobOutput,
    ParseContext,
    check_output_writable,
    iter_requests,
    scan_input,
    state_path,
)
from runtime.jobio.writer import read_done_keys, truncate_torn_tail
from runtime.sampling import GenerationState


class WordTokenizer:
    """One id per word (its length, offset so ids stay in a 100-token vocabulary)."""

    def __init__(self, chat_template: str | None = "{{ messages }}"):
        self.chat_template = chat_template

    def encode(self, text: str) -> list[int]:
        return [10 + min(len(word), 80) for word in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(chr(96 + i % 26) for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        text = " ".join(f"<{m['role']}> {m['content']}" for m in messages) + " <assistant>"
        return self.encode(text) if tokenize else text


CONTEXT = ParseContext(tokenizer=WordTokenizer(), max_context=32, vocab_size=100, default_max_tokens=8)


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def finished(request, token_ids: list[int], finish_reason: str) -> GenerationState:
    state = GenerationState(request.prompt_token_ids, request.sampling, frozenset(), WordTokenizer().decode)
    state.token_ids, state.finish_reason = list(token_ids), finish_reason
    return state


def requests_of(tmp_path: Path, lines: list, context: ParseContext = CONTEXT):
    path = write_lines(tmp_path / "in.jsonl", lines)
    scan = scan_input(path, context)
    return scan, list(iter_requests(path, context, scan))


# ---- input forms -------------------------------------------------------------------------------------
def test_native_forms_and_defaults(tmp_path):
    scan, reqs = requests_of(
        tmp_path,
        [
            {
                "id": "a",
                "prompt": "hello big world",
                "max_tokens": 4,
                "temperature": 0.7,
                "top_p": 0.9,
                "top_k": 5,
                "seed": 3,
                "stop": ["\n"],
                "ignore_eos": True,
            },
            {"prompt_token_ids": [1, 2, 3]},
            {"id": 7, "messages": [{"role": "user", "content": "hi there"}]},
        ],
    )
    assert [r.id for r in reqs] == ["a", 2, 7]
    assert reqs[0].prompt_token_ids == [15, 13, 15]
    p = reqs[0].sampling
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed, p.stop, p.ignore_eos) == (
        4,
        0.7,
        0.9,
        5,
        3,
        ["\n"],
        True,
    )
    assert reqs[1].prompt_token_ids == [1, 2, 3] and reqs[1].sampling.max_tokens == 8
    assert reqs[2].prompt_token_ids == WordTokenizer().encode("<user> hi there <assistant>")
    assert scan.num_requests == 3 and scan.prompt_tokens == 3 + 3 + 4 and not scan.skipped
    assert len({r.key for r in reqs}) == 3


def test_max_tokens_capped_to_context(tmp_path):
    _, reqs = requests_of(tmp_path, [{"prompt_token_ids": [1] * 30, "max_tokens": 100}])
    assert reqs[0].sampling.max_tokens == 2


def test_batch_api_forms(tmp_path):
    _, reqs = requests_of(
        tmp_path,
        [
            {
                "custom_id": "r1",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": "m", "prompt": "one two", "max_tokens": 5, "temperature": 0},
            },
            {"custom_id": "r2", "method": "POST", "url": "/v1/completions", "body": {"prompt": [4, 5]}},
            {
                "custom_id": "r3",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "messages": [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    ],
                    "max_completion_tokens": 6,
                    "n": 1,
                },
            },
        ],
    )
    assert [(r.id, r.api) for r in reqs] == [
        ("r1", "completions"),
        ("r2", "completions"),
        ("r3", "chat.completions"),
    ]
    assert reqs[0].sampling.max_tokens == 5 and reqs[1].prompt_token_ids == [4, 5]
    assert reqs[2].sampling.max_tokens == 6


# ---- validation errors ---------------------------------------------------------------------------------
BAD_LINES = [
    ('{"id": 1, "prompt": "x"', "malformed JSON"),
    ({"id": 1, "prompt": "x", "temprature": 1}, "unknown field 'temprature'"),
    ({"id": 1, "prompt": ""}, "empty prompt"),
    ({"id": 1, "prompt_token_ids": []}, "empty prompt"),
    ({"id": 1, "messages": []}, "empty prompt"),
    ({"id": 1, "prompt_token_ids": [1] * 32}, "does not fit the model's context of 32"),
    ({"id": 1, "prompt": "x", "max_tokens": 0}, "max_tokens=0"),
    ({"id": 1, "prompt": "x", "max_tokens": -3}, "max_tokens=-3"),
    ({"id": 1, "prompt": "x", "temperature": "hot"}, "temperature"),
    ({"id": 1, "prompt": "x", "top_k": 1.5}, "top_k"),
    ({"id": [1], "prompt": "x"}, "id must be a string or an integer"),
    ({"id": 1, "prompt": 5}, "prompt must be a string"),
    ({"id": 1, "prompt": [1, "x"]}, "list of integer token ids"),
    ({"id": 1, "prompt_token_ids": [1, "2"]}, "list of integer token ids"),
    ({"id": 1, "prompt_token_ids": [100]}, "outside the vocabulary"),
    ({"id": 1}, "no prompt"),
    ({"id": 1, "prompt": "x", "prompt_token_ids": [1]}, "several prompt fields"),
    ([1, 2], "must be a JSON object"),
    ({"custom_id": "c", "url": "/v1/embeddings", "body": {"prompt": "x"}}, "not a supported endpoint"),
    ({"custom_id": "c", "url": "/v1/completions", "body": {"prompt": "x", "n": 0}}, "n=0"),
    ({"custom_id": "c", "url": "/v1/completions", "body": {"prompt": "x", "logprobs": 9}}, "logprobs=9"),
    ({"custom_id": "c", "url": "/v1/completions", "body": {"prompt": "x", "logit_bias": {}}}, "logit_bias"),
    ({"custom_id": "c", "url": "/v1/completions", "body": {"prompt": "x", "echo": True}}, "echo"),
    (
        {
            "custom_id": "c",
            "url": "/v1/chat/completions",
            "body": {
                "messages": [{"role": "user", "content": "q"}],
                "response_format": {"type": "json_object"},
            },
        },
        "response_format",
    ),
    (
        {
            "custom_id": "c",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "q"}], "top_logprobs": 2},
        },
        "logprobs = true",
    ),
    ({"id": 1, "prompt": "x", "presence_penalty": 5}, "presence_penalty"),
    ({"custom_id": "c", "url": "/v1/completions", "body": {"prompt": ["a", "b"]}}, "several prompts"),
    ({"custom_id": 5, "url": "/v1/completions", "body": {"prompt": "x"}}, "custom_id"),
]


@pytest.mark.parametrize("line,message", BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_each_bad_line_names_line_and_cause(tmp_path, line, message):
    path = write_lines(tmp_path / "in.jsonl", [{"id": "ok", "prompt": "fine"}, line])
    with pytest.raises(UserError) as err:
        scan_input(path, CONTEXT)
    assert "line 2" in str(err.value) and message in str(err.value)
    assert err.value.fix


def test_duplicate_ids(tmp_path):
    path = write_lines(
        tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, {"prompt": "y"}, {"id": "a", "prompt": "z"}]
    )
    with pytest.raises(UserError, match=r"line 3: duplicate id 'a' \(first on line 1\)"):
        scan_input(path, CONTEXT)


def test_chat_without_template_and_text_without_tokenizer(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(UserError, match="chat template"):
        scan_input(path, ParseContext(WordTokenizer(chat_template=None), 32, 100))
    path = write_lines(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    with pytest.raises(UserError, match="no tokenizer.json"):
        scan_input(path, ParseContext(None, 32, 100))


def test_empty_file_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="no valid prompts"):
        scan_input(write_lines(tmp_path / "in.jsonl", ["", "  "]), CONTEXT)
    with pytest.raises(UserError, match="does not exist"):
        scan_input(tmp_path / "missing.jsonl", CONTEXT)


def test_on_error_skip_collects_bad_lines(tmp_path):
    path = write_lines(
        tmp_path / "in.jsonl",
        [
            {"id": 1, "prompt": "a b"},
            "{not json",
            {"id": 3, "prompt": ""},
            {"id": 1, "prompt": "dup"},
            "",
            {"id": 6, "prompt": "c"},
        ],
    )
    scan = scan_input(path, CONTEXT, on_error="skip")
    assert [s.line_number for s in scan.skipped] == [2, 3, 4]
    assert "malformed JSON" in scan.skipped[0].reason and "duplicate id 1" in scan.skipped[2].reason
    assert [r.id for r in iter_requests(path, CONTEXT, scan)] == [1, 6]
    assert scan.num_requests == 2 and scan.num_lines == 6


def test_input_hash_tracks_content(tmp_path):
    a = scan_input(write_lines(tmp_path / "a.jsonl", [{"prompt": "x"}]), CONTEXT)
    b = scan_input(write_lines(tmp_path / "b.jsonl", [{"prompt": "y"}]), CONTEXT)
    c = scan_input(write_lines(tmp_path / "c.jsonl", [{"prompt": "x"}]), CONTEXT)
    assert a.sha256 != b.sha256 and a.sha256 == c.sha256


# ---- writer ------------------------------------------------------------------------------------------------
def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writer_records_and_state(tmp_path):
    scan, reqs = requests_of(
        tmp_path,
        [
            {"id": "n", "prompt": "a b"},
            {
                "custom_id": "c",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": "q"}]},
            },
        ],
    )
    out = tmp_path / "out.jsonl"
    identity = JobIdentity(scan.sha256, "plan-hash", scan.num_requests)
    with JobOutput.open(out, identity, model_name="tiny") as job:
        job.write(reqs[0], [finished(reqs[0], [1, 2], "length")])
        job.write(reqs[1], [finished(reqs[1], [3], "stop")])
        with pytest.raises(RuntimeError):
            job.write(reqs[0], [finished(reqs[0], [1], "stop")])
    native, batch = lines_of(out)
    assert native == {
        "id": "n",
        "text": "a b",
        "token_ids": [1, 2],
        "finish_reason": "length",
        "stop_reason": None,
        "prompt_tokens": 2,
        "completion_tokens": 2,
    }
    assert batch["custom_id"] == "c" and batch["error"] is None
    body = batch["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "c", "refusal": None}
    assert body["id"].startswith("chatcmpl-") and batch["id"].startswith("batch_req_")
    assert body["usage"] == {
        "prompt_tokens": len(reqs[1].prompt_token_ids),
        "completion_tokens": 1,
        "total_tokens": len(reqs[1].prompt_token_ids) + 1,
    }
    state = json.loads(state_path(out).read_text())
    assert state["done"] == 2 and state["complete"] and state["input_sha256"] == scan.sha256


def test_resume_after_torn_line_answers_each_id_once(tmp_path):
    scan, reqs = requests_of(tmp_path, [{"id": i, "prompt": "w " * (i + 1)} for i in range(10)])
    out = tmp_path / "out.jsonl"
    identity = JobIdentity(scan.sha256, "p", scan.num_requests)
    job = JobOutput.open(out, identity)
    for r in reqs[:4]:
        job.write(r, [finished(r, [1], "length")])
    job.sync()
    with out.open("ab") as f:  # the process died inside its fifth write
        f.write(b'{"id": 4, "text": "x", "tok')
    del job  # no close: a crash

    job = JobOutput.open(out, identity)
    assert job.done_keys == {r.key for r in reqs[:4]} and job.resumed_count == 4
    todo = list(iter_requests(tmp_path / "in.jsonl", CONTEXT, scan, skip_keys=job.done_keys))
    assert [r.id for r in todo] == list(range(4, 10))
    for r in todo:
        job.write(r, [finished(r, [2], "stop")])
    job.close()
    ids = [line["id"] for line in lines_of(out)]
    assert sorted(ids) == list(range(10)) and len(ids) == 10
    assert json.loads(state_path(out).read_text())["complete"] is True


def test_truncate_torn_tail(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a\nbb\ncc")
    assert truncate_torn_tail(path) == 2 and path.read_bytes() == b"a\nbb\n"
    assert truncate_torn_tail(path) == 0
    path.write_bytes(b"x" * 200_000)
    assert truncate_torn_tail(path) == 200_000 and path.read_bytes() == b""


def test_other_job_output_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    JobOutput.open(out, JobIdentity("in-a", "plan-a", 1)).close()
    out.write_text('{"id": 1, "text": ""}\n')
    with pytest.raises(UserError, match="different input file.*\n.*--overwrite"):
        JobOutput.open(out, JobIdentity("in-b", "plan-a", 1))
    with pytest.raises(UserError, match="different plan"):
        JobOutput.open(out, JobIdentity("in-a", "plan-b", 1))
    job = JobOutput.open(out, JobIdentity("in-b", "plan-b", 1), overwrite=True)
    assert job.num_done == 0 and out.read_bytes() == b""
    job.close()
    state_path(out).unlink()
    out.write_text("not mine\n")
    with pytest.raises(UserError, match="no readable job state"):
        JobOutput.open(out, JobIdentity("in-b", "plan-b", 1))


def test_corrupt_or_repeated_output_lines_are_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(UserError, match="line 2, is not an output line"):
        read_done_keys(out)
    out.write_text('{"id": 1}\n{"id": 1}\n')
    with pytest.raises(UserError, match="line 2, answers"):
        read_done_keys(out)


def test_output_path_checks_create_nothing(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        check_output_writable(tmp_path / "missing" / "out.jsonl")
    with pytest.raises(UserError, match="is a directory"):
        check_output_writable(tmp_path)
    check_output_writable(tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


# ---- fuzzing: any JSON value is a request or a clean line error -----------------------------------------------
def _fuzz_strategies():
    from hypothesis import strategies as st

    from planner.prompts_file import BATCH_FIELDS, NATIVE_SAMPLING_FIELDS, PROMPT_FIELDS

    scalars = (
        st.none() | st.booleans() | st.integers(-5, 120) | st.floats(allow_nan=True) | st.text(max_size=12)
    )
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.dictionaries(
                st.sampled_from(["role", "content", "prompt", "messages", "type", "text", "max_tokens", "n"]),
                inner,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
    keys = st.sampled_from(
        ("id",)
        + PROMPT_FIELDS
        + NATIVE_SAMPLING_FIELDS
        + BATCH_FIELDS
        + ("max_completion_tokens", "model", "extra", "top_logprobs", "response_format")
    )
    urls = st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/other"])
    lines = st.dictionaries(keys, values | urls, max_size=6) | values
    return lines


def test_fuzzed_lines_parse_or_fail_cleanly():
    import os

    from hypothesis import given, settings

    from runtime.jobio import LineError, parse_line

    @settings(
        max_examples=int(os.environ.get("MOELENS_FUZZ_EXAMPLES", "400")), deadline=None, derandomize=True
    )
    @given(_fuzz_strategies())
    def check(obj):
        try:
            request = parse_line(obj, 1, CONTEXT)
        except LineError as err:
            assert err.cause and err.fix
            return
        assert 0 < len(request.prompt_token_ids) < CONTEXT.max_context
        assert 1 <= request.sampling.max_tokens <= CONTEXT.max_context - len(request.prompt_token_ids)

    check()

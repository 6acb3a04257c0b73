"""`runtime run-batch`: one command plans for this machine and runs an OpenAI Batch file; every input line gets
exactly one output line, validated against the `openai` package's typed models (a test-only dependency)."""

from __future__ import annotations

import json

import pytest

from planner.specs.spec import ModelSpec
from runtime.checkpoint.writer import write_random_checkpoint
from runtime.cli import main

openai_types = pytest.importorskip("openai.types")
from openai.types import BatchError, Completion  # noqa: E402
from openai.types.chat import ChatCompletion  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TINY = ModelSpec(
    name="tiny-mixtral",
    family="mixtral",
    num_layers=2,
    hidden_size=128,
    num_heads=2,
    num_kv_heads=1,
    head_dim=64,
    vocab_size=512,
    num_experts=4,
    top_k=2,
    moe_intermediate_size=64,
    max_position_embeddings=96,
)


def chat(custom_id: str, content: str, **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "tiny", "messages": [{"role": "user", "content": content}], **body},
    }


LINES = [
    chat("plain", "Hello there", max_completion_tokens=6),
    chat("greedy-logprobs", "Tell me", temperature=0, max_tokens=5, logprobs=True, top_logprobs=3),
    chat("two", "Two answers", n=2, seed=11, max_completion_tokens=4),
    chat("penalties", "Again and again", presence_penalty=1.5, frequency_penalty=0.5, max_tokens=6),
    chat("stop", "Stop soon", stop=["e", " "], max_tokens=8, response_format={"type": "text"}),
    chat("vllm-extras", "Extras", top_k=5, min_p=0.05, repetition_penalty=1.2, min_tokens=2, max_tokens=5),
    chat("too-long", "word " * 200),
]


@pytest.fixture(scope="module")
def job(tmp_path_factory, machine_profiles_dir):
    root = tmp_path_factory.mktemp("run-batch")
    write_random_checkpoint(TINY, root / "ckpt", dtype="fp32", seed=2)
    (root / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in LINES))
    return root


def run_batch(root, model, monkeypatch, machine_profiles_dir) -> list[dict]:
    monkeypatch.setenv("MOELENS_PROFILES_DIR", str(machine_profiles_dir))
    code = main(
        [
            "run-batch",
            "-i",
            str(root / "in.jsonl"),
            "-o",
            str(root / "out.jsonl"),
            "--model",
            str(model),
            "--quiet",
        ]
    )
    assert code == 0
    return [json.loads(line) for line in (root / "out.jsonl").read_text().splitlines()]


def test_every_line_gets_one_openai_batch_record(job, monkeypatch, machine_profiles_dir):
    records = run_batch(job, job / "ckpt", monkeypatch, machine_profiles_dir)
    assert len(records) == 7
    by_id = {r["custom_id"]: r for r in records}
    assert set(by_id) == {line["custom_id"] for line in LINES}
    assert len({r["id"] for r in records}) == 7
    error = by_id.pop("too-long")
    assert set(error) == {"id", "custom_id", "response", "error"} and error["response"] is None
    BatchError.model_validate(error["error"])
    assert "does not fit" in error["error"]["message"] and error["error"]["line"] == 7
    bodies = {}
    for custom_id, record in by_id.items():
        assert set(record) == {"id", "custom_id", "response", "error"} and record["error"] is None
        assert record["response"]["status_code"] == 200
        body = ChatCompletion.model_validate(record["response"]["body"])
        assert body.object == "chat.completion" and body.id.startswith("chatcmpl-")
        assert body.usage.completion_tokens == sum(
            len(c["token_ids"]) for c in record["response"]["body"]["choices"]
        )
        bodies[custom_id] = body
    assert len({b.id for b in bodies.values()}) == 6
    assert [c.index for c in bodies["two"].choices] == [0, 1]
    logprobs = bodies["greedy-logprobs"].choices[0].logprobs.content
    assert len(logprobs) == bodies["greedy-logprobs"].usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == t.logprob for t in logprobs)
    assert bodies["plain"].choices[0].logprobs is None
    stopped = bodies["stop"].choices[0]
    assert stopped.finish_reason == "length" or (
        "e" not in stopped.message.content and " " not in stopped.message.content
    )
    assert bodies["vllm-extras"].usage.completion_tokens >= 2


def test_a_rerun_resumes_and_writes_nothing_twice(job, monkeypatch, machine_profiles_dir):
    first = (job / "out.jsonl").read_text()
    records = run_batch(job, job / "ckpt", monkeypatch, machine_profiles_dir)
    assert (job / "out.jsonl").read_text() == first and len(records) == 7


def test_completions_bodies_validate(tmp_path, job, monkeypatch, machine_profiles_dir):
    lines = [
        {
            "custom_id": "c1",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": "Once upon", "max_tokens": 4, "logprobs": 2, "seed": 3},
        },
        {
            "custom_id": "c2",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": [5, 6, 7], "max_tokens": 3, "logit_bias": {"5": 1}},
        },
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = run_batch(tmp_path, job / "ckpt", monkeypatch, machine_profiles_dir)
    by_id = {r["custom_id"]: r for r in records}
    body = Completion.model_validate(by_id["c1"]["response"]["body"])
    assert body.object == "text_completion" and body.id.startswith("cmpl-")
    assert len(body.choices[0].logprobs.tokens) == body.usage.completion_tokens
    assert "logit_bias" in by_id["c2"]["error"]["message"]

"""Resume after SIGKILL: a real `python -m runtime execute` is killed at several points and rerun with the
same command until it completes; the job must end with every prompt answered exactly once, no torn line,
and greedy answers identical to an uninterrupted run.

Kill points are found by watching the output grow (no hooks in the product): as soon as the job-state
file appears (the checks passed, the engine is loading), after 2 answers (decode steps with refill prefills
interleaved: 4 sequences in flight, 16 prompts of different lengths), and after 7 answers with half a line
appended afterwards, which is what a kill inside a write leaves behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

NUM_PROMPTS = 16
IN_FLIGHT = 4


def prompts() -> list[dict]:
    return [{"id": f"p{i}", "prompt": f"Prompt number {i}: " + "tell me more " * (i % 4),
             "max_tokens": 4 + (5 * i) % 9, "ignore_eos": True} for i in range(NUM_PROMPTS)]


def complete_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def answers_by_id(path: Path) -> dict[str, list[int]]:
    answers = {}
    for record in complete_lines(path):
        assert record["id"] not in answers, f"{record['id']} answered twice"
        answers[record["id"]] = record["token_ids"]
    return answers


def run_until(job, args: list[str], stop: Callable[[], bool], log: Path) -> int:
    """Run the CLI; SIGKILL it as soon as `stop()` holds. Returns the exit status (-9 when killed)."""
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "runtime", *args], env=job.env, cwd=job.root,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        while process.poll() is None:
            if stop():
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        return process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.fixture(scope="module")
def resume_job(tiny_job, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    plan = yaml.safe_load(tiny_job.plan.read_text())
    plan.update(num_seqs=IN_FLIGHT, attn_batch=IN_FLIGHT)
    (root / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    (root / "in.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts()))
    return root


def execute_args(tiny_job, root: Path, output: str) -> list[str]:
    return tiny_job.execute_args(root / "in.jsonl", root / output, plan=root / "plan.yaml")


@pytest.fixture(scope="module")
def uninterrupted(tiny_job, resume_job) -> dict[str, list[int]]:
    args = execute_args(tiny_job, resume_job, "whole.jsonl")
    assert run_until(tiny_job, args, lambda: False, resume_job / "whole.log") == 0, \
        (resume_job / "whole.log").read_text()
    answers = answers_by_id(resume_job / "whole.jsonl")
    assert sorted(answers) == sorted(p["id"] for p in prompts())
    return answers


def test_killed_job_resumes_to_the_same_answers(tiny_job, resume_job, uninterrupted):
    output = resume_job / "killed.jsonl"
    state = output.with_name(output.name + ".state.json")
    args = execute_args(tiny_job, resume_job, "killed.jsonl")
    kill_points = [
        ("engine loading", lambda: state.exists(), False),
        ("after 2 answers", lambda: len(complete_lines(output)) >= 2, False),
        ("after 7 answers, inside a write", lambda: len(complete_lines(output)) >= 7, True),
    ]
    for i, (name, stop, torn) in enumerate(kill_points):
        status = run_until(tiny_job, args, stop, resume_job / f"killed{i}.log")
        assert status == -signal.SIGKILL, f"{name}: the job was not killed (status {status})"
        done = answers_by_id(output)              # no duplicates so far
        assert set(done) <= set(uninterrupted), name
        if torn:
            with output.open("ab") as f:
                f.write(b'{"id": "p15", "text": "half a li')
    status = run_until(tiny_job, args, lambda: False, resume_job / "final.log")
    assert status == 0, (resume_job / "final.log").read_text()
    assert output.read_bytes().endswith(b"\n")
    assert answers_by_id(output) == uninterrupted
    job_state = json.loads(state.read_text())
    assert job_state["complete"] and job_state["done"] == NUM_PROMPTS
    status = run_until(tiny_job, args, lambda: False, resume_job / "again.log")   # nothing left to do
    assert status == 0 and answers_by_id(output) == uninterrupted

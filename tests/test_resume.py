"""Resume after SIGKILL: a real `python -m runtime execute` is killed at several points and rerun with the
same command until it completes; the job must end with every prompt answered exactly once, no torn line,
and greedy answers identical to an uninterrupted run.

Kill points are found by watching the output grow (no hooks in the product): as soon as the job-state
file appears (the checks passed, the engine is loading), after 2 answers (decode steps with refill prefills
interleaved: 4 sequences in flight, 16 prompts of different lengths), and after 7 answers with half a line
appended afterwards, which is what a kill inside a write leaves behind.

Also here, on the same job and its uninterrupted run: the seeded fault campaign's quick mode (5 SIGKILLs at
random instants of startup, loading, decode and writes; `bench.bench_faults` runs 50), SIGTERM (stops like
Ctrl-C: exit 143, every finished answer kept, a resume hint; the rerun completes) and a file-size limit
(RLIMIT_FSIZE, the disk-full path: a clear error, nothing lost, the rerun completes).
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bench.bench_faults import (
    FaultJob,
    answers_by_id,
    complete_lines,
    prompt_lines,
    reference_run,
    run_campaign,
)

NUM_PROMPTS = 16
IN_FLIGHT = 4
QUICK_CASES = 5


def prompts() -> list[dict]:
    return prompt_lines(NUM_PROMPTS)


def run_until(job, args: list[str], stop: Callable[[], bool], log: Path) -> int:
    """Run the CLI; SIGKILL it as soon as `stop()` holds. Returns the exit status (-9 when killed)."""
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime", *args],
            env=job.env,
            cwd=job.root,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
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
def fault_job(tiny_job, resume_job) -> FaultJob:
    return FaultJob(
        argv=lambda output: execute_args(tiny_job, resume_job, output.name),
        env=tiny_job.env,
        cwd=tiny_job.root,
        scratch=resume_job,
        prompt_ids=tuple(p["id"] for p in prompts()),
    )


@pytest.fixture(scope="module")
def reference(fault_job):
    """The uninterrupted run: answers by id (every prompt once) and its timeline."""
    return reference_run(fault_job)


@pytest.fixture(scope="module")
def uninterrupted(reference) -> dict[str, list[int]]:
    return reference[0]


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
        done = answers_by_id(output)  # no duplicates so far
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
    status = run_until(tiny_job, args, lambda: False, resume_job / "again.log")  # nothing left to do
    assert status == 0 and answers_by_id(output) == uninterrupted


def test_fault_campaign_quick(fault_job, reference):
    result = run_campaign(fault_job, QUICK_CASES, seed=0, reference=reference)
    assert result["passed"] == QUICK_CASES  # each case asserts exactly-once and equal greedy answers
    assert result["killed"] >= QUICK_CASES - 2, result  # nearly every instant lands before the run ends


def wait_for_answers(process: subprocess.Popen, output: Path, count: int) -> None:
    while process.poll() is None and len(complete_lines(output)) < count:
        time.sleep(0.005)


def test_sigterm_stops_like_ctrl_c_and_the_rerun_completes(tiny_job, resume_job, uninterrupted):
    output = resume_job / "terminated.jsonl"
    args = execute_args(tiny_job, resume_job, output.name)
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime", *args],
        env=tiny_job.env,
        cwd=tiny_job.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_answers(process, output, 2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "terminated" in err and "rerun the same command to resume" in err, err
    done = answers_by_id(output)
    assert 2 <= len(done) < NUM_PROMPTS and all(uninterrupted[k] == v for k, v in done.items())
    assert f"{len(done)} of {NUM_PROMPTS} requests are answered" in err
    assert json.loads(output.with_name(output.name + ".state.json").read_text())["done"] == len(
        done
    )  # synced
    assert run_until(tiny_job, args, lambda: False, resume_job / "terminated-rerun.log") == 0
    assert answers_by_id(output) == uninterrupted


def test_file_size_limit_mid_run_keeps_every_answer_and_resumes(tiny_job, resume_job, uninterrupted):
    output = resume_job / "limited.jsonl"
    limit = len((resume_job / "reference.jsonl").read_bytes()) // 2  # about half the answers fit

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    args = execute_args(tiny_job, resume_job, output.name)
    result = subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        cwd=tiny_job.root,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
        env=dict(tiny_job.env, PYTHONDONTWRITEBYTECODE="1"),
    )
    err = result.stderr
    assert result.returncode == 2, err
    assert "Traceback" not in err and err.count("error:") == 1, err
    assert "file-size limit" in err and "are kept" in err and "rerun the same command" in err, err
    data = output.read_bytes()
    assert len(data) <= limit and data.endswith(b"\n")  # the partial line was cut off
    done = answers_by_id(output)
    assert 0 < len(done) < NUM_PROMPTS and all(uninterrupted[k] == v for k, v in done.items())
    assert f"({len(done)} of {NUM_PROMPTS})" in err
    assert run_until(tiny_job, args, lambda: False, resume_job / "limited-rerun.log") == 0
    assert answers_by_id(output) == uninterrupted

"""`runtime execute --workers N` on a local Ray cluster (2 CPUs, one per worker; one cluster for the module).

A 2-layer qwen3-mini (fp32) answers 200 prompts: through 2 engine actors every prompt exactly once with the
greedy answers of a single-process `execute`; with one worker SIGKILLed mid-run (Ray restarts it and reruns
its batch); with the driver SIGKILLed mid-run and the same command run again (it resumes, nothing twice).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from runtime.commands.execute import ExecuteOptions, execute_job
from tests.conftest import REPO_ROOT, relabelled_profile_for_this_machine

ray = pytest.importorskip("ray")

NUM_PROMPTS = 200
NUM_KILL_PROMPTS = 80  # the kill tests answer the first 80 prompts


def prompt_line(i: int) -> dict:
    return {
        "id": f"p{i}",
        "prompt": f"Prompt {i}: " + "tell me more " * (i % 5),
        "max_tokens": 2 + i % 4,
        "ignore_eos": True,
    }


def answers(path: Path) -> dict[str, list[int]]:
    data = path.read_bytes() if path.exists() else b""
    found: dict[str, list[int]] = {}
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        record = json.loads(line)
        assert record["id"] not in found, f"{record['id']} answered twice"
        found[record["id"]] = record["token_ids"]
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(root, plan, checkpoint, env, single-process answers) with a 2-CPU Ray cluster running."""
    from planner.hardware.profile import find_profile_for_this_machine
    from planner.perf.memory import Budgets
    from planner.plans.build import make_plan
    from planner.plans.workload import Workload
    from planner.specs.spec import load_spec

    root = tmp_path_factory.mktemp("cluster")
    relabelled_profile_for_this_machine(root / "profiles")
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
        MOELENS_PROFILES_DIR=str(root / "profiles"),
        OMP_WAIT_POLICY="PASSIVE",
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "make-checkpoint",
            "--model",
            "qwen3-mini",
            "--layers",
            "2",
            "--dtype",
            "fp32",
            "--out",
            str(root / "ckpt"),
            "--quiet",
        ],
        env=env,
        check=True,
        timeout=300,
    )
    for name, count in (("prompts.jsonl", NUM_PROMPTS), ("kill.jsonl", NUM_KILL_PROMPTS)):
        (root / name).write_text("".join(json.dumps(prompt_line(i)) + "\n" for i in range(count)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOELENS_PROFILES_DIR", env["MOELENS_PROFILES_DIR"])
        here = find_profile_for_this_machine()
        one_core = replace(here, machine=replace(here.machine, cores=1))  # each worker has one CPU
        plan = make_plan(
            load_spec(root / "ckpt"),
            one_core,
            Workload.fixed(16, 4, NUM_PROMPTS),
            Budgets.from_args(one_core, 0.002),
            model_ref=str(root / "ckpt"),
            profile_ref=here.name,
        )
        plan_path = plan.save(root / "plan.yaml")
        execute_job(
            ExecuteOptions(
                plan=plan_path, input=root / "prompts.jsonl", output=root / "single.jsonl", quiet=True
            )
        )
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            runtime_env={
                "env_vars": {k: env[k] for k in ("PYTHONPATH", "MOELENS_PROFILES_DIR", "OMP_WAIT_POLICY")}
            },
        )
        try:
            yield root, plan_path, env, answers(root / "single.jsonl")
        finally:
            ray.shutdown()


def cluster_options(root: Path, plan: Path, output: str, input: str = "prompts.jsonl") -> ExecuteOptions:
    return ExecuteOptions(
        plan=plan,
        input=root / input,
        output=root / output,
        report=root / f"{output}.report.json",
        quiet=True,
        workers=2,
    )


def test_two_workers_answer_every_prompt_once_as_one_process_does(cluster):
    root, plan, _, single = cluster
    assert len(single) == NUM_PROMPTS
    report = execute_job(cluster_options(root, plan, "two.jsonl"))
    assert answers(root / "two.jsonl") == single
    workers = report["workers"]
    assert len(workers) == 2 and sum(w["requests"] for w in workers) == NUM_PROMPTS
    assert all(w["plan_source"] == "given" and w["threads"] == 1 and w["achieved_tok_s"] > 0 for w in workers)
    assert report["total"]["generated_tok_s"]["predicted"] == pytest.approx(
        sum(w["predicted_tok_s"] for w in workers)
    )
    assert json.loads((root / "two.jsonl.report.json").read_text())["num_requests"] == NUM_PROMPTS


def _engine_worker_pids() -> list[int]:
    import psutil

    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "EngineWorker" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def test_a_killed_worker_is_restarted_and_every_prompt_answered_once(cluster):
    root, plan, _, single = cluster
    result: dict = {}
    options = cluster_options(root, plan, "kill-worker.jsonl", input="kill.jsonl")
    job = threading.Thread(target=lambda: result.update(report=execute_job(options)))
    job.start()
    deadline = time.monotonic() + 120
    while len(answers(root / "kill-worker.jsonl")) < 5 and job.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = _engine_worker_pids()
    assert len(answers(root / "kill-worker.jsonl")) < NUM_KILL_PROMPTS and pids, (
        "the job ended before the kill"
    )
    os.kill(pids[0], signal.SIGKILL)
    job.join(timeout=300)
    assert answers(root / "kill-worker.jsonl") == {f"p{i}": single[f"p{i}"] for i in range(NUM_KILL_PROMPTS)}
    assert pids[0] not in _engine_worker_pids() and result["report"]["num_requests"] == NUM_KILL_PROMPTS


def test_a_killed_driver_resumes_on_rerun_with_nothing_answered_twice(cluster):
    root, plan, env, single = cluster
    address = ray.get_runtime_context().gcs_address
    env = dict(
        env, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled")
    )  # a cluster with a token wants it
    args = [
        sys.executable,
        "-m",
        "runtime",
        "execute",
        str(plan),
        "--input",
        str(root / "kill.jsonl"),
        "--output",
        str(root / "driver.jsonl"),
        "--quiet",
        "--workers",
        "2",
        "--ray-address",
        address,
    ]
    driver = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not answers(root / "driver.jsonl") and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    written = len(answers(root / "driver.jsonl"))
    assert 0 < written < NUM_KILL_PROMPTS, (
        f"kill missed the run ({written} answers): {driver.stderr.read()[-2000:]}"
    )
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert answers(root / "driver.jsonl") == {f"p{i}": single[f"p{i}"] for i in range(NUM_KILL_PROMPTS)}


def test_the_processor_maps_a_dataset_of_requests_to_completions(cluster):
    from runtime.cluster.processor import ProcessorConfig, build_processor

    root, plan, _, single = cluster
    rows = [{"question": f"p{i}", "line": prompt_line(i)} for i in range(12)]
    processor = build_processor(
        ProcessorConfig(plan=plan, concurrency=2, batch_size=4),
        preprocess=lambda row: {**row["line"], "id": row["question"]},
        postprocess=lambda row: {
            "question": row["id"],
            "tokens": row["token_ids"],
            "finish": row["finish_reason"],
        },
    )
    out = processor(ray.data.from_items(rows)).take_all()
    assert sorted(r["question"] for r in out) == [
        r["question"] for r in sorted(rows, key=lambda r: r["question"])
    ]
    assert all(list(r["tokens"]) == single[r["question"]] and r["finish"] == "length" for r in out)

"""`runtime execute` end to end on a tiny random Mixtral: outputs, report, resume, and every early refusal.

One checkpoint, one profile "of this machine" (a datasheet profile relabelled, in a temporary profiles dir)
and one plan are shared; the engine runs twice (a whole job, then a resumed one), every other test stops
before the engine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from planner.hardware.profile import load_profile
from planner.hardware.this_machine import this_machine
from planner.perf.memory import Budgets
from planner.plans.build import make_plan
from planner.plans.workload import Workload
from planner.specs.spec import ModelSpec
from runtime.checkpoint import open_checkpoint
from runtime.checkpoint.writer import write_random_checkpoint
from runtime.cli import main
from runtime.jobio import state_path

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
    max_position_embeddings=64,
)
LINES = [
    {"id": "text", "prompt": "Hello there, how are you?", "max_tokens": 6, "ignore_eos": True},
    {"prompt_token_ids": [1, 5, 9, 200], "max_tokens": 5, "ignore_eos": True, "temperature": 0},
    {
        "id": "chat",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 4,
        "temperature": 0.8,
        "seed": 1,
    },
    "{broken json",
    {
        "custom_id": "b1",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 5, "ignore_eos": True},
    },
    {
        "custom_id": "b2",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "Why?"}], "max_completion_tokens": 3},
    },
    {"id": 7, "prompt_token_ids": [3, 4], "max_tokens": 4, "ignore_eos": True, "temperature": 0},
]
NUM_VALID = len(LINES) - 1


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("execute")
    write_random_checkpoint(TINY, root / "ckpt", dtype="fp32", seed=3)
    checkpoint = open_checkpoint(root / "ckpt")
    base = load_profile("a5000-epyc7453")
    here = this_machine()
    profile = replace(
        base,
        name=here.profile_name,
        links=None,
        machine=replace(
            base.machine,
            cpu=here.cpu,
            cores=here.cores,
            device=here.device,
            device_memory_gib=0,
            host_memory_gib=8,
        ),
    )
    profile_path = profile.save(root / "profiles" / f"{profile.name}.yaml")
    plan = make_plan(
        checkpoint.spec,
        profile,
        Workload.fixed(12, 6, NUM_VALID),
        Budgets.from_args(profile, 0.01),
        model_ref=str(root / "ckpt"),
        profile_ref=str(profile_path),
    )
    plan.save(root / "plan.yaml")
    write_jsonl(root / "in.jsonl", LINES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOELENS_PROFILES_DIR", str(root / "profiles"))
        yield root


def execute(root: Path, *extra: str, output: str = "out.jsonl", input: str = "in.jsonl") -> int:
    return main(
        [
            "execute",
            str(root / "plan.yaml"),
            "--input",
            str(root / input),
            "--output",
            str(root / output),
            "--quiet",
            *extra,
        ]
    )


def records(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        key = record.get("custom_id", record["id"])
        assert key not in out, f"{key} answered twice"
        out[key] = record
    return out


def token_ids(record: dict) -> list[int]:
    return (
        record["response"]["body"]["choices"][0]["token_ids"]
        if "custom_id" in record
        else record["token_ids"]
    )


@pytest.fixture(scope="module")
def full_run(job):
    assert execute(job, "--on-error", "skip", "--report", str(job / "report.json")) == 0
    return records(job / "out.jsonl"), json.loads((job / "report.json").read_text())


def test_whole_job_answers_every_line_once(job, full_run):
    answers, report = full_run
    assert set(answers) == {"text", 2, "chat", "b1", "b2", 7}
    assert len(token_ids(answers["text"])) == 6 and answers["text"]["finish_reason"] == "length"
    assert answers[2]["prompt_tokens"] == 4 and answers[2]["completion_tokens"] == 5
    assert answers["b2"]["response"]["body"]["object"] == "chat.completion"
    assert answers["b1"]["response"]["body"]["usage"]["completion_tokens"] == 5
    state = json.loads(state_path(job / "out.jsonl").read_text())
    assert state["done"] == NUM_VALID and state["complete"]


def test_greedy_answers_match_the_reference_forward(job, full_run):
    from runtime import LLM, SamplingParams

    answers, _ = full_run
    llm = LLM(job / "ckpt", reference=True)
    got = llm.generate([[1, 5, 9, 200], [3, 4]], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert got[0].outputs[0].token_ids == token_ids(answers[2])
    assert got[1].outputs[0].token_ids[:4] == token_ids(answers[7])


def test_report_has_vllm_keys_and_predictions(job, full_run):
    from planner.calibration.runs import load_run

    answers, report = full_run
    assert report["num_requests"] == NUM_VALID
    generated = sum(len(token_ids(r)) for r in answers.values())
    assert report["output_tokens"] == generated
    assert report["total_num_tokens"] == report["prompt_tokens"] + generated
    assert report["tokens_per_second"] == pytest.approx(report["total_num_tokens"] / report["elapsed_time"])
    assert report["requests_per_second"] == pytest.approx(NUM_VALID / report["elapsed_time"])
    assert [s["line"] for s in report["skipped_lines"]] == [4]
    for key in ("end_to_end", "decode", "prefill"):
        assert report["throughput"][key]["achieved"] > 0 and report["throughput"][key]["predicted"] > 0
    modules = {row["module"] for row in report["decode_step_modules"]}
    assert {"qkv_proj", "attention", "experts", "prefill"} <= modules
    assert report["utilisation"]["s_mbu"]["achieved"] > 0 and report["utilisation"]["s_mfu"]["achieved"] > 0
    assert report["memory"]["host"]["peak_bytes"] > 0
    run = load_run(job / "report.json")  # what `planner calibrate` reads
    assert run.spec.name == TINY.name and run.measured.decode_step_s > 0


def test_resume_after_a_crash_mid_write(job, full_run):
    answers, _ = full_run
    lines = (job / "out.jsonl").read_text().splitlines(keepends=True)
    shutil.copy(state_path(job / "out.jsonl"), state_path(job / "resumed.jsonl"))
    (job / "resumed.jsonl").write_text("".join(lines[:2]) + lines[2][:17])  # torn third line
    assert execute(job, "--on-error", "skip", output="resumed.jsonl") == 0
    resumed = records(job / "resumed.jsonl")
    assert set(resumed) == set(answers)
    assert {k: token_ids(r) for k, r in resumed.items()} == {k: token_ids(r) for k, r in answers.items()}
    assert execute(job, "--on-error", "skip", output="resumed.jsonl") == 0  # nothing left to do
    assert records(job / "resumed.jsonl").keys() == answers.keys()


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_finishes_identically(job):
    """A real process killed while answers are being written; the rerun completes the job exactly once."""
    lines = [
        {"id": i, "prompt_token_ids": [7 + i, 40 + 3 * i, 5], "max_tokens": 2 + i, "ignore_eos": True}
        for i in range(12)
    ]
    write_jsonl(job / "kill.jsonl", lines)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [
        sys.executable,
        "-m",
        "runtime",
        "execute",
        str(job / "plan.yaml"),
        "--input",
        str(job / "kill.jsonl"),
        "--output",
        str(job / "killed.jsonl"),
        "--quiet",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    out = job / "killed.jsonl"
    while proc.poll() is None and time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    written = out.read_bytes().count(b"\n")
    assert 0 < written < len(lines) or proc.returncode == 0
    assert execute(job, input="kill.jsonl", output="killed.jsonl") == 0
    assert execute(job, input="kill.jsonl", output="whole.jsonl") == 0
    resumed, whole = records(job / "killed.jsonl"), records(job / "whole.jsonl")
    assert sorted(resumed) == list(range(12))
    assert {k: r["token_ids"] for k, r in resumed.items()} == {k: r["token_ids"] for k, r in whole.items()}


BAD_INPUTS = [
    ('{"id": 1, "prompt": "x"', "line 2: malformed JSON"),
    ({"id": 1, "prompt": "x", "colour": "red"}, "line 2: unknown field 'colour'"),
    ({"id": 1, "prompt": ""}, "line 2: empty prompt"),
    ({"id": 1, "prompt_token_ids": [5] * 64}, "line 2: prompt of 64 tokens does not fit"),
    ({"id": 1, "prompt": "x", "max_tokens": 0}, "line 2: max_tokens=0"),
    ({"id": "text", "prompt": "x"}, "line 2: duplicate id 'text'"),
]


@pytest.mark.parametrize("line,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_exits_2_and_writes_nothing(job, capsys, line, message):
    write_jsonl(job / "bad.jsonl", [LINES[0], line])
    assert execute(job, input="bad.jsonl", output="bad-out.jsonl") == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err and err.count("error:") == 1
    assert not (job / "bad-out.jsonl").exists() and not state_path(job / "bad-out.jsonl").exists()


def edited_plan(job: Path, name: str, edit) -> str:
    data = yaml.safe_load((job / "plan.yaml").read_text())
    edit(data)
    (job / name).write_text(yaml.safe_dump(data, sort_keys=False))
    return str(job / name)


def test_plan_for_another_model_or_machine_is_refused(job, capsys):
    other_model = edited_plan(
        job, "other-model.yaml", lambda d: d["model"].update(hash="0" * 12, ref="nowhere")
    )
    assert (
        main(
            [
                "execute",
                other_model,
                "--checkpoint",
                str(job / "ckpt"),
                "--input",
                str(job / "in.jsonl"),
                "--output",
                str(job / "x.jsonl"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "solved for model tiny-mixtral" in capsys.readouterr().err
    other_machine = edited_plan(
        job, "other-machine.yaml", lambda d: d["profile"].update(fingerprint="f" * 12)
    )
    assert (
        main(
            [
                "execute",
                other_machine,
                "--input",
                str(job / "in.jsonl"),
                "--output",
                str(job / "x.jsonl"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "fingerprint ffffffffffff" in err and "--force" in err
    assert not (job / "x.jsonl").exists()


def test_plan_needing_more_memory_than_free_is_refused(job, capsys):
    huge = edited_plan(job, "huge.yaml", lambda d: d["memory"]["host"].update(total=2.0**60))
    assert (
        main(["execute", huge, "--input", str(job / "in.jsonl"), "--output", str(job / "x.jsonl"), "--quiet"])
        == 2
    )
    assert "GiB of host memory" in capsys.readouterr().err


def test_output_checks_happen_before_any_work(job, capsys, full_run):
    assert execute(job, output="missing-dir/out.jsonl") == 2
    assert "does not exist" in capsys.readouterr().err
    write_jsonl(job / "other.jsonl", [{"id": "z", "prompt": "other input"}])
    assert execute(job, input="other.jsonl") == 2  # out.jsonl belongs to the first job
    err = capsys.readouterr().err
    assert "different input file" in err and "--overwrite" in err
    assert records(job / "out.jsonl").keys() == full_run[0].keys()


def test_progress_counts_running_and_finished_tokens():
    from runtime.progress import JobProgress

    running = [5]
    progress = JobProgress(
        4,
        predicted_tokens_per_s=10.0,
        already_done=1,
        token_budget=100,
        in_flight_tokens=lambda: running[0],
        enabled=True,
        refresh_s=0.01,
    )
    progress.sequence_finished(3)
    running[0] = 2
    assert progress.generated_tokens == 5 and progress.bar.n == 2
    text = progress.postfix()
    assert text.startswith("gen ") and "(plan 10.0)" in text and "ETA <= " in text
    progress.bar.set_postfix_str(text, refresh=False)
    line = str(progress.bar)
    assert line.count("ETA") == 1 and "<" not in line.replace("ETA <=", "")  # tqdm's own estimate is left out
    progress.close()


def test_demo_prompts_are_distinct_seeded_and_sized(job):
    from runtime.commands.demo import make_prompts

    tokenizer = open_checkpoint(job / "ckpt").tokenizer
    prompts = make_prompts(tokenizer, 64, 16, 32, seed=0)
    assert len({tuple(p) for p in prompts}) == 64 and all(16 <= len(p) <= 32 for p in prompts)
    assert make_prompts(tokenizer, 64, 16, 32, seed=0) == prompts


@pytest.mark.slow
def test_demo_end_to_end_on_a_tiny_model(job, tmp_path, capsys):
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(TINY.to_dict()))
    profile = (
        job / "profiles" / f"{this_machine().profile_name}.yaml"
    )  # rates from a datasheet: not re-measured
    assert (
        main(
            [
                "demo",
                "--model",
                str(spec_path),
                "--dir",
                str(tmp_path / "demo"),
                "--num-prompts",
                "6",
                "--min-prompt-tokens",
                "4",
                "--max-prompt-tokens",
                "8",
                "--gen-len",
                "3",
                "--profile",
                str(profile),
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "Throughput:" in out.out and "predicted" in out.err
    answers = records(tmp_path / "demo" / "outputs.jsonl")
    assert sorted(answers) == list(range(6)) and all(len(r["token_ids"]) == 3 for r in answers.values())
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["num_requests"] == 6 and report["throughput"]["end_to_end"]["predicted"] > 0

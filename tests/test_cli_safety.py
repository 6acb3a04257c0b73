"""Nothing a user types destroys data (issue 16), at both CLIs' boundaries; one regression test per defect.

- `--out` / `--output` / `--report` that is an input (same file by inode, links included), a directory, or
  under a missing directory is refused before any work, and the input is left byte for byte as it was;
- `-` is standard output (a plan, a sweep CSV, the answers of `runtime execute`), never a file named `-`;
- `planner solve --out plan.yaml` with its standard output closed (`| head -1`) still writes the plan, and a
  closed pipe ends either command quietly (exit 141, nothing on stderr);
- `--version` on both commands, from the installed distribution's metadata;
- a plan needing more memory than is free runs under `--force` with a warning, one needing more than the
  machine has is refused even then (psutil stubbed, so the test does not depend on this machine);
- one rule for `max_tokens` beyond what one request can hold (here a plan whose whole KV cache holds 48
  tokens, under the model's 64 positions): `runtime execute` and `LLM.generate` both cap it to the same
  tokens, finish "length", warn, and count it (`capped_requests` in the report); without a plan the model's
  positions are the limit, by the same rule.
SIGTERM, a file-size limit and SIGKILL are in tests/test_resume.py; plans too large to allocate and outputs
that are the input, through the real CLI, in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import namedtuple
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from planner.cli import main as planner_main
from planner.errors import EXIT_BROKEN_PIPE, UserError
from planner.plans.plan import Plan
from runtime.cli import main as runtime_main

REPO = Path(__file__).resolve().parent.parent
PROFILE = "h100-sxm-lambda"
SOLVE = ["solve", "--model", "mixtral", "--kv-gb", "128", "--profile", PROFILE]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def run_planner(capsys, *argv: str) -> tuple[int, str, str]:
    code = planner_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("main", [planner_main, runtime_main], ids=["planner", "runtime"])
def test_version_flag(capsys, main):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f"(moelens) {version('moelens')}")


def test_dash_is_standard_output(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_planner(capsys, *SOLVE, "--out", "-")
    assert code == 0 and Plan.from_yaml(out).model.name == "mixtral-8x7b"  # stdout holds the plan alone
    assert "plan for mixtral-8x7b" in err and "wrote standard output" in err
    code, out, err = run_planner(
        capsys,
        "sweep",
        "--model",
        "mixtral",
        "--kv-gb",
        "64",
        "--profile",
        PROFILE,
        "--vary",
        "kv-gb=16:64",
        "--steps",
        "2",
        "--out",
        "-",
    )
    assert code == 0 and out.splitlines()[0].startswith("kv-gb,") and len(out.splitlines()) == 3, out
    assert not (tmp_path / "-").exists() and not list(tmp_path.iterdir())


def test_outputs_that_are_inputs_directories_or_homeless_are_refused(capsys, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": 1, "prompt": "Hello", "max_tokens": 4}\n')
    before = prompts.read_bytes()
    (tmp_path / "hard-link.jsonl").hardlink_to(prompts)
    for out in (prompts, tmp_path / "hard-link.jsonl"):
        code, _, err = run_planner(capsys, *SOLVE, "--prompts", str(prompts), "--out", str(out))
        assert code == 2 and "is the input file" in err and "fix:" in err, err
    assert prompts.read_bytes() == before
    code, _, err = run_planner(capsys, *SOLVE, "--out", str(tmp_path))
    assert code == 2 and "is a directory" in err
    code, _, err = run_planner(capsys, *SOLVE, "--out", str(tmp_path / "missing" / "plan.yaml"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "missing").exists()
    report = tmp_path / "run.yaml"
    report.write_text("not a report\n")
    code, _, err = run_planner(capsys, "calibrate", str(report), "--profile", PROFILE, "--out", str(report))
    assert code == 2 and "is the input file" in err and report.read_text() == "not a report\n"


def closed_stdout(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run a command whose standard output is closed before it writes (what `| head` does); (exit, stderr)."""
    process = subprocess.Popen(
        argv, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    process.stdout.close()
    err = process.stderr.read()
    return process.wait(timeout=120), err


def test_closed_pipe_keeps_the_plan_and_ends_quietly(tmp_path):
    planner = [sys.executable, "-m", "planner"]
    code, err = closed_stdout([*planner, *SOLVE, "--out", "plan.yaml"], tmp_path)
    assert (code, err) == (EXIT_BROKEN_PIPE, "")
    assert Plan.load(tmp_path / "plan.yaml").model.name == "mixtral-8x7b"  # written before the first print
    assert closed_stdout([*planner, "explain", "plan.yaml"], tmp_path) == (EXIT_BROKEN_PIPE, "")
    assert closed_stdout([sys.executable, "-m", "runtime", "--help"], tmp_path)[1] == ""  # argparse: exit 0


def test_execute_output_dash_streams_the_answers(tiny_job, tmp_path):
    lines = [
        {"id": "a", "prompt": "Hello there", "max_tokens": 3, "ignore_eos": True},
        {"id": "b", "prompt_token_ids": [4, 5, 6], "max_tokens": 2, "ignore_eos": True},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["execute", str(tiny_job.plan), "--input", "in.jsonl", "--output", "-", "--report", "report.json"]
    result = subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        cwd=tmp_path,
        env=tiny_job.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    answers = {json.loads(line)["id"]: json.loads(line) for line in result.stdout.splitlines()}
    assert sorted(answers) == ["a", "b"] and len(answers["a"]["token_ids"]) == 3  # stdout: answers only
    assert "generated tok/s" in result.stderr  # the report went to stderr
    assert json.loads((tmp_path / "report.json").read_text())["num_requests"] == 2
    assert not (tmp_path / "-").exists() and not (tmp_path / "-.state.json").exists()
    code, err = closed_stdout([sys.executable, "-m", "runtime", *args[:-2], "--quiet"], tmp_path)
    assert code == EXIT_BROKEN_PIPE and "Traceback" not in err and "Error" not in err, (
        err
    )  # warnings may remain


# ----- memory -----
Memory = namedtuple("Memory", "total available")
GiB = 1 << 30


def test_force_runs_past_free_memory_but_not_past_the_machine(tiny_job, monkeypatch, capsys):
    import psutil

    from runtime.commands.execute_checks import check_plan_fits_memory

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory(total=10 * GiB, available=2 * GiB))
    plan = Plan.load(tiny_job.plan)

    def needing(gib: float) -> Plan:
        host = dict(plan.memory["host"], total=gib * GiB, reserve=0.0)
        return Plan.from_dict({**plan.to_dict(), "memory": {**plan.memory, "host": host}})

    with pytest.raises(UserError, match="only 2.0 GiB is free"):
        check_plan_fits_memory(needing(5))
    check_plan_fits_memory(needing(5), force=True)
    assert "warning (--force)" in capsys.readouterr().err
    with pytest.raises(UserError, match="has 10.0 GiB in all, so it cannot run here even with --force"):
        check_plan_fits_memory(needing(20), force=True)


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
            "tried to allocate 27487790694 bytes. Error code 12 (Cannot allocate memory)"
        ),
        MemoryError(),
    ],
    ids=["torch allocator", "python"],
)
def test_allocation_failure_is_one_clear_message(tiny_job, tmp_path, monkeypatch, capsys, failure):
    import runtime.engine

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(runtime.engine, "Engine", fail)
    (tmp_path / "in.jsonl").write_text('{"id": 1, "prompt": "Hi", "max_tokens": 2}\n')
    code = runtime_main(
        [
            "execute",
            str(tiny_job.plan),
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--quiet",
            "--force",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "error: this machine could not allocate the host memory" in err and "fix:" in err
    assert ("you tried to allocate 27487790694 bytes" in err) == isinstance(failure, RuntimeError)
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.state.json").exists()


# ----- max_tokens beyond what one request can hold -----
KV_TOKENS = 48  # 3 blocks of 16: under the tiny model's 64 positions
LONG_PROMPT = [5, 9, 17, 33, 65, 129, 257, 3, 6, 12]


@pytest.fixture(scope="module")
def small_kv_plan(tiny_job, tmp_path_factory) -> Path:
    data = yaml.safe_load(tiny_job.plan.read_text())
    per_block = 2 * 1 * 64 * 4 * 16 * 2  # K and V, 1 kv head, head_dim 64, fp32, 16 tokens, 2 layers
    data.update(kv_budget_bytes=per_block * KV_TOKENS // 16, num_seqs=2, attn_batch=2)
    path = tmp_path_factory.mktemp("small-kv") / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_one_max_tokens_rule_on_every_path(tiny_job, small_kv_plan, tmp_path, capsys, single_torch_thread):
    from runtime import LLM, SamplingParams
    from runtime.llm import CappedMaxTokensWarning

    lines = [
        {
            "id": "long",
            "prompt_token_ids": LONG_PROMPT,
            "max_tokens": 60,
            "ignore_eos": True,
            "temperature": 0,
        },
        {"id": "short", "prompt_token_ids": [7, 8, 9, 10], "max_tokens": 3, "ignore_eos": True},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert (
        runtime_main(
            [
                "execute",
                str(small_kv_plan),
                "--input",
                str(tmp_path / "in.jsonl"),
                "--output",
                str(tmp_path / "out.jsonl"),
                "--report",
                str(tmp_path / "report.json"),
                "--quiet",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "1 of 2 requests ask for more tokens than the plan's KV cache of 48 tokens can hold" in err, err
    answers = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    capped = answers["long"]
    assert len(capped["token_ids"]) == KV_TOKENS - len(LONG_PROMPT) and capped["finish_reason"] == "length"
    assert len(answers["short"]["token_ids"]) == 3
    assert json.loads((tmp_path / "report.json").read_text())["capped_requests"] == 1

    params = SamplingParams(max_tokens=60, ignore_eos=True, temperature=0)
    with pytest.warns(CappedMaxTokensWarning, match="1 of 1 requests"):
        output = LLM(tiny_job.checkpoint, plan=small_kv_plan).generate(
            {"prompt_token_ids": LONG_PROMPT}, params
        )
    completion = output[0].outputs[0]
    assert (
        completion.token_ids == capped["token_ids"] and completion.finish_reason == "length"
    )  # same rule, tokens

    reference = LLM(tiny_job.checkpoint, reference=True)  # no engine: the model's 64 positions are the limit
    with pytest.warns(CappedMaxTokensWarning):
        completion = reference.generate({"prompt_token_ids": LONG_PROMPT}, params)[0].outputs[0]
    assert len(completion.token_ids) == 64 - len(LONG_PROMPT) and completion.finish_reason == "length"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a request that fits is not warned about
        reference.generate({"prompt_token_ids": LONG_PROMPT}, SamplingParams(max_tokens=2, temperature=0))

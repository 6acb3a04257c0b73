"""Every bad input of issue 9, through the real CLI (`python -m runtime execute` in a subprocess).

Each must end in exit code 2 and one message on stderr (`error: <cause>` then `  fix: <fix>`, no traceback),
naming what is wrong, with nothing half-written: the output and its job-state file absent, or an output
already there byte for byte unchanged. Cases: malformed JSONL (line number; `--on-error skip` runs the good
lines and lists the bad ones in the report), a prompt longer than the context, an empty prompt, an unknown
field, max_tokens <= 0; a missing, truncated or corrupt shard, a tensor of the wrong dtype or shape, an
index naming a shard outside the checkpoint, an unsupported architecture; a plan for another model or
machine (and `--force`), a plan needing more memory than this machine has (even with `--force`), a KV cache
larger than the machine; output
paths that cannot be written or that are an input (the prompts file, by inode), refused before anything
else is looked at.

All cases are prepared up front and run two at a time (each is a fresh Python that imports torch, the
bulk of the time). Header-level shard damage is covered exhaustively, without subprocesses, in test_safety.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

GOOD = {"id": "good", "prompt": "Hello there", "max_tokens": 2, "ignore_eos": True}
PREVIOUS_OUTPUT = b'{"id": "earlier", "text": "kept"}\n'


@dataclass
class Case:
    """`build(job, case_dir) -> extra CLI args` prepares the case's files; `expect` are stderr fragments."""

    build: Callable[..., list[str]]
    expect: tuple[str, ...]
    lines: list = field(default_factory=lambda: [GOOD])
    keep_existing_output: bool = False  # an output is already there and must stay unchanged
    exit_code: int = 2


def jsonl(lines: list) -> str:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)


# ----- checkpoint damage -----
def copy_checkpoint(job, case_dir: Path) -> Path:
    target = case_dir / "ckpt"
    shutil.copytree(job.checkpoint, target)
    return target


def weight_map(ckpt: Path) -> dict:
    return json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]


def shard_of(ckpt: Path, tensor: str) -> Path:
    return ckpt / weight_map(ckpt)[tensor]


Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
EXPERT = "model.layers.1.block_sparse_moe.experts.2.w1.weight"


def with_checkpoint(edit: Callable[[Path], None]) -> Callable[..., list[str]]:
    def build(job, case_dir: Path) -> list[str]:
        ckpt = copy_checkpoint(job, case_dir)
        edit(ckpt)
        return ["--checkpoint", str(ckpt)]

    return build


def rewrite_tensor(ckpt: Path, name: str, change) -> None:
    from safetensors.torch import load_file, save_file

    path = shard_of(ckpt, name)
    tensors = load_file(path)
    tensors[name] = change(tensors[name])
    save_file(tensors, path, metadata={"format": "pt"})


def truncate(ckpt: Path) -> None:
    path = shard_of(ckpt, EXPERT)
    path.write_bytes(path.read_bytes()[:-100])


def garble_header(ckpt: Path) -> None:
    path = shard_of(ckpt, Q_PROJ)
    data = bytearray(path.read_bytes())
    data[8:40] = b"\x00not json at all\xff" + b"#" * 15
    path.write_bytes(bytes(data))


def index_escapes(ckpt: Path) -> None:
    index_path = ckpt / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    outside = ckpt.parent / "outside.safetensors"
    shutil.copy(shard_of(ckpt, Q_PROJ), outside)
    index["weight_map"][Q_PROJ] = "../outside.safetensors"
    index_path.write_text(json.dumps(index))


def unsupported_architecture(ckpt: Path) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (ckpt / "config.json").write_text(json.dumps(config))


# ----- plans -----
def with_plan(edit: Callable[[dict], None], *extra: str) -> Callable[..., list[str]]:
    def build(job, case_dir: Path) -> list[str]:
        data = yaml.safe_load(job.plan.read_text())
        edit(data)
        plan = case_dir / "plan.yaml"
        plan.write_text(yaml.safe_dump(data, sort_keys=False))
        return ["--plan-path", str(plan), "--checkpoint", str(job.checkpoint), *extra]

    return build


def other_model(plan: dict) -> None:
    plan["model"].update(name="some-other-model", hash="0" * 12, ref="nowhere")


def other_machine(plan: dict) -> None:
    plan["profile"].update(name="some-other-machine", fingerprint="f" * 12, ref="nowhere")


def needs_an_exabyte(plan: dict) -> None:
    plan["memory"]["host"].update(total=2.0**60)


# ----- outputs -----
def output_at(relative: str, *extra: str, prepare: Callable[[Path], None] = lambda _: None):
    def build(job, case_dir: Path) -> list[str]:
        prepare(case_dir)
        return ["--output-path", str(case_dir / relative), *extra]

    return build


def no_args(job, case_dir: Path) -> list[str]:
    return []


CASES = {
    "malformed JSONL line": Case(
        no_args, ("line 2", "malformed JSON"), lines=[GOOD, '{"id": 2, "prompt": "x"']
    ),
    "prompt longer than the context": Case(
        no_args,
        ("line 1", "prompt of 70 tokens does not fit the model's context of 64"),
        lines=[{"prompt_token_ids": [5] * 70}],
    ),
    "empty prompt": Case(no_args, ("line 2", "empty prompt"), lines=[GOOD, {"id": 2, "prompt": ""}]),
    "unknown field": Case(
        no_args, ("line 1", "unknown field 'colour'"), lines=[{"id": 1, "prompt": "x", "colour": "red"}]
    ),
    "max_tokens zero": Case(
        no_args,
        ("line 2", "max_tokens=0"),
        keep_existing_output=True,
        lines=[GOOD, {"id": 2, "prompt": "x", "max_tokens": 0}],
    ),
    "missing shard": Case(
        with_checkpoint(lambda c: shard_of(c, EXPERT).unlink()),
        ("does not exist",),
        keep_existing_output=True,
    ),
    "truncated shard": Case(with_checkpoint(truncate), ("truncated",)),
    "corrupt shard header": Case(with_checkpoint(garble_header), ("is corrupt", "not valid JSON")),
    "tensor of the wrong shape": Case(
        with_checkpoint(lambda c: rewrite_tensor(c, EXPERT, lambda t: t.T.contiguous())),
        ("mis-shaped", EXPERT),
    ),
    "tensor of another float dtype": Case(
        with_checkpoint(lambda c: rewrite_tensor(c, Q_PROJ, lambda t: t.half())),
        ("of another dtype", Q_PROJ, "F16"),
    ),
    "tensor of an unsupported dtype": Case(
        with_checkpoint(lambda c: rewrite_tensor(c, Q_PROJ, lambda t: t.double())), ("dtype F64", "supported")
    ),
    "index naming a shard outside": Case(
        with_checkpoint(index_escapes), ("outside the checkpoint directory",)
    ),
    "unsupported architecture": Case(
        with_checkpoint(unsupported_architecture), ("unsupported model_type 'llama'",)
    ),
    "plan for another model": Case(with_plan(other_model), ("solved for model some-other-model", "--force")),
    "plan for another machine": Case(with_plan(other_machine), ("fingerprint ffffffffffff", "--force")),
    "plan needing more memory than is free": Case(
        with_plan(needs_an_exabyte), ("GiB of host memory", "in all", "even with --force")
    ),
    "output directory missing": Case(
        output_at("missing/out.jsonl", "--checkpoint", "/nonexistent"), ("output directory", "does not exist")
    ),
    "output is a directory": Case(
        output_at("a-dir", "--checkpoint", "/nonexistent", prepare=lambda d: (d / "a-dir").mkdir()),
        ("is a directory",),
    ),
    "output is the input (through a link)": Case(
        output_at("alias.jsonl", prepare=lambda d: (d / "alias.jsonl").symlink_to(d / "in.jsonl")),
        ("--output", "is the input file", "destroy the input"),
        keep_existing_output=True,
    ),
    "report is the input": Case(
        lambda job, d: ["--report", str(d / "in.jsonl")], ("--report", "is the input file")
    ),
    "KV cache larger than this machine": Case(
        with_plan(lambda d: d.update(kv_budget_bytes=2**47), "--force"),
        ("GiB of host memory", "in all", "even with --force"),
    ),
    "plan larger than this machine, with --force": Case(
        with_plan(needs_an_exabyte, "--force"), ("GiB of host memory", "in all", "even with --force")
    ),
}


@dataclass
class Outcome:
    case_dir: Path
    output: Path
    result: subprocess.CompletedProcess


def command(job, case_dir: Path, case: Case) -> tuple[list[str], Path]:
    (case_dir / "in.jsonl").write_text(jsonl(case.lines))
    extra = case.build(job, case_dir)
    plan, output = job.plan, case_dir / "out.jsonl"
    if "--plan-path" in extra:
        i = extra.index("--plan-path")
        plan = Path(extra.pop(i + 1))
        extra.pop(i)
    if "--output-path" in extra:
        i = extra.index("--output-path")
        output = Path(extra.pop(i + 1))
        extra.pop(i)
    if case.keep_existing_output:
        output.write_bytes(PREVIOUS_OUTPUT)
    return job.execute_args(case_dir / "in.jsonl", output, *extra, plan=plan), output


@pytest.fixture(scope="module")
def outcomes(tiny_job) -> dict[str, Outcome]:
    root = tiny_job.root / "bad-inputs"
    prepared = {}
    for i, (name, case) in enumerate(CASES.items()):
        case_dir = root / f"case{i:02d}"
        case_dir.mkdir(parents=True)
        prepared[name] = (case_dir, *command(tiny_job, case_dir, case))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(tiny_job.runtime, *args) for name, (_, args, _) in prepared.items()}
        return {
            name: Outcome(prepared[name][0], prepared[name][2], future.result())
            for name, future in futures.items()
        }


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_message_and_writes_nothing(outcomes, name):
    case, outcome = CASES[name], outcomes[name]
    err = outcome.result.stderr
    assert outcome.result.returncode == case.exit_code, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]  # spot check's
    assert lines[0].startswith("error: ") and err.count("error:") == 1, err
    assert any(line.startswith("  fix: ") for line in lines[1:]), err
    for fragment in case.expect:
        assert fragment in err, err
    state = outcome.output.with_name(outcome.output.name + ".state.json")
    if case.keep_existing_output:
        assert outcome.output.read_bytes() == PREVIOUS_OUTPUT
    else:
        assert not outcome.output.is_file()
    assert not state.exists()


def test_on_error_skip_runs_the_good_lines_and_lists_the_bad(tiny_job, tmp_path):
    lines = [
        GOOD,
        "{not json",
        {"id": "b", "prompt": "x", "max_tokens": 0},
        {"id": "c", "prompt": "Bye", "max_tokens": 2},
    ]
    (tmp_path / "in.jsonl").write_text(jsonl(lines))
    result = tiny_job.runtime(
        *tiny_job.execute_args(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            "--on-error",
            "skip",
            "--report",
            str(tmp_path / "report.json"),
        )
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["line"] for s in report["skipped_lines"]] == [2, 3]
    answers = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(answers) == ["c", "good"]


def test_force_runs_a_plan_for_another_model_and_machine(tiny_job, tmp_path):
    data = yaml.safe_load(tiny_job.plan.read_text())
    other_model(data)
    other_machine(data)
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "in.jsonl").write_text(jsonl([GOOD]))
    args = tiny_job.execute_args(
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        "--checkpoint",
        str(tiny_job.checkpoint),
        plan=tmp_path / "plan.yaml",
    )
    result = tiny_job.runtime(*args, "--force")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("warning (--force)") == 2 and "Traceback" not in result.stderr
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["good"]

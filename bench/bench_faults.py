"""Fault campaign: SIGKILL `runtime execute` at seeded random instants, rerun it, and check nothing is lost or repeated.

    python -m bench.bench_faults [--cases 50] [--seed 0] [--prompts 16] [--profile NAME] [--no-update]

Each case starts a fresh output, runs the real `python -m runtime execute` in a subprocess and SIGKILLs it at
an instant drawn (seeded) inside one of four windows, then reruns the same command to completion. The windows
are observed from outside, with no hooks in the product, and each instant is a random delay after the
window's opening event as this run shows it (so a loaded machine shifts the events, not the windows):
`startup` (imports, checks, input scan: from the process start, a random share of the time the uninterrupted
run took to write its job-state file), `loading` (from the state file appearing, a random share of the
uninterrupted run's time from there to its first answer: engine build and the first prefill), `decode` (after
k answers, k random, plus a random share of the mean time between answers: decode steps with refill prefills,
4 sequences in flight) and `write` (a decode kill followed by half a line appended to the output, what a
kill inside a write leaves). Each case records where the kill landed (`hit`).
Pass: after each kill no prompt is answered twice and every answer so far equals the uninterrupted run's;
after the rerun every prompt is answered exactly once, the file ends with a whole line, the job state says
complete, and the greedy answers equal the uninterrupted run's.
The quick mode (5 cases) is `tests/test_resume.py::test_fault_campaign_quick`, on the tests' tiny job.
The full mode writes its own tiny checkpoint (`bench.bench_soak`'s) and plan, and its results go to
`bench/results/faults.json` and the `faults` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

WINDOWS = ("startup", "loading", "decode", "write")
POLL_S = 0.002
TORN_TAIL = b'{"id": "p0", "text": "half a li'


@dataclass(frozen=True)
class FaultJob:
    """How to run one job: `argv(output)` is the `runtime` argv writing to `output`; `prompt_ids` its ids."""

    argv: object  # Callable[[Path], list[str]]
    env: dict
    cwd: Path
    scratch: Path
    prompt_ids: tuple[str, ...]


@dataclass(frozen=True)
class Kill:
    """SIGKILL `delay_s` after the opening event: the process start, the job-state file, or `answers` answers."""

    anchor: str  # "start" | "state" | "answers"
    delay_s: float
    answers: int = 0


@dataclass(frozen=True)
class Timeline:
    """Seconds from the start of an uninterrupted run: job state written, first answer, exit."""

    state_s: float
    first_answer_s: float
    end_s: float


def complete_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def answers_by_id(path: Path) -> dict[str, list[int]]:
    """Token ids by prompt id; AssertionError when a prompt is answered twice."""
    answers: dict[str, list[int]] = {}
    for record in complete_lines(path):
        assert record["id"] not in answers, f"{record['id']} answered twice in {path}"
        answers[record["id"]] = record["token_ids"]
    return answers


def state_file(output: Path) -> Path:
    return output.with_name(output.name + ".state.json")


def count_answers(output: Path) -> int:
    try:
        return output.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def watch(job: FaultJob, output: Path, log: Path, kill: Kill | None = None) -> tuple[int, Timeline, str]:
    """Run the job, SIGKILLed as `kill` says. (exit status, timeline seen, the window the kill landed in)."""
    state, marks = state_file(output), {"start": 0.0}
    began = time.perf_counter()
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime", *job.argv(output)],
            env=job.env,
            cwd=job.cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    hit, size = "finished first", -1
    try:
        while process.poll() is None:
            now = time.perf_counter() - began
            if "state" not in marks and state.exists():
                marks["state"] = now
            if output.exists() and output.stat().st_size != size:
                size = output.stat().st_size
                answered = count_answers(output)
                if answered and "first" not in marks:
                    marks["first"] = now
                if kill is not None and kill.anchor == "answers" and answered >= kill.answers:
                    marks.setdefault("answers", now)
            opened = marks.get(kill.anchor) if kill is not None else None
            if opened is not None and now >= opened + kill.delay_s:
                hit = "decode" if "first" in marks else "loading" if "state" in marks else "startup"
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(POLL_S)
        status = process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    end = time.perf_counter() - began
    return status, Timeline(marks.get("state", end), marks.get("first", end), end), hit


def reference_run(job: FaultJob) -> tuple[dict[str, list[int]], Timeline]:
    output = job.scratch / "reference.jsonl"
    status, timeline, _ = watch(job, output, job.scratch / "reference.log")
    assert status == 0, (job.scratch / "reference.log").read_text()
    answers = answers_by_id(output)
    assert sorted(answers) == sorted(job.prompt_ids), "the uninterrupted run did not answer every prompt"
    return answers, timeline


def draw_kill(rng: random.Random, window: str, timeline: Timeline, num_prompts: int) -> Kill:
    if window == "startup":
        return Kill("start", rng.uniform(0.05, timeline.state_s))
    if window == "loading":
        return Kill("state", rng.uniform(0.0, timeline.first_answer_s - timeline.state_s))
    gap = (timeline.end_s - timeline.first_answer_s) / max(num_prompts - 1, 1)
    return Kill("answers", rng.uniform(0.0, gap), answers=rng.randint(1, max(1, num_prompts - 2)))


def check_partial(output: Path, reference: dict[str, list[int]], case: str) -> int:
    done = answers_by_id(output)
    for key, tokens in done.items():
        assert reference.get(key) == tokens, f"{case}: {key}'s answer differs from the uninterrupted run's"
    return len(done)


def run_case(
    job: FaultJob, reference: dict[str, list[int]], timeline: Timeline, rng: random.Random, index: int
) -> dict:
    window = WINDOWS[index % len(WINDOWS)]
    kill = draw_kill(rng, window, timeline, len(reference))
    output = job.scratch / f"case{index:03d}.jsonl"
    case = f"case {index} ({window}: {kill})"
    status, _, hit = watch(job, output, job.scratch / f"case{index:03d}-killed.log", kill)
    killed = status == -signal.SIGKILL
    answered_at_kill = check_partial(output, reference, case)
    if window == "write" and killed:
        with output.open("ab") as f:
            f.write(TORN_TAIL)
    log = job.scratch / f"case{index:03d}-rerun.log"
    status, _, _ = watch(job, output, log)
    assert status == 0, f"{case}: the rerun exited {status}: {log.read_text()[-2000:]}"
    assert output.read_bytes().endswith(b"\n"), f"{case}: the output ends in a torn line"
    final = answers_by_id(output)
    assert final == reference, f"{case}: answers differ from the uninterrupted run's after the rerun"
    state = json.loads(state_file(output).read_text())
    assert state["complete"] and state["done"] == len(reference), f"{case}: job state {state}"
    return {
        "case": index,
        "window": window,
        "anchor": kill.anchor,
        "after_answers": kill.answers,
        "delay_s": round(kill.delay_s, 3),
        "killed": killed,
        "hit": hit,
        "answered_at_kill": answered_at_kill,
        "answered_after_rerun": len(final),
        "ok": True,
    }


def run_campaign(
    job: FaultJob, cases: int, seed: int, reference: tuple[dict[str, list[int]], Timeline] | None = None
) -> dict:
    """`cases` seeded cases against `reference` (an uninterrupted run's answers and timeline; run here if None)."""
    reference, timeline = reference or reference_run(job)
    rng = random.Random(seed)
    results = [run_case(job, reference, timeline, rng, i) for i in range(cases)]
    return {
        "cases": cases,
        "seed": seed,
        "num_prompts": len(job.prompt_ids),
        "timeline": {
            "state_s": timeline.state_s,
            "first_answer_s": timeline.first_answer_s,
            "end_s": timeline.end_s,
        },
        "killed": sum(r["killed"] for r in results),
        "passed": sum(r["ok"] for r in results),
        "hits": dict(Counter(r["hit"] for r in results if r["killed"])),
        "results": results,
    }


# ----- the full mode's own job -----
def prompt_lines(count: int) -> list[dict]:
    """Greedy prompts of different lengths and max_tokens (ignore_eos): sequences finish and refill at different
    steps."""
    return [
        {
            "id": f"p{i}",
            "prompt": f"Prompt number {i}: " + "tell me more " * (i % 4),
            "max_tokens": 4 + (5 * i) % 9,
            "ignore_eos": True,
            "temperature": 0,
        }
        for i in range(count)
    ]


def write_job_files(directory: Path, count: int, in_flight: int, profile: str | None) -> tuple[Path, Path]:
    import yaml

    from bench.bench_soak import ensure_tiny_checkpoint, write_plan

    checkpoint = ensure_tiny_checkpoint()
    plan_path = write_plan(checkpoint, profile, count, 12, 0.004, 1, directory / "plan.yaml")
    plan = yaml.safe_load(plan_path.read_text())
    plan.update(num_seqs=in_flight, attn_batch=in_flight)
    plan_path.write_text(yaml.safe_dump(plan, sort_keys=False))
    prompts = directory / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in prompt_lines(count)))
    return plan_path, prompts


def markdown(result: dict, command: str, machine: str) -> str:
    from bench.common import markdown_table

    t = result["timeline"]
    rows = [
        [
            w,
            sum(r["window"] == w for r in result["results"]),
            sum(r["window"] == w and r["killed"] for r in result["results"]),
            sum(r["window"] == w and r["ok"] for r in result["results"]),
        ]
        for w in WINDOWS
    ]
    hits = ", ".join(f"{name} {n}" for name, n in sorted(result["hits"].items()))
    return "\n".join(
        [
            "## Fault campaign (`python -m bench.bench_faults`)",
            "",
            f"`{command}`: {result['cases']} cases (seed {result['seed']}), each a fresh `runtime execute` of "
            f"{result['num_prompts']} prompts (4 in flight, tiny 2-layer fp32 Mixtral) SIGKILLed at a random instant "
            f"of one window (see the script's docstring), then rerun. Uninterrupted run: job state at {t['state_s']:.2f} s, first answer at "
            f"{t['first_answer_s']:.2f} s, exit at {t['end_s']:.2f} s. {machine}",
            "",
            markdown_table(["window", "cases", "killed", "passed"], rows),
            "",
            f"**{result['passed']} of {result['cases']} cases passed**: after every rerun each prompt was answered exactly "
            f"once and the greedy answers equal the uninterrupted run's. {result['killed']} runs were killed"
            f"{'' if result['killed'] == result['cases'] else ' (the others had finished before their instant)'}; the "
            f"kills landed in: {hits}. Quick mode (5 cases, same code): `tests/test_resume.py::test_fault_campaign_quick`.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    from bench.common import REPO, RESULTS_DIR, machine_line, update_section

    parser = argparse.ArgumentParser(prog="bench.bench_faults", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument(
        "--profile", help="hardware profile to plan with (default: this machine's; implies --force)"
    )
    parser.add_argument("--no-update", action="store_true", help="do not write BENCHMARKS.md / bench/results")
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.bench_faults", *(argv if argv is not None else sys.argv[1:])])
    machine = machine_line()
    with tempfile.TemporaryDirectory(prefix="faults-") as scratch:
        work = Path(scratch)
        plan, prompts = write_job_files(work, args.prompts, 4, args.profile)
        force = ["--force"] if args.profile else []
        job = FaultJob(
            argv=lambda output: [
                "execute",
                str(plan),
                "--input",
                str(prompts),
                "--output",
                str(output),
                "--quiet",
                *force,
            ],
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            cwd=REPO,
            scratch=work,
            prompt_ids=tuple(p["id"] for p in prompt_lines(args.prompts)),
        )
        result = run_campaign(job, args.cases, args.seed)
    print(markdown(result, command, machine))
    if not args.no_update:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "faults.json").write_text(json.dumps(result, indent=1) + "\n")
        update_section("faults", markdown(result, command, machine))
    return 0 if result["passed"] == args.cases else 1


if __name__ == "__main__":
    sys.exit(main())

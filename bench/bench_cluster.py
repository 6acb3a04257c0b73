"""The Ray path against one process: `runtime execute` alone, then with `--workers 1` and `--workers 2`.

    flock /work/bench.lock python -m bench.bench_cluster [--prompts 160] [--gen-len 16] [--rounds 3]

One job (a 2-layer qwen3-mini, bf16, `--prompts` prompts of 16 tokens generating `--gen-len` each) and one
plan solved for this machine's profile with one core (one thread: what each of two workers on a 2-core
machine gets). Each round runs the three commands back to back as fresh processes (order rotated per round);
the medians over rounds are reported: the command's wall time (Ray start, actor start, checkpoint load and
all), generated tok/s over that wall time, each worker's predicted and achieved tok/s (achieved: generated
tokens over that worker's engine seconds), and the overhead of the Ray path with one worker against the
single process. The section `cluster` of BENCHMARKS.md is replaced with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.common import (
    REPO,
    RESULTS_DIR,
    bench_dir,
    ensure_checkpoint,
    machine_line,
    markdown_table,
    update_section,
)

CONFIGS = {
    "execute (1 process)": [],
    "execute --workers 1": ["--workers", "1"],
    "execute --workers 2": ["--workers", "2"],
}


def prepare(work: Path, num_prompts: int, gen_len: int) -> tuple[Path, Path]:
    from planner.hardware.profile import find_profile_for_this_machine
    from planner.perf.memory import Budgets
    from planner.plans.build import make_plan
    from planner.plans.workload import Workload
    from planner.specs.spec import load_spec

    checkpoint = ensure_checkpoint("qwen3-mini", layers=2)
    prompts = work / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps(
                {
                    "id": i,
                    "prompt_token_ids": [1 + (i * 7 + j) % 3000 for j in range(16)],
                    "max_tokens": gen_len,
                    "ignore_eos": True,
                }
            )
            + "\n"
            for i in range(num_prompts)
        )
    )
    here = find_profile_for_this_machine()
    one_core = replace(here, machine=replace(here.machine, cores=1))
    plan = make_plan(
        load_spec(checkpoint),
        one_core,
        Workload.fixed(16, gen_len, num_prompts),
        Budgets.from_args(one_core, 0.05),
        model_ref=str(checkpoint),
        profile_ref=here.name,
    )
    return prompts, plan.save(work / "plan.yaml")


def run_once(name: str, plan: Path, prompts: Path, work: Path) -> dict:
    output, report = work / "out.jsonl", work / "report.json"
    for path in (output, report, work / "out.jsonl.state.json"):
        path.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    began = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "execute",
            str(plan),
            "--input",
            str(prompts),
            "--output",
            str(output),
            "--report",
            str(report),
            "--quiet",
            *CONFIGS[name],
        ],
        env=env,
        check=True,
        timeout=900,
        capture_output=True,
    )
    wall_s = time.perf_counter() - began
    data = json.loads(report.read_text())
    generated = sum(json.loads(line)["completion_tokens"] for line in output.read_text().splitlines())
    if "workers" in data:
        workers = [(w["predicted_tok_s"], w["achieved_tok_s"], w["requests"]) for w in data["workers"]]
    else:
        t = data["throughput"]["end_to_end"]
        workers = [(t["predicted"], t["achieved"], data["num_requests"])]
    return {"wall_s": wall_s, "tok_s": generated / wall_s, "workers": workers}


def summarise(runs: dict[str, list[dict]]) -> list[list]:
    rows = []
    base = statistics.median(r["wall_s"] for r in runs["execute (1 process)"])
    for name, results in runs.items():
        wall = statistics.median(r["wall_s"] for r in results)
        per_worker = []
        for i in range(len(results[0]["workers"])):
            predicted = statistics.median(r["workers"][i][0] for r in results)
            achieved = statistics.median(r["workers"][i][1] for r in results)
            requests = statistics.median(r["workers"][i][2] for r in results)
            per_worker.append(f"{predicted:,.0f} / {achieved:,.0f} ({requests:.0f} req)")
        rows.append(
            [
                name,
                f"{wall:.1f}",
                f"{statistics.median(r['tok_s'] for r in results):,.1f}",
                "; ".join(per_worker),
                f"{wall / base:.2f}x",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=160)
    parser.add_argument("--gen-len", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    work = bench_dir() / "cluster"
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_line()
    prompts, plan = prepare(work, args.prompts, args.gen_len)
    names = list(CONFIGS)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
            runs[name].append(run_once(name, plan, prompts, work))
            print(f"round {round_index + 1} {name}: {runs[name][-1]['wall_s']:.1f} s", file=sys.stderr)
    rows = summarise(runs)
    table = markdown_table(
        [
            "command",
            "wall s",
            "generated tok/s (wall)",
            "per worker: predicted / achieved tok/s",
            "wall vs 1 process",
        ],
        rows,
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "cluster.json").write_text(json.dumps(runs, indent=1))
    body = (
        f"## Ray cluster: `execute --workers N` against one process (`python -m bench.bench_cluster`)\n\n"
        f"{machine}\n\nqwen3-mini truncated to 2 layers (bf16), {args.prompts} prompts of 16 tokens, "
        f"{args.gen_len} generated each (ignore_eos); one plan solved for this machine's profile with one "
        f"core (1 thread); medians of {args.rounds} rounds, the three commands run back to back in rotated "
        f"order in each. Wall time is the whole command as a fresh process: for the Ray rows it includes "
        f"starting a local Ray cluster and the actors (each loads torch and the checkpoint).\n\n{table}\n"
    )
    print(body)
    if not args.no_write:
        update_section("cluster", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quick against full profile (issue 16 §5): time each, plan the demo's workload on each, run both plans.

    python -m bench.bench_quick_profile [--rounds R] [--profiles DIR] [--no-execute] [--no-markdown]

Each round measures the quick and the full profile in this process (`measure_profile`, the order alternating
by round so a load trend does not favour one), timing each, and saves them under `--save-dir` (default
`bench/results/quick-profile/`);
`--profiles DIR` reuses the `quick-*.yaml` / `full-*.yaml` found there instead. For each pair it solves two
workloads on both profiles: the demo's (`runtime demo`'s first rung: 256 distinct prompts of 32-128 tokens, 64
generated, mixtral-mini bf16, 2 GiB of KV) and the issue's (4-layer mixtral-mini, 128 prompts of 96 tokens, 48
generated), runs the demo's plans once each with the engine (`bench.common.run_engine`; `--no-execute` skips
this), and prints predicted and achieved tok/s, the quick plan's prediction against the full plan's, and the
wall-time ratio. A planner-only attribution swaps each section of the quick profile into the full one and re-plans the
demo's workload: the section that moves the prediction. Results: `bench/results/quick_profile.json` and the
`quick-profile` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    ensure_checkpoint,
    machine_line,
    markdown_table,
    run_engine,
    update_section,
)

KV_GIB = 2.0
WORKLOADS = {  # name: (model, layers, prompts, shortest, longest prompt, generated)
    "demo": ("mixtral-mini", None, 256, 32, 128, 64),
    "issue": ("mixtral-mini", 4, 128, 96, 96, 48),
}
SECTIONS = ("memory", "gemm_curves", "attention_curves", "overheads", "efficiency")
PROFILES_DIR = RESULTS_DIR / "quick-profile"


def measure_pair(round_index: int, save_dir: Path = PROFILES_DIR) -> dict:
    from runtime.profiler.measure import SIZINGS, measure_profile

    save_dir.mkdir(parents=True, exist_ok=True)
    walls = {}
    for sizing in ("quick", "full") if round_index % 2 == 0 else ("full", "quick"):
        print(f"round {round_index + 1}: measuring the {sizing} profile", flush=True)
        began = time.perf_counter()
        profile = measure_profile(
            SIZINGS[sizing],
            command=f"bench_quick_profile ({sizing})",
            log=lambda line, s=sizing: print(f"  [{s}] {line.strip()}", flush=True),
        )
        walls[sizing] = time.perf_counter() - began
        profile.save(save_dir / f"{sizing}-{round_index + 1}.yaml")
        print(f"  {sizing}: {walls[sizing]:.0f} s", flush=True)
    return walls


def workload_of(name: str):
    from planner.plans.workload import Workload
    from runtime.checkpoint import open_checkpoint
    from runtime.commands.demo import make_prompts

    model, layers, count, shortest, longest, gen_len = WORKLOADS[name]
    checkpoint = open_checkpoint(ensure_checkpoint(model, layers))
    prompts = make_prompts(checkpoint.tokenizer, count, shortest, longest, seed=0)
    workload = Workload.from_lengths([len(p) for p in prompts], [gen_len] * count, source=name)
    return checkpoint, prompts, gen_len, workload


def plan_on(checkpoint, workload, profile):
    from planner.perf.memory import Budgets
    from planner.plans.build import make_plan

    return make_plan(
        checkpoint.spec,
        profile,
        workload,
        Budgets.from_args(profile, KV_GIB),
        model_ref=str(checkpoint.dir),
        profile_ref=profile.name,
    )


def attribution(checkpoint, workload, quick, full) -> dict[str, float]:
    """Predicted tok/s of the full profile with each section taken from the quick one."""
    return {
        section: plan_on(
            checkpoint, workload, replace(full, **{section: getattr(quick, section)})
        ).predicted.generated_tok_s
        for section in SECTIONS
    }


def compare(pair: tuple[Path, Path], execute: bool) -> dict:
    from planner.hardware.profile import load_profile

    quick, full = (load_profile(p) for p in pair)
    out = {"profiles": [str(p) for p in pair]}
    for name in WORKLOADS:
        checkpoint, prompts, gen_len, workload = workload_of(name)
        row = {}
        for label, profile in (("quick", quick), ("full", full)):
            plan = plan_on(checkpoint, workload, profile)
            row[label] = {"predicted": plan.predicted.generated_tok_s, "num_seqs": plan.decisions.num_seqs}
            if execute and name == "demo":
                report = run_engine(checkpoint, plan, profile, prompts, gen_len)
                row[label]["achieved"] = report["throughput"]["end_to_end"]["achieved"]
            print(
                f"  {name} on {label}: " + ", ".join(f"{k} {v:.4g}" for k, v in row[label].items()),
                flush=True,
            )
        if name == "demo":
            row["attribution"] = attribution(checkpoint, workload, quick, full)
        out[name] = row
    return out


def report_markdown(walls: list[dict], comparisons: list[dict], command: str) -> str:
    rows = []
    for i, c in enumerate(comparisons):
        wall = walls[i] if i < len(walls) else {}
        for name in WORKLOADS:
            q, f = c[name]["quick"], c[name]["full"]
            rows.append(
                [
                    i + 1,
                    name,
                    f"{q['predicted']:.1f} / {q.get('achieved', float('nan')):.1f}",
                    f"{f['predicted']:.1f} / {f.get('achieved', float('nan')):.1f}",
                    f"{100 * (q['predicted'] / f['predicted'] - 1):+.1f}%",
                    f"{wall['quick']:.0f} / {wall['full']:.0f} s" if wall else "-",
                ]
            )
    table = markdown_table(
        [
            "round",
            "workload",
            "quick: predicted / achieved tok/s",
            "full: predicted / achieved tok/s",
            "quick plan vs full plan",
            "wall quick / full",
        ],
        rows,
    )
    ratios = [w["quick"] / w["full"] for w in walls]
    swap = comparisons[-1]["demo"]
    full_pred = swap["full"]["predicted"]
    attribution_line = ", ".join(
        f"{k} {100 * (v / full_pred - 1):+.1f}%" for k, v in swap["attribution"].items()
    )
    return "\n".join(
        [
            f"`{command}`. {machine_line()}",
            "",
            table,
            "",
            (f"Wall-time ratio quick / full: median {statistics.median(ratios):.2f}." if ratios else ""),
            f"Attribution (last round, demo workload; the full profile's plan with one section from the quick "
            f"profile, against the full plan): {attribution_line}.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="quick + full measurements (default 1)")
    parser.add_argument("--profiles", type=Path, help="reuse quick-*.yaml / full-*.yaml in this directory")
    parser.add_argument("--first-round", type=int, default=1, help="number of the first round (its order)")
    parser.add_argument("--save-dir", type=Path, default=PROFILES_DIR, help="where measured profiles go")
    parser.add_argument("--no-execute", action="store_true", help="plans only, no engine runs")
    parser.add_argument("--no-markdown", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args(argv)
    walls, pairs = [], []
    if args.profiles:
        pairs = list(
            zip(sorted(args.profiles.glob("quick-*.yaml")), sorted(args.profiles.glob("full-*.yaml")))
        )
    else:
        for r in range(args.first_round - 1, args.first_round - 1 + args.rounds):
            walls.append(measure_pair(r, args.save_dir))
            pairs.append((args.save_dir / f"quick-{r + 1}.yaml", args.save_dir / f"full-{r + 1}.yaml"))
    if not pairs:
        print("no profiles to compare", file=sys.stderr)
        return 2
    comparisons = [compare(pair, execute=not args.no_execute) for pair in pairs]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "quick_profile.json").write_text(
        json.dumps({"walls": walls, "comparisons": comparisons}, indent=1)
    )
    command = "python -m bench.bench_quick_profile " + " ".join(argv if argv is not None else sys.argv[1:])
    body = report_markdown(walls, comparisons, command.strip())
    print(body)
    if not args.no_markdown:
        update_section("quick-profile", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

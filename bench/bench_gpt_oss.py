"""gpt-oss-20b shapes truncated to 4 layers on this CPU: the planner's prediction against the engine's run.

    /work/bin/cpu-exclusive python -m bench.bench_gpt_oss [--quant bf16,mxfp4] [--profile P] [--passes 3]
                                                          [--model gpt-oss-20b] [--no-markdown]

Writes (or reuses) the random-weight checkpoints `gpt-oss-20b-L4` (bf16, and `-mxfp4`: experts in MXFP4 as
gpt-oss publishes them), measures this machine with `runtime profile --sizing quick` unless `--profile` is
given, solves a plan per checkpoint for `NUM_SEQS` sequences (the KV budget that allows exactly them) with
the same profile, then runs the engine `--passes` times per checkpoint, interleaved (bf16, mxfp4, bf16, ...),
on distinct prompts after one unmeasured warm-up batch each. Reports go to `bench/results/gpt_oss/`; the
BENCHMARKS.md section holds the median pass's predicted and achieved tok/s per checkpoint.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    REPO,
    RESULTS_DIR,
    ensure_checkpoint,
    fixed_prompts,
    git_revision,
    machine_line,
    markdown_table,
    run_engine,
    update_section,
)

OUT_DIR = RESULTS_DIR / "gpt_oss"
LAYERS = 4
NUM_SEQS, PROMPT_LEN = 8, 48


@dataclass(frozen=True)
class Shape:
    num_prompts: int = 16  # measured prompts per pass (after a warm-up batch of NUM_SEQS)
    gen_len: int = 32  # generated tokens per prompt (ignore_eos)


def checkpoint_dir(model: str, quant: str) -> Path:
    if quant == "bf16":
        return ensure_checkpoint(model, LAYERS)
    out = ensure_checkpoint(model, LAYERS).parent / f"{model}-L{LAYERS}-{quant}"
    if not (out / "config.json").is_file():
        command = ["make-checkpoint", "--model", model, "--layers", str(LAYERS), "--quant", quant]
        subprocess.run([sys.executable, "-m", "runtime", *command, "--out", str(out)], cwd=REPO, check=True)
    return out


def measure_profile() -> str:
    path = OUT_DIR / "profile-quick.yaml"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "runtime", "profile", "--sizing", "quick", "--out", str(path)]
    subprocess.run(command, cwd=REPO, check=True)
    return str(path)


def solve(checkpoint, profile, directory: Path, profile_ref: str, shape: Shape):
    from planner.perf.memory import Budgets, kv_budget_gib
    from planner.plans.build import make_plan
    from planner.plans.workload import Workload

    workload = Workload.fixed(PROMPT_LEN, shape.gen_len, shape.num_prompts)
    budgets = Budgets.from_args(profile, kv_budget_gib(checkpoint.spec, workload, NUM_SEQS))
    return make_plan(
        checkpoint.spec, profile, workload, budgets, model_ref=str(directory), profile_ref=profile_ref
    )


def prepare(model: str, quant: str, profile_ref: str, shape: Shape):
    from planner.hardware.profile import load_profile
    from runtime.checkpoint import open_checkpoint

    directory = checkpoint_dir(model, quant)
    checkpoint = open_checkpoint(directory)
    profile = load_profile(profile_ref)
    return checkpoint, profile, solve(checkpoint, profile, directory, profile_ref, shape)


def run_pass(quant: str, prepared, index: int, shape: Shape) -> dict:
    from runtime.report import write_report

    checkpoint, profile, plan = prepared
    began = time.perf_counter()
    warm_up = fixed_prompts(checkpoint.tokenizer, NUM_SEQS, PROMPT_LEN, seed=1000 + index)
    prompts = fixed_prompts(checkpoint.tokenizer, shape.num_prompts, PROMPT_LEN, seed=index)
    report = run_engine(checkpoint, plan, profile, prompts, shape.gen_len, warm_up_prompts=warm_up)
    report["bench_seconds"] = time.perf_counter() - began
    report["num_seqs_planned"] = plan.decisions.num_seqs
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    write_report(OUT_DIR / f"{quant}-pass{index}.json", report)
    end_to_end = report["throughput"]["end_to_end"]
    print(
        f"{quant} pass {index}: {end_to_end['achieved']:.2f} tok/s, predicted {end_to_end['predicted']:.2f}"
    )
    return report


def run(model: str, quants: list[str], profile_ref: str, passes: int, shape: Shape) -> dict[str, list[dict]]:
    prepared = {quant: prepare(model, quant, profile_ref, shape) for quant in quants}
    reports: dict[str, list[dict]] = {quant: [] for quant in quants}
    for index in range(passes):
        for quant in quants:
            reports[quant].append(run_pass(quant, prepared[quant], index, shape))
    return reports


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{value:+.1%}"


def quant_section(quant: str, reports: list[dict]) -> list[str]:
    median = sorted(reports, key=lambda r: r["throughput"]["end_to_end"]["achieved"])[len(reports) // 2]
    rows = []
    for key in ("end_to_end", "decode", "prefill"):
        entry = median["throughput"][key]
        rows.append([key, entry["predicted"], entry["achieved"], _percent(entry["relative_error"])])
    passes = [round(r["throughput"]["end_to_end"]["achieved"], 2) for r in reports]
    spread = max(passes) / min(passes) - 1 if min(passes) > 0 else None
    modules = [
        [row["module"], row["predicted_s"], row["measured_s"], _percent(row["relative_error"])]
        for row in median["decode_step_modules"]
    ]
    return [
        f"### {quant} experts (plan: N = {median['num_seqs_planned']}; end-to-end tok/s per pass: {passes}, "
        f"spread {spread:.0%})",
        "",
        markdown_table(["tok/s", "predicted", "achieved", "error"], rows),
        "",
        "Decode step, seconds per module (median pass):",
        "",
        markdown_table(["module", "predicted s", "measured s", "error"], modules),
        "",
    ]


def section(profile_ref: str, reports: dict[str, list[dict]], command: str, shape: Shape) -> str:
    passes = len(next(iter(reports.values())))
    lines = [
        f"## gpt-oss-20b-shaped, {LAYERS} layers, {' and '.join(reports)} experts: predicted vs achieved on the CPU",
        "",
        f"`{command}` (revision {git_revision()}). {machine_line()}",
        f"Profile `{profile_ref}`, one for every run. Workload: {shape.num_prompts} prompts of {PROMPT_LEN} tokens, "
        f"{shape.gen_len} generated each (ignore_eos), the KV budget for {NUM_SEQS} sequences; sliding layers keep "
        f"a 9-block ring per sequence. Median of {passes} passes per checkpoint, interleaved, each after an "
        f"unmeasured warm-up batch of {NUM_SEQS} prompts.",
        "",
    ]
    for quant, quant_reports in reports.items():
        lines += quant_section(quant, quant_reports)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="bf16,mxfp4", help="checkpoints, comma-separated: bf16, mxfp4")
    parser.add_argument("--profile", help="a profile name or path (default: measure this machine, quick)")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument(
        "--model", default="gpt-oss-20b", help="another gpt-oss spec (gpt-oss-mini: a smoke run)"
    )
    parser.add_argument(
        "--num-prompts", type=int, default=Shape.num_prompts, help="measured prompts per pass"
    )
    parser.add_argument("--gen-len", type=int, default=Shape.gen_len, help="tokens generated per prompt")
    parser.add_argument("--no-markdown", action="store_true")
    args = parser.parse_args(argv)
    profile_ref = args.profile or measure_profile()
    quants = args.quant.split(",")
    if not set(quants) <= {"bf16", "mxfp4"}:
        parser.error(f"--quant {args.quant}: bf16 and/or mxfp4")
    shape = Shape(args.num_prompts, args.gen_len)
    reports = run(args.model, quants, profile_ref, args.passes, shape)
    if not args.no_markdown:
        command = "/work/bin/cpu-exclusive python -m bench.bench_gpt_oss " + " ".join(argv or sys.argv[1:])
        update_section(f"gpt-oss-{'-'.join(quants)}", section(profile_ref, reports, command.strip(), shape))
    return 0


if __name__ == "__main__":
    sys.exit(main())

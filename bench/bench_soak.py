"""Soak: 20,000 short prompts through the real `runtime execute` on a tiny model; memory flat, throughput steady.

    python -m bench.bench_soak [--prompts 20000] [--max-tokens 8] [--kv-gb 0.004] [--threads 1] [--profile NAME]
                               [--no-update]

Writes a 2-layer random fp32 checkpoint (`runtime make-checkpoint`, the tests' tiny Mixtral shape) under
`bench/.checkpoints/` (`MOELENS_BENCH_DIR`), solves a plan for it with this machine's profile (or `--profile`,
then `--force`) with its thread counts set to `--threads`, and runs `python -m runtime execute` as a subprocess, sampling its RSS (psutil) and the
number of answers in the output every 0.2 s. Reported per 10% window of the prompts: answers/s and generated
tokens/s by the wall clock (each answer has exactly `--max-tokens` tokens: `ignore_eos`), generated tokens per
CPU-second the process got (what stays meaningful when other jobs share the cores), and the largest RSS seen.
Pass criteria: RSS after warm-up (the peak during the first window) grows by less than 5% over the rest of
the run; throughput steady: the tokens per CPU-second of windows 2-9 (after warm-up, before the slots drain
at the end) all within 20% of their median.
Results go to `bench/results/soak.json` and the `soak` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil
import yaml

from bench.common import REPO, RESULTS_DIR, bench_dir, machine_line, markdown_table, update_section

TINY_SPEC = {
    "name": "soak-tiny-mixtral",
    "family": "mixtral",
    "num_layers": 2,
    "hidden_size": 128,
    "num_heads": 2,
    "num_kv_heads": 1,
    "head_dim": 64,
    "vocab_size": 512,
    "num_experts": 4,
    "top_k": 2,
    "moe_intermediate_size": 64,
    "max_position_embeddings": 64,
    "dtype": "float32",
}
WINDOWS = 10
SAMPLE_S = 0.2
RSS_GROWTH_LIMIT = 0.05
STEADY_TOLERANCE = 0.20


def ensure_tiny_checkpoint() -> Path:
    directory = bench_dir() / TINY_SPEC["name"]
    if not (directory / "config.json").is_file():
        directory.parent.mkdir(parents=True, exist_ok=True)
        spec_path = directory.parent / f"{TINY_SPEC['name']}.yaml"
        spec_path.write_text(yaml.safe_dump(TINY_SPEC, sort_keys=False))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "runtime",
                "make-checkpoint",
                "--model",
                str(spec_path),
                "--dtype",
                "fp32",
                "--out",
                str(directory),
                "--quiet",
            ],
            cwd=REPO,
            check=True,
        )
    return directory


def write_plan(
    checkpoint: Path,
    profile_name: str | None,
    num_prompts: int,
    max_tokens: int,
    kv_gb: float,
    threads: int,
    path: Path,
) -> Path:
    from planner.hardware.profile import find_profile_for_this_machine, load_profile
    from planner.perf.memory import Budgets
    from planner.plans.build import make_plan
    from planner.plans.workload import Workload
    from planner.specs.spec import load_spec

    profile = load_profile(profile_name) if profile_name else find_profile_for_this_machine()
    plan = make_plan(
        load_spec(checkpoint),
        profile,
        Workload.fixed(8, max_tokens, num_prompts),
        Budgets.from_args(profile, kv_gb),
        model_ref=str(checkpoint),
        profile_ref=profile_name,
    )
    return replace(
        plan, decisions=replace(plan.decisions, attention_threads=threads, compute_threads=threads)
    ).save(path)


def write_prompts(path: Path, count: int, max_tokens: int) -> Path:
    words = ("alpha", "beta", "gamma", "delta", "omega")
    with path.open("w") as f:
        for i in range(count):
            prompt = f"Item {i}: " + " ".join(words[(i + j) % len(words)] for j in range(i % 4 + 1))
            f.write(
                json.dumps({"id": i, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}) + "\n"
            )
    return path


def count_new_lines(path: Path, offset: int) -> tuple[int, int]:
    """(newlines appended since `offset`, new offset)."""
    if not path.exists():
        return 0, offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    return data.count(b"\n"), offset + len(data)


Sample = tuple[float, int, int, float]  # seconds since start, answers written, RSS bytes, CPU seconds used


def run_and_sample(command: list[str], output: Path) -> tuple[int, list[Sample]]:
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO)
    watched = psutil.Process(process.pid)
    samples: list[Sample] = []
    answers, offset = 0, 0
    while process.poll() is None:
        try:
            rss, cpu = watched.memory_info().rss, sum(watched.cpu_times()[:2])
        except psutil.NoSuchProcess:
            break
        new, offset = count_new_lines(output, offset)
        answers += new
        samples.append((time.perf_counter() - began, answers, rss, cpu))
        time.sleep(SAMPLE_S)
    new, offset = count_new_lines(output, offset)
    last = samples[-1] if samples else (0.0, 0, 0, 0.0)
    samples.append((time.perf_counter() - began, answers + new, last[2], last[3]))
    return process.wait(), samples


def crossing(samples: list[Sample], answers: float) -> tuple[float, float]:
    """(time, CPU seconds) when the answer count first reached `answers` (linear between samples)."""
    previous = samples[0]
    for sample in samples:
        if sample[1] >= answers:
            n0, n1 = previous[1], sample[1]
            f = 1.0 if n1 == n0 else (answers - n0) / (n1 - n0)
            return (previous[0] + f * (sample[0] - previous[0]), previous[3] + f * (sample[3] - previous[3]))
        previous = sample
    return samples[-1][0], samples[-1][3]


def windows(samples: list[Sample], num_prompts: int, max_tokens: int) -> list[dict]:
    rows = []
    start, start_cpu = crossing(samples, 1)
    for k in range(1, WINDOWS + 1):
        end, end_cpu = crossing(samples, k * num_prompts / WINDOWS)
        in_window = [s[2] for s in samples if start <= s[0] <= end] or [samples[-1][2]]
        seconds, cpu_seconds = max(end - start, 1e-9), max(end_cpu - start_cpu, 1e-9)
        tokens = num_prompts / WINDOWS * max_tokens
        rows.append(
            {
                "window": k,
                "seconds": seconds,
                "answers_per_s": num_prompts / WINDOWS / seconds,
                "tokens_per_s": tokens / seconds,
                "tokens_per_cpu_s": tokens / cpu_seconds,
                "max_rss_bytes": max(in_window),
            }
        )
        start, start_cpu = end, end_cpu
    return rows


def summarise(rows: list[dict]) -> dict:
    warm_rss = rows[0]["max_rss_bytes"]
    later_rss = max(r["max_rss_bytes"] for r in rows[1:])
    steady = rows[1:-1]  # after the warm-up window, before the last one (slots drain as the prompts run out)
    per_cpu_s = [r["tokens_per_cpu_s"] for r in steady]
    median = statistics.median(per_cpu_s)
    spread = max(abs(t - median) / median for t in per_cpu_s)
    return {
        "rss_after_warmup_bytes": warm_rss,
        "rss_peak_later_bytes": later_rss,
        "rss_growth": later_rss / warm_rss - 1,
        "rss_flat": later_rss / warm_rss - 1 < RSS_GROWTH_LIMIT,
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "median_tokens_per_cpu_s": median,
        "largest_deviation_from_median": spread,
        "throughput_steady": spread <= STEADY_TOLERANCE,
    }


def markdown(result: dict) -> str:
    s = result["summary"]
    table = markdown_table(
        [
            "window (10% of prompts)",
            "seconds",
            "answers/s",
            "generated tok/s",
            "generated tok per CPU-s",
            "max RSS (MiB)",
        ],
        [
            [
                r["window"],
                r["seconds"],
                r["answers_per_s"],
                r["tokens_per_s"],
                r["tokens_per_cpu_s"],
                r["max_rss_bytes"] / 2**20,
            ]
            for r in result["windows"]
        ],
    )
    verdict = (
        f"RSS after warm-up {s['rss_after_warmup_bytes'] / 2**20:.0f} MiB, later peak "
        f"{s['rss_peak_later_bytes'] / 2**20:.0f} MiB: growth {100 * s['rss_growth']:+.1f}% "
        f"({'pass' if s['rss_flat'] else 'FAIL'}, limit +5%). Throughput over windows 2-9 (after warm-up, before "
        f"the final drain): median "
        f"{s['median_tokens_per_s']:.0f} generated tok/s by the wall clock, "
        f"{s['median_tokens_per_cpu_s']:.0f} per CPU-second; largest deviation of the latter from its median "
        f"{100 * s['largest_deviation_from_median']:.0f}% "
        f"({'steady' if s['throughput_steady'] else 'NOT steady'}, tolerance 20%)."
    )
    return "\n".join(
        [
            "## Soak (`python -m bench.bench_soak`)",
            "",
            f"`{result['command']}`: {result['num_prompts']:,} short prompts (5-12 tokens, `max_tokens` "
            f"{result['max_tokens']}, `ignore_eos`) through `runtime execute` on a 2-layer random fp32 tiny Mixtral "
            f"(hidden 128, 4 experts); plan N = {result['num_seqs']}, {result['threads']} thread(s). Wall {result['wall_s']:.0f} s, exit "
            f"{result['exit_code']}. {result['machine']}",
            "",
            table,
            "",
            verdict,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_soak", description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20_000)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--kv-gb",
        type=float,
        default=0.004,
        help="KV budget the plan is solved with (small: about 200 sequences in flight, so slots refill)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="attention and compute threads written into the plan (1: CPU time measures work done, "
        "without OpenMP spin-waits on a shared machine)",
    )
    parser.add_argument(
        "--profile", help="hardware profile to plan with (default: this machine's; implies --force)"
    )
    parser.add_argument("--no-update", action="store_true", help="do not write BENCHMARKS.md / bench/results")
    args = parser.parse_args(argv)
    machine = machine_line()
    checkpoint = ensure_tiny_checkpoint()
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        work = Path(scratch)
        plan = write_plan(
            checkpoint,
            args.profile,
            args.prompts,
            args.max_tokens,
            args.kv_gb,
            args.threads,
            work / "plan.yaml",
        )
        prompts = write_prompts(work / "prompts.jsonl", args.prompts, args.max_tokens)
        output = work / "out.jsonl"
        command = [
            sys.executable,
            "-m",
            "runtime",
            "execute",
            str(plan),
            "--input",
            str(prompts),
            "--output",
            str(output),
            "--quiet",
            "--report",
            str(work / "report.json"),
            *(["--force"] if args.profile else []),
        ]
        began = time.perf_counter()
        code, samples = run_and_sample(command, output)
        wall = time.perf_counter() - began
        answered = sum(1 for _ in output.open()) if output.exists() else 0
        num_seqs = yaml.safe_load(plan.read_text())["num_seqs"]
    if code != 0 or answered != args.prompts:
        print(f"execute exited {code} with {answered} of {args.prompts} answers", file=sys.stderr)
        return 1
    rows = windows(samples, args.prompts, args.max_tokens)
    result = {
        "command": " ".join(["python -m bench.bench_soak", *(argv if argv is not None else sys.argv[1:])]),
        "num_prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "num_seqs": num_seqs,
        "threads": args.threads,
        "wall_s": wall,
        "exit_code": code,
        "machine": machine,
        "windows": rows,
        "summary": summarise(rows),
    }
    print(markdown(result))
    if not args.no_update:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
        update_section("soak", markdown(result))
    return 0 if result["summary"]["rss_flat"] else 1


if __name__ == "__main__":
    sys.exit(main())

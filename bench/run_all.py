"""`make bench` (after `make bench-attention`): every benchmark in one command, then the figures.

    python -m bench.run_all [--quick]

Runs in turn, each with its defaults (`--quick` passed on where it exists): `bench.bench_accuracy
--measure-profile full` (measures this machine, then the accuracy matrix, calibration, S-MBU / S-MFU: on a
VM whose speed drifts over minutes the profile must be taken just before the runs it predicts; `quick`
with `--quick`), `bench.bench_throughput` (HF generate() / module batching off /
planned), `bench.gpu_smoke` (results in bench/results/gpu_smoke; prints why and skips without a CUDA GPU),
`bench.bench_soak` (20,000 short
prompts: memory flat, throughput steady), then `notebooks/plots.py`. Each step
replaces its own section of BENCHMARKS.md. A failing step is reported and the others still run; the exit
code is 1 when any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import REPO

STEPS = (
    ("accuracy", ["-m", "bench.bench_accuracy", "--measure-profile", "full"], True),
    ("throughput", ["-m", "bench.bench_throughput"], True),
    ("gpu", ["-m", "bench.gpu_smoke", "--out", "bench/results/gpu_smoke"], False),
    ("soak", ["-m", "bench.bench_soak"], False),
    ("plots", ["notebooks/plots.py"], False),
)


def commands(quick: bool) -> list[tuple[str, list[str]]]:
    def sized(args: list[str]) -> list[str]:
        return ["quick" if quick and arg == "full" else arg for arg in args]

    return [
        (name, [sys.executable, *sized(args), *(["--quick"] if quick and takes_quick else [])])
        for name, args, takes_quick in STEPS
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smoke-run sizes of every benchmark")
    args = parser.parse_args(argv)
    failed = []
    for name, command in commands(args.quick):
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        began = time.perf_counter()
        code = subprocess.run(command, cwd=REPO, check=False).returncode
        print(f"== {name}: exit {code} after {time.perf_counter() - began:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput against link speed, measured: where the emulated link stops binding.

    python -m bench.bench_link_sweep [--profile P] [--links 0.25 0.5 1 2 4 8] [--passes 3]

One model and workload (`SWEEP`: qwen3-mini, N = 16, 32 prompts of 16 + 32 tokens, 0.125 GiB of device memory)
planned and run behind an emulated link of each speed (`bench.bench_accuracy`'s machinery: interleaved
passes, each config's median pass), written to `bench/results/link-sweep.csv` (`bench.link_accuracy`'s
columns) for `notebooks/plot_link.py`, which draws `planner sweep --vary link-gbps` with these measured
points on top.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from bench.bench_accuracy import AccuracyConfig, run_all
from bench.common import RESULTS_DIR
from bench.link_accuracy import link_frame

SWEEP = AccuracyConfig("link-sweep", "qwen3-mini", None, 16, 32, 16, 32, link_gbps=1.0, device_gb=0.125)
LINKS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def main(argv: list[str] | None = None) -> int:
    from planner.hardware.profile import find_profile_for_this_machine

    parser = argparse.ArgumentParser(prog="bench.bench_link_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="CPU profile to plan with (default: this machine's measured one)")
    parser.add_argument("--links", type=float, nargs="+", default=list(LINKS))
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args(argv)
    profile_ref = args.profile or find_profile_for_this_machine().name
    configs = [replace(SWEEP, name=f"link-sweep-{gbps:g}", link_gbps=gbps) for gbps in args.links]
    paths = run_all(
        configs,
        profile_ref,
        RESULTS_DIR / "link-sweep" / "reports",
        reuse=False,
        timeout_s=1800,
        passes=args.passes,
    )
    frame = link_frame(paths)
    out = RESULTS_DIR / "link-sweep.csv"
    frame.to_csv(out, index=False, float_format="%.6g")
    print(
        frame[
            ["config", "predicted_tok_s", "achieved_tok_s", "error", "bottleneck", "link_busy_measured"]
        ].to_string(index=False)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The emulated link through the commands a user runs: profile, solve, execute, predicted against achieved.

    python -m bench.bench_link_cli [--link-gbps 1.0] [--device-gb 0.4 0.5] [--layers 4] [--num-prompts 96]
                                   [--prompt-len 64] [--gen-len 32] [--from PROFILE]

1. `runtime profile --quick --emulate-link GBPS --emulate-device-gb G --out P` for each G (measuring this
   CPU once; the later G reuse that measurement with `--from`);
2. `planner solve --checkpoint <mixtral-mini, --layers layers> --profile P --prompts prompts.jsonl
   --gen-len g --kv-gb 1 --out plan.yaml` (a G that cannot hold the stream buffers is refused: its message
   is recorded and the next G is tried);
3. `runtime execute plan.yaml --input prompts.jsonl --output out.jsonl --report report.json` (each line
   `ignore_eos` with `max_tokens = g`, greedy),
and prints and records (`link-cli` section of BENCHMARKS.md) the plan's bottleneck and predicted tok/s beside
the achieved ones. Everything lands in `bench/results/link-cli/`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.common import (
    REPO,
    RESULTS_DIR,
    ensure_checkpoint,
    fixed_prompts,
    machine_line,
    markdown_table,
    update_section,
)

OUT_DIR = RESULTS_DIR / "link-cli"
TARGET = 0.15


def _run(args: list[str]) -> subprocess.CompletedProcess:
    print("$ " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)
    print(done.stdout + done.stderr, flush=True)
    return done


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_link_cli", description=__doc__.splitlines()[0])
    parser.add_argument("--link-gbps", type=float, default=1.0)
    parser.add_argument("--device-gb", type=float, nargs="+", default=[0.4, 0.5])
    parser.add_argument("--model", default="mixtral-mini")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--num-prompts", type=int, default=96)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--gen-len", type=int, default=32)
    parser.add_argument(
        "--from", dest="from_profile", help="emulate on this CPU profile instead of measuring"
    )
    parser.add_argument("--no-markdown", action="store_true")
    args = parser.parse_args(argv)
    from runtime.checkpoint import open_checkpoint

    machine = machine_line()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = ensure_checkpoint(args.model, args.layers)
    prompts = OUT_DIR / "prompts.jsonl"
    ids = fixed_prompts(open_checkpoint(checkpoint_dir).tokenizer, args.num_prompts, args.prompt_len, seed=7)
    prompts.write_text(
        "".join(
            json.dumps(
                {
                    "id": i,
                    "prompt_token_ids": p,
                    "max_tokens": args.gen_len,
                    "ignore_eos": True,
                    "temperature": 0,
                }
            )
            + "\n"
            for i, p in enumerate(ids)
        )
    )
    measured = args.from_profile
    lines = []
    for device_gb in args.device_gb:
        profile = OUT_DIR / f"profile-{args.link_gbps:g}gbps-{device_gb:g}gib.yaml"
        source = ["--from", measured] if measured else ["--quick"]
        _run(
            [
                "runtime",
                "profile",
                *source,
                "--emulate-link",
                str(args.link_gbps),
                "--emulate-device-gb",
                str(device_gb),
                "--out",
                str(profile),
            ]
        )
        if not measured:  # one measurement of this CPU; the other device sizes reuse it
            measured = str(profile)
        plan = OUT_DIR / f"plan-{device_gb:g}gib.yaml"
        solve = _run(
            [
                "planner",
                "solve",
                "--checkpoint",
                str(checkpoint_dir),
                "--profile",
                str(profile),
                "--prompts",
                str(prompts),
                "--gen-len",
                str(args.gen_len),
                "--kv-gb",
                "1",
                "--out",
                str(plan),
            ]
        )
        if solve.returncode != 0:
            lines.append(
                [
                    device_gb,
                    "refused: " + solve.stderr.strip().splitlines()[0].removeprefix("error: "),
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                ]
            )
            continue
        report_path = OUT_DIR / f"report-{device_gb:g}gib.json"
        done = _run(
            [
                "runtime",
                "execute",
                str(plan),
                "--input",
                str(prompts),
                "--output",
                str(OUT_DIR / f"out-{device_gb:g}gib.jsonl"),
                "--overwrite",
                "--report",
                str(report_path),
            ]
        )
        if done.returncode != 0:
            lines.append(
                [device_gb, "execute failed: " + done.stderr.strip()[-200:], "-", "-", "-", "-", "-"]
            )
            continue
        report = json.loads(report_path.read_text())
        e2e, link = report["throughput"]["end_to_end"], report["utilisation"]["resources"]["link"]
        error = (e2e["predicted"] - e2e["achieved"]) / e2e["achieved"]
        lines.append(
            [
                device_gb,
                report["plan"]["bottleneck"],
                e2e["predicted"],
                e2e["achieved"],
                f"{error:+.1%}",
                f"{link['predicted']:.0%}",
                f"{link['achieved']:.0%}",
            ]
        )
    table = markdown_table(
        [
            "device GiB",
            "plan bottleneck",
            "predicted tok/s",
            "achieved tok/s",
            "error",
            "link busy plan",
            "link busy measured",
        ],
        lines,
    )
    print(table)
    if not args.no_markdown:
        command = "python -m bench.bench_link_cli " + " ".join(argv if argv is not None else sys.argv[1:])
        update_section(
            "link-cli",
            "\n".join(
                [
                    "## The emulated link through the CLI: profile, solve, execute",
                    "",
                    f"Command: `/work/bin/cpu-exclusive {command.strip()}`. {machine}",
                    f"{args.model} truncated to {args.layers} layers (random bf16 weights), {args.num_prompts} prompts of "
                    f"{args.prompt_len} + {args.gen_len} tokens, this CPU behind an emulated {args.link_gbps:g} GB/s link "
                    f"(`runtime profile --quick --emulate-link {args.link_gbps:g} --emulate-device-gb G`, then `planner "
                    f"solve`, then `runtime execute`; files in `{_shown(OUT_DIR)}`). Target: link-bound, achieved within "
                    f"{TARGET:.0%} of predicted.",
                    "",
                    table,
                ]
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

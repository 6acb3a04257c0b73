"""Prediction accuracy matrix (issue 8 §2-3): solve -> execute -> predicted vs achieved, then calibration.

    python -m bench.bench_accuracy [--quick] [--profile P | --measure-profile quick|full] [--only NAME ...]
                                   [--reuse] [--no-markdown] [--link]

`CONFIGS` are 15 runs on this machine: mixtral- (truncated to 2 layers; 4 when streaming, since the engine's
two stream buffers would keep a 2-layer model whole), qwen3-, olmoe-, qwen2-moe- and
deepseek-shaped (MLA: V2-Lite and V3) minis; several N (fixed by giving the solver exactly the KV budget N
sequences need; the `qwen3-kv-*` rows are one workload at four KV budgets, the measured points of
`notebooks/figures/throughput_vs_kv.png`), prompt / generation lengths; CPU-only and forced streaming
(experts stream through the engine's copy worker every step). The matrix runs in `PASSES` (3) passes, each
running every config once in its own subprocess (a clean peak-memory reading): plan with the planner for the
profile (default: this machine's measured one), run the engine on `num_prompts` distinct prompts with
ignore_eos, after one unmeasured warm-up run of the same engine on other prompts of the same sizes (steady
state, as a long job is after its first seconds; the warm-up's own tok/s is kept as `cold`). Passes, not
back-to-back repeats: this VM's speed drifts by tens of percent over minutes, so each config's three runs
are spread over the whole matrix's time and every config sees the same drift. Each config's median pass
is its report (plan and spec embedded; every pass's tok/s in `repeats_tok_s`) under
`bench/results/accuracy/reports/`; the passes' spread is the measurement noise the analysis reports.
`--link` runs `LINK_CONFIGS` instead: the link-bound regime on this CPU, each config planned and run on the
profile behind an emulated link of its `link_gbps` and `device_gb` (`planner.hardware.emulated_link`; the routed
experts cross the paced link every step), analysed by `bench.link_accuracy` (predicted vs achieved, the
plan's bottleneck, the link's measured busy share of decode time beside the plan's) into the `accuracy-link`
section. Otherwise `bench.accuracy_analysis` calibrates on the configs marked `train` and reports held-out error before and
after, writing `bench/results/accuracy.csv`, the calibrated profile and the BENCHMARKS.md section.
`--quick` halves prompts and generation lengths (a smoke run, same configs, results under `-quick` names and
not in BENCHMARKS.md); `--reuse` keeps reports already
written by an identical earlier run (same config, mode and profile); `--measure-profile` first measures this
machine (`runtime profile`, written to `bench/results/accuracy/profile[-quick].yaml`, not to profiles/) and
plans with that, so the profile and the runs see the same machine conditions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.common import REPO, RESULTS_DIR, ensure_checkpoint, fixed_prompts, machine_line, run_engine
from planner.modules import DEFAULT_RESIDENT
from planner.perf.memory import kv_budget_gib

STREAMING_OVERRIDES = {
    "force_streaming": True,
    "resident_experts_per_layer": 0,
    "resident_modules": DEFAULT_RESIDENT,
}
ACCURACY_DIR = RESULTS_DIR / "accuracy"
PASSES = 3  # measured runs per config, one per pass over the matrix; the report is the median


@dataclass(frozen=True)
class AccuracyConfig:
    name: str
    model: str
    layers: int | None
    num_seqs: int  # N the solver is given exactly the KV budget for
    num_prompts: int
    prompt_len: int
    gen_len: int
    streaming: bool = False  # forced streaming of the routed experts (engine copy worker)
    split: str = "train"  # train: calibration fits on it; held-out: evaluated only
    link_gbps: float | None = None  # the device is this CPU behind an emulated link of this speed
    device_gb: float | None = None  # and this much device memory (GiB)

    def scaled(self, quick: bool) -> AccuracyConfig:
        if not quick:
            return self
        return replace(
            self,
            num_prompts=max(self.num_prompts // 2, self.num_seqs // 2, 1),
            num_seqs=max(self.num_seqs // 2, 1),
            gen_len=max(self.gen_len // 2, 4),
        )


CONFIGS = (
    AccuracyConfig("qwen3-kv-n8", "qwen3-mini", None, 8, 64, 32, 32, split="train"),
    AccuracyConfig("qwen3-kv-n16", "qwen3-mini", None, 16, 64, 32, 32, split="held-out"),
    AccuracyConfig("qwen3-kv-n32", "qwen3-mini", None, 32, 64, 32, 32, split="train"),
    AccuracyConfig("qwen3-kv-n64", "qwen3-mini", None, 64, 64, 32, 32, split="held-out"),
    AccuracyConfig("qwen3-stream", "qwen3-mini", None, 16, 32, 64, 16, streaming=True, split="held-out"),
    AccuracyConfig("mixtral-n8", "mixtral-mini", 2, 8, 16, 64, 32, split="train"),
    AccuracyConfig("mixtral-n24", "mixtral-mini", 2, 24, 48, 32, 32, split="held-out"),
    AccuracyConfig("mixtral-stream", "mixtral-mini", 4, 16, 32, 64, 16, streaming=True, split="train"),
    AccuracyConfig("mixtral-long", "mixtral-mini", 2, 8, 16, 128, 16, split="held-out"),
    AccuracyConfig("deepseek-n8", "deepseek-v2-lite-mini", None, 8, 16, 64, 32, split="train"),
    AccuracyConfig("deepseek-n32", "deepseek-v2-lite-mini", None, 32, 64, 32, 32, split="held-out"),
    AccuracyConfig(
        "deepseek-stream", "deepseek-v2-lite-mini", None, 16, 32, 64, 16, streaming=True, split="train"
    ),
    AccuracyConfig("olmoe-n16", "olmoe-mini", None, 16, 32, 64, 32, split="held-out"),
    AccuracyConfig("qwen2moe-n16", "qwen2-moe-mini", None, 16, 32, 32, 32, split="train"),
    AccuracyConfig("deepseek-v3-n16", "deepseek-v3-mini", None, 16, 32, 64, 16, split="held-out"),
)


# The link-bound regime: mixtral-, qwen3- and deepseek-shaped minis behind links of 0.5 to 4 GB/s, several N
# (and so KV budgets), each with the routed experts streamed across the paced link every step.
LINK_CONFIGS = (
    AccuracyConfig("link-mixtral-0.5-n16", "mixtral-mini", 4, 16, 16, 16, 16, link_gbps=0.5, device_gb=0.6),
    AccuracyConfig("link-mixtral-1-n32", "mixtral-mini", 4, 32, 32, 16, 24, link_gbps=1.0, device_gb=0.6),
    AccuracyConfig("link-mixtral-2-n1", "mixtral-mini", 4, 1, 4, 16, 24, link_gbps=2.0, device_gb=0.5),
    AccuracyConfig("link-qwen3-0.5-n4", "qwen3-mini", None, 4, 8, 16, 32, link_gbps=0.5, device_gb=0.125),
    AccuracyConfig("link-qwen3-0.5-n8", "qwen3-mini", None, 8, 16, 16, 32, link_gbps=0.5, device_gb=0.125),
    AccuracyConfig("link-mixtral-4-n8", "mixtral-mini", 4, 8, 16, 16, 24, link_gbps=4.0, device_gb=0.5),
    AccuracyConfig("link-mixtral-4-n4", "mixtral-mini", 4, 4, 8, 16, 24, link_gbps=4.0, device_gb=0.5),
    AccuracyConfig(
        "link-deepseek-v3-0.5-n4", "deepseek-v3-mini", None, 4, 8, 16, 32, link_gbps=0.5, device_gb=0.14
    ),
)


def profile_for(config: AccuracyConfig, profile):
    """The profile a config plans and reports with: behind its emulated link when it has one."""
    if config.link_gbps is None:
        return profile
    from planner.hardware.emulated_link import emulate_link

    return emulate_link(profile, config.link_gbps, config.device_gb)


def plan_for(config: AccuracyConfig, spec, profile, checkpoint_dir: Path, profile_ref: str):
    from planner.perf.memory import Budgets
    from planner.plans.build import make_plan
    from planner.plans.workload import Workload

    workload = Workload.fixed(config.prompt_len, config.gen_len, config.num_prompts)
    kv_gib = kv_budget_gib(spec, workload, config.num_seqs)
    return make_plan(
        spec,
        profile,
        workload,
        Budgets.from_args(profile, kv_gib),
        model_ref=str(checkpoint_dir),
        profile_ref=profile_ref,
        stream_on_host=config.streaming,
    )


def run_config(config: AccuracyConfig, profile_ref: str, report_path: Path, pass_index: int) -> dict:
    """One config's run in pass `pass_index`, in this process: checkpoint, plan, warm-up, measured run; writes
    and returns the report."""
    from planner.hardware.profile import load_profile
    from runtime.checkpoint import open_checkpoint
    from runtime.report import write_report

    profile = profile_for(config, load_profile(profile_ref))
    checkpoint_dir = ensure_checkpoint(config.model, config.layers)
    checkpoint = open_checkpoint(checkpoint_dir)
    plan = plan_for(config, checkpoint.spec, profile, checkpoint_dir, profile_ref)
    overrides = STREAMING_OVERRIDES if config.streaming else {}
    began = time.perf_counter()
    seed = len(config.name) + 100 * pass_index  # distinct prompts in every pass and for the warm-up
    warm_up = fixed_prompts(checkpoint.tokenizer, config.num_prompts, config.prompt_len, seed=seed + 1000)
    prompts = fixed_prompts(checkpoint.tokenizer, config.num_prompts, config.prompt_len, seed=seed)
    report = run_engine(
        checkpoint, plan, profile, prompts, config.gen_len, warm_up_prompts=warm_up, **overrides
    )
    report["bench_config"] = asdict(config)
    report["bench_pass"] = pass_index
    report["bench_seconds"] = time.perf_counter() - began
    report["profile_ref"] = profile_ref
    report_path.parent.mkdir(parents=True, exist_ok=True)
    write_report(report_path, report)
    return report


def median_report(pass_paths: list[Path], report_path: Path) -> dict:
    """The config's median pass (by achieved tok/s) written to `report_path`, with every pass's tok/s."""
    from runtime.report import write_report

    reports = [json.loads(p.read_text()) for p in pass_paths]
    achieved = [r["throughput"]["end_to_end"]["achieved"] for r in reports]
    report = sorted(reports, key=lambda r: r["throughput"]["end_to_end"]["achieved"])[len(reports) // 2]
    report["repeats_tok_s"] = achieved
    write_report(report_path, report)
    return report


def _reusable(path: Path, config: AccuracyConfig, fingerprint: str) -> bool:
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return (
        old.get("bench_config") == json.loads(json.dumps(asdict(config)))
        and old.get("profile", {}).get("plan_fingerprint") == fingerprint
    )


def run_all(
    configs: list[AccuracyConfig],
    profile_ref: str,
    reports_dir: Path,
    reuse: bool,
    timeout_s: float,
    passes: int = PASSES,
) -> list[Path]:
    from planner.hardware.profile import load_profile

    profile = load_profile(profile_ref)
    todo = []
    paths = {}
    for config in configs:
        path = reports_dir / f"{config.name}.json"
        if reuse and _reusable(path, config, profile_for(config, profile).fingerprint()):
            print(f"{config.name}: reusing {path}", flush=True)
            paths[config.name] = path
        else:
            todo.append(config)
    runs: dict[str, list[Path]] = {c.name: [] for c in todo}
    for pass_index in range(passes):
        for i, config in enumerate(todo, start=1):
            path = reports_dir / "passes" / f"{config.name}.pass{pass_index}.json"
            print(
                f"[pass {pass_index + 1}/{passes}, {i}/{len(todo)}] {config.name}: {config.model} N={config.num_seqs} "
                f"{config.num_prompts} prompts {config.prompt_len}+{config.gen_len}"
                f"{' forced streaming' if config.streaming else ''}"
                f"{f' emulated link {config.link_gbps:g} GB/s' if config.link_gbps else ''}",
                flush=True,
            )
            command = [
                sys.executable,
                "-m",
                "bench.bench_accuracy",
                "--worker",
                json.dumps(asdict(config)),
                "--profile",
                profile_ref,
                "--worker-report",
                str(path),
                "--worker-pass",
                str(pass_index),
            ]
            began = time.perf_counter()
            done = subprocess.run(command, cwd=REPO, timeout=timeout_s, check=False)
            if done.returncode != 0:
                print(f"    {config.name} failed (exit {done.returncode}); this pass left out", flush=True)
                continue
            e2e = json.loads(path.read_text())["throughput"]["end_to_end"]
            print(
                f"    achieved {e2e['achieved']:.3g} tok/s, plan {e2e['predicted']:.3g} tok/s "
                f"({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
            runs[config.name].append(path)
    for config in todo:
        if runs[config.name]:
            paths[config.name] = reports_dir / f"{config.name}.json"
            median_report(runs[config.name], paths[config.name])
    return [paths[c.name] for c in configs if c.name in paths]


def measure_this_machine(sizing: str, out_dir: Path, quick: bool) -> str:
    path = out_dir / f"profile{'-quick' if quick else ''}.yaml"
    print(f"measuring this machine (runtime profile --sizing {sizing}) into {path}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "runtime", "profile", "--sizing", sizing, "--out", str(path)],
        cwd=REPO,
        check=True,
    )
    return str(path)


def _profile_ref(given: str | None) -> str:
    from planner.hardware.profile import find_profile_for_this_machine

    return given or find_profile_for_this_machine().name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="halve prompts and generation lengths")
    parser.add_argument("--profile", help="profile to plan with (default: this machine's measured one)")
    parser.add_argument(
        "--measure-profile",
        choices=("quick", "full"),
        help="measure this machine first and plan with that profile",
    )
    parser.add_argument("--only", nargs="+", help="run only these config names")
    parser.add_argument("--reuse", action="store_true", help="keep reports of identical earlier runs")
    parser.add_argument("--no-markdown", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--out-dir", type=Path, default=ACCURACY_DIR, help="where reports and results go")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per config")
    parser.add_argument(
        "--link",
        action="store_true",
        help="the link-bound rows (an emulated link; bench.link_accuracy analyses them)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-pass", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_config(
            AccuracyConfig(**json.loads(args.worker)), args.profile, args.worker_report, args.worker_pass
        )
        return 0
    from bench.accuracy_analysis import analyse, write_outputs

    matrix = LINK_CONFIGS if args.link else CONFIGS
    known = {c.name for c in matrix}
    unknown = sorted(set(args.only or ()) - known)
    if unknown:
        parser.error(f"unknown config names {unknown}; known: {sorted(known)}")
    configs = [c.scaled(args.quick) for c in matrix if not args.only or c.name in args.only]
    machine = machine_line()
    if args.measure_profile:
        profile_ref = measure_this_machine(args.measure_profile, args.out_dir, args.quick)
    else:
        profile_ref = _profile_ref(args.profile)
    reports_dir = args.out_dir / (
        ("link-" if args.link else "") + ("reports-quick" if args.quick else "reports")
    )
    paths = run_all(configs, profile_ref, reports_dir, args.reuse, args.timeout_s)
    if not paths:
        print("no configuration ran; nothing to analyse", file=sys.stderr)
        return 1
    command = (
        "python -m bench.bench_accuracy"
        + (" --link" if args.link else "")
        + (" --quick" if args.quick else "")
        + (f" --profile {args.profile}" if args.profile else "")
        + (f" --measure-profile {args.measure_profile}" if args.measure_profile else "")
    )
    if args.link:
        from bench.link_accuracy import write_link_outputs

        write_link_outputs(
            paths,
            args.out_dir.parent,
            command,
            machine,
            markdown_section=not (args.no_markdown or args.quick),
            quick=args.quick,
        )
        return 0
    result = replace(analyse(paths, profile_ref), machine=machine)
    write_outputs(
        result,
        args.out_dir,
        command,
        markdown_section=not (args.no_markdown or args.quick),
        quick=args.quick,
        results_dir=args.out_dir.parent,
    )  # the CSV beside the reports' folder (default bench/results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Module-based against model-based batching in the link-bound regime, side by side in one command.

    python -m bench.bench_link_batching [--profile P] [--model qwen3-mini] [--link-gbps 0.5] [--device-gb 0.125]
                                        [--num-prompts 1024] [--prompt-len 16] [--gen-len 32] [--passes 3]
                                        [--pass K | --summarize]

One engine, one checkpoint, one emulated link (`planner.hardware.emulated_link`: this CPU behind a link paced to
`--link-gbps`, `--device-gb` of device memory) and one workload of `--num-prompts` prompts. Module-based
batching is the planner's plan (the KV cache in host memory, N as large as it allows, attention and experts
each at their own batch). Model-based batching is what FlexGen-style and HF-offload users run: one batch size
for every module, the KV cache held in device memory beside the resident weights and stream buffers, weights
streamed every forward; it runs at the planner's largest N that device memory allows (`planner solve
--batching model`) and at half of it, and its best is the comparison. Every system is planned (the
prediction) and run (achieved) in `--passes` interleaved passes; the median pass is reported. Writes
each run's report to `bench/results/link-batching/`, `bench/results/link-batching.csv` and the `link-batching` section of BENCHMARKS.md.
Passes too long for one hold of the machine run one at a time (`--pass K`, each saving its reports), then
`--summarize` reads passes 1..--passes back (refused where a saved run was planned otherwise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

from bench.common import (
    RESULTS_DIR,
    cpu_times,
    ensure_checkpoint,
    fixed_prompts,
    machine_line,
    markdown_table,
    run_engine,
    steal_share,
    update_section,
)
from planner.errors import UserError

ERROR_TARGET = 0.10
SPEEDUP_TARGET = 2.0


def plans(spec, profile, workload, host_kv_gb: float) -> dict:
    """The systems to compare: name -> plan (module batching; model batching at its largest N and at half)."""
    from planner.perf.memory import Budgets, kv_budget_gib
    from planner.plans.build import make_plan

    budgets = Budgets.from_args(profile, host_kv_gb)
    module = make_plan(spec, profile, workload, budgets)
    model = make_plan(spec, profile, workload, budgets, batching="model")
    half = max(model.decisions.num_seqs // 2, 1)
    model_half = make_plan(
        spec,
        profile,
        workload,
        Budgets.from_args(profile, kv_budget_gib(spec, workload, half)),
        batching="model",
    )
    return {
        "module batching": module,
        f"model batching N={model.decisions.num_seqs}": model,
        f"model batching N={model_half.decisions.num_seqs}": model_half,
    }


def run(args: argparse.Namespace) -> pd.DataFrame:
    import torch

    from planner.hardware.emulated_link import emulate_link
    from planner.hardware.profile import find_profile_for_this_machine, load_profile
    from planner.plans.workload import Workload
    from runtime.checkpoint import open_checkpoint
    from runtime.profiler.spot_check import machine_speed

    cpu = load_profile(args.profile) if args.profile else find_profile_for_this_machine()
    profile = emulate_link(cpu, args.link_gbps, args.device_gb)
    checkpoint = open_checkpoint(ensure_checkpoint(args.model, args.layers))
    workload = Workload.fixed(args.prompt_len, args.gen_len, args.num_prompts)
    systems = plans(checkpoint.spec, profile, workload, args.host_kv_gb)
    runs: dict[str, list[dict]] = {name: [] for name in systems}
    if args.summarize:
        return summary(systems, {name: saved_runs(name, plan, args.passes) for name, plan in systems.items()})

    def speed_now() -> float:
        return machine_speed(cpu, torch.device("cpu"))

    speed_now()  # a warm-up, unrecorded: a process's first spot GEMM read 0.75-0.96 of later ones
    for pass_index in [args.only_pass - 1] if args.only_pass else range(args.passes):
        for name, plan in systems.items():
            prompts = fixed_prompts(checkpoint.tokenizer, args.num_prompts, args.prompt_len, seed=pass_index)
            speed = speed_now()
            began, ticks = time.perf_counter(), cpu_times()
            report = run_engine(checkpoint, plan, profile, prompts, args.gen_len)
            report["cpu_steal_share"] = steal_share(ticks, cpu_times())
            report["machine_speed"] = [speed, speed_now()]
            e2e = report["throughput"]["end_to_end"]
            print(
                f"[pass {pass_index + 1}/{args.passes}] {name}: N={plan.decisions.num_seqs} achieved {e2e['achieved']:.1f} "
                f"tok/s, plan {e2e['predicted']:.1f} ({time.perf_counter() - began:.0f} s, "
                f"{report['cpu_steal_share']:.0%} of the CPU stolen, machine speed "
                f"{report['machine_speed'][0]:.2f} -> {report['machine_speed'][1]:.2f} of the profile's)",
                flush=True,
            )
            runs[name].append(report)
            saved = report_path(name, pass_index)
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(report, indent=1, default=str))
    return summary(systems, runs)


def report_path(name: str, pass_index: int) -> Path:
    return RESULTS_DIR / "link-batching" / f"{name.replace(' ', '-')}-pass{pass_index + 1}.json"


def saved_runs(name: str, plan, passes: int) -> list[dict]:
    """The saved reports of `name`'s passes 1..passes, each checked to be a run of this very plan."""
    reports = []
    for pass_index in range(passes):
        path = report_path(name, pass_index)
        report = json.loads(path.read_text()) if path.exists() else None
        if report is None or report["plan"]["predicted"] != json.loads(
            json.dumps(plan.to_dict()["predicted"])
        ):
            raise UserError(
                f"{path} is missing or was not planned as this run plans {name}",
                f"run `--pass {pass_index + 1}` with the same settings first",
            )
        reports.append(report)
    return reports


def summary(systems: dict, runs: dict[str, list[dict]]) -> pd.DataFrame:
    rows = []
    for name, plan in systems.items():
        achieved = [r["throughput"]["end_to_end"]["achieved"] for r in runs[name]]
        median = statistics.median(achieved)
        link = [r["utilisation"]["resources"]["link"]["achieved"] for r in runs[name]]
        rows.append(
            {
                "system": name,
                "batching": plan.decisions.batching,
                "num_seqs": plan.decisions.num_seqs,
                "kv_where": "device" if plan.decisions.batching == "model" else "host",
                "kv_mib": plan.decisions.kv_budget_bytes / float(1 << 20),
                "predicted_tok_s": plan.predicted.generated_tok_s,
                "achieved_tok_s": median,
                "error": (plan.predicted.generated_tok_s - median) / median,
                "passes_tok_s": " ".join(f"{v:.4g}" for v in achieved),
                "bottleneck": plan.bottleneck,
                "link_busy_plan": plan.utilisation.get("link"),
                "link_busy_measured": statistics.median(link),
                "cpu_steal": " ".join(f"{r.get('cpu_steal_share', 0.0):.0%}" for r in runs[name]),
                "machine_speed": " / ".join(
                    "{:.2f}, {:.2f}".format(*r["machine_speed"]) if "machine_speed" in r else "-"
                    for r in runs[name]
                ),
            }
        )
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, args: argparse.Namespace, command: str, machine: str) -> str:
    module = frame[frame["batching"] == "module"].iloc[0]
    model = frame[frame["batching"] == "model"]
    best = model.loc[model["achieved_tok_s"].idxmax()]
    speedup = module["achieved_tok_s"] / best["achieved_tok_s"]
    predicted_speedup = module["predicted_tok_s"] / best["predicted_tok_s"]
    table = markdown_table(
        [
            "system",
            "N",
            "KV in",
            "KV MiB",
            "predicted tok/s",
            "achieved tok/s (median)",
            "error",
            "passes tok/s",
            "plan bottleneck",
            "link busy plan",
            "link busy measured",
            "CPU stolen (per pass)",
            "machine speed / profile's (before, after; per pass)",
        ],
        [
            [
                r.system,
                r.num_seqs,
                r.kv_where,
                r.kv_mib,
                r.predicted_tok_s,
                r.achieved_tok_s,
                f"{r.error:+.1%}",
                r.passes_tok_s,
                r.bottleneck,
                f"{r.link_busy_plan:.0%}",
                f"{r.link_busy_measured:.0%}",
                r.cpu_steal,
                r.machine_speed,
            ]
            for r in frame.itertuples()
        ],
    )
    compared = [module["error"], best["error"]]  # the two: module batching, model-based at its best N
    within = all(abs(e) <= ERROR_TARGET for e in compared)
    others = "; ".join(
        f"{r.system}: {r.error:+.1%}" for r in model.itertuples() if r.num_seqs != best["num_seqs"]
    )
    return "\n".join(
        [
            "## Module-based against model-based batching behind an emulated link",
            "",
            f"Command: `/work/bin/cpu-exclusive {command}` ({args.passes} interleaved passes, median"
            + (
                ", each run alone in its own hold with `--pass K`, read back by `--summarize`"
                if args.summarize
                else ""
            )
            + f"). {machine}",
            f"{args.model}{f' ({args.layers} layers)' if args.layers else ''}, one checkpoint, one engine; this CPU "
            f"behind an emulated {args.link_gbps:g} GB/s link with {args.device_gb:g} GiB of device memory; "
            f"{args.num_prompts} prompts of {args.prompt_len} + {args.gen_len} tokens. Model-based batching keeps the "
            "KV cache in device memory (so device memory bounds its batch) and runs one batch size through every "
            "module; module-based batching keeps the KV cache in host memory and batches each module on its own. "
            "Machine speed: the spot GEMM's rate over the profile's fingerprint before and after each run (a VM's "
            "speed drifts with its neighbours; module batching is CPU-bound, model batching paced by the link).",
            "",
            table,
            "",
            f"Module batching {speedup:.2f}x model batching at its best batch size (N={best['num_seqs']}); the planner "
            f"predicted {predicted_speedup:.2f}x. Target >= {SPEEDUP_TARGET:g}x: "
            f"{'met' if speedup >= SPEEDUP_TARGET else 'not met'}; both predictions (module batching "
            f"{module['error']:+.1%}, model batching at N={best['num_seqs']} {best['error']:+.1%}) within "
            f"{ERROR_TARGET:.0%}: {'yes' if within else 'no'}"
            + (f" (the other batch sizes: {others})." if others else "."),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_link_batching", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="CPU profile to emulate the link on (default: this machine's)")
    parser.add_argument("--model", default="qwen3-mini")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--link-gbps", type=float, default=0.5)
    parser.add_argument("--device-gb", type=float, default=0.125)
    parser.add_argument(
        "--host-kv-gb", type=float, default=1.0, help="host KV budget of module batching, GiB"
    )
    parser.add_argument("--num-prompts", type=int, default=1024)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--gen-len", type=int, default=32)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--pass", dest="only_pass", type=int, help="run only pass K (1..--passes), saving it")
    parser.add_argument("--summarize", action="store_true", help="read the saved passes back, run nothing")
    parser.add_argument("--no-markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.only_pass is not None and not 1 <= args.only_pass <= args.passes:
        parser.error(f"--pass {args.only_pass} is not one of the {args.passes} passes")
    machine = machine_line()
    frame = run(args)
    if args.only_pass:
        print(f"pass {args.only_pass} saved; `--summarize` reads passes 1..{args.passes} back once all ran")
        return 0
    out = RESULTS_DIR / "link-batching.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False, float_format="%.6g")
    print(
        frame[
            ["system", "num_seqs", "predicted_tok_s", "achieved_tok_s", "error", "link_busy_measured"]
        ].to_string(index=False)
    )
    command = "python -m bench.bench_link_batching " + " ".join(argv if argv is not None else sys.argv[1:])
    body = markdown(frame, args, command.strip(), machine)
    print(body.splitlines()[-1])
    if not args.no_markdown:
        update_section("link-batching", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

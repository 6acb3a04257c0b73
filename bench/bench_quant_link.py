"""Quantized weights behind the emulated link: bytes streamed per step and tok/s, bf16 against fp8, predicted
beside achieved.

    python -m bench.bench_quant_link --prepare        # write the checkpoints (outside a cpu-exclusive hold)
    /work/bin/cpu-exclusive python -m bench.bench_quant_link [--gbps 0.2] [--formats bf16,fp8] [--passes 3]

mixtral-mini truncated to 2 layers (random weights), written by `runtime make-checkpoint` as bf16 and `--quant
fp8` (every linear layer but lm_head, 128x128 block scales; `mxfp4`, the routed experts, on request). This
machine's profile, with its dequantization cost measured first (`runtime.profiler.dequant`, the profiler's
stage), behind an emulated link of GBPS and DEVICE_GB: each format gets its own plan (routed experts streamed
through the paced copy worker, everything else resident) and the engine runs it over PROMPTS prompts. The
quantized weights cross quantized and are dequantized in the expert path. Bytes per step are the streamer's
`copied_bytes` over the engine's steps. The formats run interleaved, `--passes` times; the table gives medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

MODEL, LAYERS = "mixtral-mini", 2
PROMPTS, PROMPT_LEN, GEN_LEN = 16, 32, 16


def checkpoints(formats: tuple[str, ...]) -> dict[str, str]:
    from bench.common import bench_dir, ensure_checkpoint
    from planner.specs.spec import load_spec
    from runtime.checkpoint.writer import write_random_checkpoint

    paths = {"bf16": str(ensure_checkpoint(MODEL, LAYERS))}
    spec = load_spec(MODEL).with_layers(LAYERS)
    for quant in (f for f in formats if f != "bf16"):
        directory = bench_dir() / f"{spec.name}-{quant}"
        if not (directory / "model.safetensors").is_file():
            write_random_checkpoint(spec, directory, quant=quant)
        paths[quant] = str(directory)
    return {name: paths[name] for name in formats}


def plans(paths: dict[str, str], args: argparse.Namespace) -> tuple[dict, object]:
    """One plan per format on this machine's profile (dequantization measured now) behind the emulated link."""
    import torch

    from planner.hardware.emulated_link import emulate_link
    from planner.hardware.profile import find_profile_for_this_machine
    from planner.perf.memory import Budgets
    from planner.plans.build import make_plan
    from planner.plans.workload import Workload
    from planner.specs.spec import load_spec
    from runtime.profiler.dequant import measure_dequant

    dequant_ns = measure_dequant(torch.device("cpu"), torch.bfloat16, 8 << 20, repeats=3)
    cpu = dataclasses.replace(find_profile_for_this_machine(), dequant_ns=dequant_ns)
    profile = emulate_link(cpu, args.gbps, args.device_gb)
    workload = Workload.fixed(PROMPT_LEN, GEN_LEN, PROMPTS)
    budgets = Budgets.from_args(profile, args.kv_gb)
    return {
        name: make_plan(load_spec(path), profile, workload, budgets, model_ref=path)
        for name, path in paths.items()
    }, profile


def run_once(path: str, plan, profile) -> dict:
    from bench.common import fixed_prompts
    from runtime.checkpoint import open_checkpoint
    from runtime.engine import Engine, EngineConfig
    from runtime.report import build_report
    from runtime.report.job_run import fixed_length_requests, run_tallied

    checkpoint = open_checkpoint(path)
    prompts = fixed_prompts(checkpoint.tokenizer, PROMPTS, PROMPT_LEN)
    engine = Engine(checkpoint, EngineConfig.from_plan(plan))
    try:
        stats, tally = run_tallied(engine, fixed_length_requests(prompts, GEN_LEN))
        copied = engine.streamer.copied_bytes
    finally:
        engine.close()
    report = build_report(stats, plan, profile, checkpoint.spec, tally)
    e2e = report["throughput"]["end_to_end"]
    return {
        "bytes_per_step": copied / stats.steps,
        "tok_s": e2e["achieved"],
        "predicted_tok_s": e2e["predicted"],
        "experts_s_per_step": stats.per_decode_step().get("experts", 0.0),
        "link_busy_s": stats.link_busy_seconds,
        "wall_s": stats.wall_seconds,
    }


def markdown(medians: dict[str, dict], plans_: dict, command: str, machine: str, args) -> str:
    from bench.common import markdown_table

    base = medians["bf16"]
    rows = [
        [
            f"{name} ({plans_[name].weights_words})",
            plans_[name].decisions.num_seqs,
            plans_[name].decisions.stream_parts,
            r["bytes_per_step"] / 1e6,
            f"{r['bytes_per_step'] / base['bytes_per_step']:.2f}x",
            r["predicted_tok_s"],
            r["tok_s"],
            f"{r['tok_s'] / base['tok_s']:.2f}x",
            f"{(r['predicted_tok_s'] - r['tok_s']) / r['tok_s']:+.0%}",
            r["experts_s_per_step"],
            plans_[name].bottleneck,
        ]
        for name, r in medians.items()
    ]
    header = ["weights", "N", "parts", "MB streamed / step", "vs bf16", "predicted tok/s", "achieved tok/s"]
    header += ["vs bf16", "plan error", "experts s / decode step", "plan bottleneck"]
    return "\n".join(
        [
            f"Command: `{command}` ({machine}). {MODEL} {LAYERS} layers, routed experts streamed through the "
            f"emulated link at {args.gbps:g} GB/s ({args.device_gb:g} GiB device), {PROMPTS} prompts x "
            f"{PROMPT_LEN} tokens, {GEN_LEN} generated each; medians of {args.passes} interleaved passes; "
            "bytes counted by the streamer; predicted = the plan's end-to-end tok/s.",
            "",
            markdown_table(header, rows),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_quant_link", description=__doc__.splitlines()[0])
    parser.add_argument("--gbps", type=float, default=0.2)
    parser.add_argument("--device-gb", type=float, default=0.3)
    parser.add_argument("--kv-gb", type=float, default=0.25)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--formats", default="bf16,fp8", help="comma-separated: bf16 first, then fp8 / mxfp4")
    parser.add_argument("--prepare", action="store_true", help="only write the checkpoints")
    parser.add_argument("--plan-only", action="store_true", help="print the plans, run nothing")
    parser.add_argument("--no-markdown", action="store_true")
    args = parser.parse_args(argv)
    from bench.common import machine_line, update_section

    formats = tuple(args.formats.split(","))
    if formats[0] != "bf16" or not set(formats) <= {"bf16", "fp8", "mxfp4"}:
        parser.error("--formats: bf16 first, then any of fp8, mxfp4")
    paths = checkpoints(formats)
    if args.prepare:
        return 0
    machine = machine_line()
    plans_, profile = plans(paths, args)
    for name, plan in plans_.items():
        print(
            f"{name}: {plan.weights_words}; N={plan.decisions.num_seqs}, parts {plan.decisions.stream_parts}, "
            f"predicted {plan.predicted.generated_tok_s:.2f} tok/s, bottleneck {plan.bottleneck}",
            flush=True,
        )
    if args.plan_only:
        return 0
    runs: dict[str, list[dict]] = {name: [] for name in formats}
    for index in range(args.passes):
        for name in formats:
            began = time.perf_counter()
            runs[name].append(run_once(paths[name], plans_[name], profile))
            r = runs[name][-1]
            print(
                f"[pass {index + 1}/{args.passes}] {name}: {r['tok_s']:.2f} tok/s (plan "
                f"{r['predicted_tok_s']:.2f}), {r['bytes_per_step'] / 1e6:.1f} MB/step "
                f"({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    command = "python -m bench.bench_quant_link " + " ".join(argv if argv is not None else sys.argv[1:])
    body = markdown(medians, plans_, command.strip(), machine, args)
    print(body)
    if not args.no_markdown:
        title = f"## FP8 weights behind an emulated {args.gbps:g} GB/s link: bytes per step and tok/s"
        update_section(f"quant_link_{args.gbps:g}", f"{title}\n\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput against baselines (issue 8 §1, issue 6's target), side by side in one command on one checkpoint.

    python -m bench.bench_throughput [--quick] [--profile P] [--repeats K] [--no-markdown]

On a random-weight bf16 `mixtral-mini` checkpoint (`bench.common.ensure_checkpoint`), with 256 distinct
prompts of 128 tokens and 64 generated tokens each, every request ignore_eos (`--quick`: 32 prompts of 64
tokens, 16 generated):
- `hf`: HF transformers `generate()` (greedy, left padding, `min_new_tokens = max_new_tokens`) over the
  prompts in batches of B, at the best B of `--hf-batches`;
- `engine-off`: our engine with module batching off (`batching="model"` in the EngineConfig decisions: one batch size,
  N = B, through the whole forward) at the best B of `--off-batches`;
- `engine-planned`: our engine running the planner's plan for this machine's profile.
The best batch size of each baseline is picked on one probe run each (the first B x 2 prompts, at most all);
then each system runs the whole workload `--repeats` times, the systems interleaved, and the median is reported, with the ratios, the
plan's predicted tok/s beside the achieved, and peak host memory (RSS high-water mark of a fresh process per
run) against the plan. Results: `bench/results/throughput[-quick].json` and (not for `--quick`, a smoke run)
the `throughput` section of BENCHMARKS.md, replaced on every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    ensure_checkpoint,
    machine_line,
    markdown_table,
    run_worker,
    update_section,
)
from planner.units import GiB

FULL = {
    "num_prompts": 256,
    "prompt_len": 128,
    "gen_len": 64,
    "hf_batches": [16, 64, 128, 256],
    "off_batches": [16, 64, 256],
    "repeats": 3,
}
QUICK = {
    "num_prompts": 32,
    "prompt_len": 64,
    "gen_len": 16,
    "hf_batches": [8, 32],
    "off_batches": [8, 32],
    "repeats": 1,
}
KV_GIB = 4.0


def make_plan_for(checkpoint, checkpoint_dir: Path, profile, profile_ref: str, sizes: dict):
    from planner.perf.memory import Budgets
    from planner.plans.build import make_plan
    from planner.plans.workload import Workload

    workload = Workload.fixed(sizes["prompt_len"], sizes["gen_len"], sizes["num_prompts"])
    return make_plan(
        checkpoint.spec,
        profile,
        workload,
        Budgets.from_args(profile, KV_GIB),
        model_ref=str(checkpoint_dir),
        profile_ref=profile_ref,
    )


def run_hf(checkpoint_dir: Path, prompts: list[list[int]], gen_len: int, batch: int, pad_id: int) -> dict:
    """HF transformers generate() over the prompts in batches of `batch`, left padded."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.bfloat16).eval()
    generated = 0
    began = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            chunk = prompts[start : start + batch]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=gen_len,
                min_new_tokens=gen_len,
                do_sample=False,
                pad_token_id=pad_id,
            )
            generated += (out.shape[1] - width) * len(chunk)
    return {"wall_s": time.perf_counter() - began, "generated_tokens": generated}


def worker(job: dict) -> dict:
    """One measurement in this (fresh) process."""
    from bench.common import fixed_prompts, run_engine
    from planner.hardware.profile import load_profile
    from runtime.checkpoint import open_checkpoint
    from runtime.peak_rss import peak_rss_bytes

    checkpoint_dir = Path(job["checkpoint"])
    checkpoint = open_checkpoint(checkpoint_dir)
    prompts = fixed_prompts(checkpoint.tokenizer, job["num_prompts"], job["prompt_len"], seed=1)
    speed_before = machine_speed(job["profile"])
    if job["system"] == "hf":
        result = run_hf(checkpoint_dir, prompts, job["gen_len"], job["batch"], pad_id=0)
    else:
        profile = load_profile(job["profile"])
        plan = make_plan_for(checkpoint, checkpoint_dir, profile, job["profile"], job["sizes"])
        overrides = {}
        if job["system"] == "engine-off":
            b = job["batch"]
            kv = max(
                plan.decisions.kv_budget_bytes,
                plan.decisions.kv_budget_bytes * b // plan.decisions.num_seqs + 1,
            )
            overrides = {"batching": "model", "num_seqs": b, "attn_batch": b, "kv_budget_bytes": kv}
        report = run_engine(checkpoint, plan, profile, prompts, job["gen_len"], **overrides)
        stats = report["run_stats"]
        result = {
            "wall_s": stats["wall_seconds"],
            "generated_tokens": stats["generated_tokens"],
            "plan_tok_s": plan.predicted.generated_tok_s,
            "plan_host_bytes": plan.memory["host"]["total"],
            "plan_host_budget": plan.memory["host"]["budget"],
            "num_seqs": stats["config"]["num_seqs"],
            "decode_step_ms": 1e3 * stats["decode_seconds"] / max(stats["decode_steps"], 1),
            "throughput": report["throughput"],  # predicted against achieved, per phase and module
            "decode_step_modules": report["decode_step_modules"],
            "prefill_modules": report["prefill_modules"],
        }
    result["peak_host_bytes"] = peak_rss_bytes()
    result["tok_s"] = result["generated_tokens"] / result["wall_s"]
    result["machine_speed"] = [speed_before, machine_speed(job["profile"])]
    return result


def machine_speed(profile_ref: str) -> float:
    """`runtime.profiler.spot_check.machine_speed` on the CPU: this VM's speed drifts by tens of percent within
    minutes, which moves every system's tok/s and the plan's error alike."""
    import torch

    from planner.hardware.profile import load_profile
    from runtime.profiler import spot_check

    return spot_check.machine_speed(load_profile(profile_ref), torch.device("cpu"))


def measure(job: dict, timeout_s: float) -> dict | None:
    result = run_worker("bench.bench_throughput", job, timeout_s)
    if result is not None:
        print(
            f"    {job['system']} B={job.get('batch', '-')}, {job['num_prompts']} prompts: {result['tok_s']:.3g} "
            f"tok/s ({result['wall_s']:.0f} s)",
            flush=True,
        )
    return result


def best_batch(system: str, batches: list[int], base: dict, timeout_s: float) -> tuple[int, list[dict]]:
    if len(batches) == 1:  # nothing to choose: no probe run
        return batches[0], []
    probes = []
    for b in batches:
        result = measure(
            {**base, "system": system, "batch": b, "num_prompts": min(2 * b, base["num_prompts"])}, timeout_s
        )
        if result is not None:
            probes.append({"batch": b, **result})
    if not probes:
        raise RuntimeError(f"every {system} probe failed")
    return max(probes, key=lambda r: r["tok_s"])["batch"], probes


def median_runs(jobs: dict[str, dict], repeats: int, timeout_s: float) -> dict[str, dict]:
    """`repeats` full runs of every system, interleaved (A B C A B C ...) so drift in the machine's load
    touches each system alike; per system the median tok/s and the run closest to it."""
    runs: dict[str, list[dict]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            result = measure(job, timeout_s)
            if result is not None:
                runs[name].append(result)
    medians = {}
    for name, results in runs.items():
        if not results:
            raise RuntimeError(f"every {name} run failed")
        median = statistics.median(r["tok_s"] for r in results)
        chosen = min(results, key=lambda r: abs(r["tok_s"] - median))
        medians[name] = {
            **chosen,
            "tok_s": median,
            "all_tok_s": [r["tok_s"] for r in results],
            "all_speeds": [r["machine_speed"] for r in results],
        }
    return medians


def markdown(results: dict, command: str, machine: str) -> str:
    sizes, systems = results["sizes"], results["systems"]
    planned = systems["engine-planned"]
    rows = []
    for name, label in (
        ("hf", "HF transformers generate()"),
        ("engine-off", "engine, module batching off"),
        ("engine-planned", "engine as planned"),
    ):
        r = systems[name]
        batch = f"N={r['num_seqs']}" if name == "engine-planned" else f"B={r['batch']}"
        rows.append(
            [
                label,
                batch,
                r["tok_s"],
                " / ".join(f"{v:.3g}" for v in r["all_tok_s"]),
                planned["tok_s"] / r["tok_s"],
                f"{r['peak_host_bytes'] / GiB:.2f}",
                " / ".join(f"{a:.2f}, {b:.2f}" for a, b in r.get("all_speeds", [r["machine_speed"]])),
            ]
        )
    table = markdown_table(
        [
            "system",
            "batch",
            "generated tok/s (median)",
            "repeats",
            "engine-planned / this",
            "peak host GiB",
            "machine speed / profile's (before, after)",
        ],
        rows,
    )
    err = planned["plan_tok_s"] / planned["tok_s"] - 1  # (predicted - achieved) / achieved
    return "\n".join(
        [
            f"## Throughput against baselines (`{command}`)",
            "",
            machine,
            f"`mixtral-mini` random-weight bf16 checkpoint; {sizes['num_prompts']} distinct prompts of "
            f"{sizes['prompt_len']} tokens, {sizes['gen_len']} generated each, ignore_eos; profile "
            f"`{results['profile']}`. Best baseline batch sizes from probes: HF {results['hf_probes']}, "
            f"module batching off {results['off_probes']} (tok/s by B).",
            "",
            table,
            "",
            f"- engine as planned: {planned['tok_s']:.3g} generated tok/s achieved, {planned['plan_tok_s']:.3g} "
            f"predicted by the plan (error {100 * err:+.1f}%; target within 10%)",
            f"- ratios: {planned['tok_s'] / systems['hf']['tok_s']:.2f}x HF generate() (target >= 3x), "
            f"{planned['tok_s'] / systems['engine-off']['tok_s']:.2f}x module batching off (target >= 2x)",
            f"- peak host memory {planned['peak_host_bytes'] / GiB:.2f} GiB against the plan's "
            f"{planned['plan_host_bytes'] / GiB:.2f} GiB (budget {planned['plan_host_budget'] / GiB:.2f} GiB)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_throughput", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="32 prompts of 64 tokens, 16 generated, one repeat"
    )
    parser.add_argument("--profile", help="profile to plan with (default: this machine's measured one)")
    parser.add_argument("--repeats", type=int, help="full runs per system (default 3, --quick 1)")
    parser.add_argument("--hf-batches", type=int, nargs="+", help="HF generate() batch sizes to try")
    parser.add_argument("--off-batches", type=int, nargs="+", help="module-batching-off batch sizes to try")
    parser.add_argument("--timeout-s", type=float, default=7200.0, help="per run")
    parser.add_argument("--no-markdown", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.worker_out.write_text(json.dumps(worker(json.loads(args.worker))))
        return 0
    from planner.hardware.profile import find_profile_for_this_machine

    sizes = dict(QUICK if args.quick else FULL)
    repeats = args.repeats or sizes["repeats"]
    profile_ref = args.profile or find_profile_for_this_machine().name
    machine = machine_line()
    checkpoint_dir = ensure_checkpoint("mixtral-mini")
    base = {
        "checkpoint": str(checkpoint_dir),
        "profile": profile_ref,
        "sizes": sizes,
        "num_prompts": sizes["num_prompts"],
        "prompt_len": sizes["prompt_len"],
        "gen_len": sizes["gen_len"],
    }
    print("probing batch sizes", flush=True)
    hf_batch, hf_probes = best_batch("hf", args.hf_batches or sizes["hf_batches"], base, args.timeout_s)
    off_batch, off_probes = best_batch(
        "engine-off", args.off_batches or sizes["off_batches"], base, args.timeout_s
    )
    print(f"full runs ({repeats} each)", flush=True)
    systems = median_runs(
        {
            "hf": {**base, "system": "hf", "batch": hf_batch},
            "engine-off": {**base, "system": "engine-off", "batch": off_batch},
            "engine-planned": {**base, "system": "engine-planned"},
        },
        repeats,
        args.timeout_s,
    )
    systems["hf"]["batch"], systems["engine-off"]["batch"] = hf_batch, off_batch
    command = "python -m bench.bench_throughput " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {
        "command": command,
        "machine": machine,
        "profile": profile_ref,
        "sizes": sizes,
        "systems": systems,
        "hf_probes": {p["batch"]: round(p["tok_s"], 3) for p in hf_probes},
        "off_probes": {p["batch"]: round(p["tok_s"], 3) for p in off_probes},
    }
    out = RESULTS_DIR / f"throughput{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results, command, machine)
    print(text)
    if not (args.no_markdown or args.quick):
        update_section("throughput", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU benchmark (issue 8 §4): weights that must stream, predicted vs achieved, against HF + accelerate offload.

    python -m bench.bench_gpu [--quick] [--device-fraction 0.5 | --device-gb G] [--mixtral-layers 8]
                              [--deepseek-layers 8] [--no-markdown]

Runs unattended when a CUDA GPU is present; without one it prints why and exits 0 (so `make bench` goes on).
For each model — real-shape Mixtral-8x7B truncated to `--mixtral-layers` layers, and a DeepSeek-V2-Lite-shaped
model (MLA, 64 experts + 2 shared, first layer dense) truncated to `--deepseek-layers` — it writes a random bf16
checkpoint (`bench.common.ensure_checkpoint`), uses this machine's measured profile (measured with `runtime
profile --quick` first if there is none), solves a plan whose device budget is capped at `--device-fraction`
of the model's weights (or `--device-gb`; less than the weights, so experts must stream; the worker also caps
the CUDA allocator at that size), runs the
engine on it, and runs HF transformers `generate()` with accelerate offload (`device_map="auto"`, `max_memory`
= the same device cap) at the best of a few batch sizes. Workload: 256 prompts of 128 tokens, 64 generated,
ignore_eos (`--quick`: 32 prompts, 16 generated). Each run is a fresh subprocess. Results:
`bench/results/gpu.json` and the `gpu` section of BENCHMARKS.md. accelerate is the optional `gpu` extra.
"""

from __future__ import annotations

import argparse
import json
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

GiB = float(1 << 30)
FULL = {"num_prompts": 256, "prompt_len": 128, "gen_len": 64, "hf_batches": [8, 32, 128]}
QUICK = {"num_prompts": 32, "prompt_len": 128, "gen_len": 16, "hf_batches": [8, 32]}
KV_GIB = 16.0
HOST_OFFLOAD_GIB = 100


def gpu_models(mixtral_layers: int, deepseek_layers: int) -> list[tuple[str, int]]:
    return [("mixtral-8x7b", mixtral_layers), ("deepseek-v2-lite", deepseek_layers)]


def capped_plan(spec, profile, profile_ref: str, checkpoint_dir: Path, sizes: dict, device_gb: float):
    """The planner's plan with the device budget capped so that weights must stream."""
    from planner.costs import ModelCosts
    from planner.errors import UserError
    from planner.perf_memory import Budgets
    from planner.plan_build import make_plan
    from planner.workload import Workload

    weights_gib = ModelCosts(spec).total_bytes() / GiB
    if device_gb >= weights_gib:
        raise UserError(f"--device-gb {device_gb} holds all {weights_gib:.1f} GiB of {spec.name}: nothing would "
                        "stream", "pass a smaller --device-gb")
    workload = Workload.fixed(sizes["prompt_len"], sizes["gen_len"], sizes["num_prompts"])
    plan = make_plan(spec, profile, workload, Budgets.from_args(profile, KV_GIB, device_gb=device_gb),
                     model_ref=str(checkpoint_dir), profile_ref=profile_ref)
    if not plan.stream_weights:
        raise UserError(f"the plan for {spec.name} keeps every weight on the device under {device_gb} GiB",
                        "pass a smaller --device-gb")
    return plan


def hf_max_memory(device_gb: float, host_gib: float = HOST_OFFLOAD_GIB) -> dict:
    """accelerate's max_memory: the device cap on GPU 0, the rest offloaded to host memory."""
    return {0: f"{device_gb:g}GiB", "cpu": f"{host_gib:g}GiB"}


def _cap_cuda(device_gb: float) -> None:
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(device_gb * GiB / total, 1.0), 0)


def run_hf_offload(checkpoint_dir: Path, prompts: list[list[int]], gen_len: int, batch: int,
                   device_gb: float) -> dict:
    import torch
    import transformers

    try:
        import accelerate  # noqa: F401  (device_map offload needs it)
    except ImportError as err:
        raise SystemExit("HF offload baseline needs accelerate: pip install -e '.[gpu]'") from err
    model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint_dir, dtype=torch.bfloat16, device_map="auto", max_memory=hf_max_memory(device_gb)).eval()
    generated, began = 0, time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            chunk = prompts[start:start + batch]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk], device="cuda")
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device="cuda")
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=gen_len, min_new_tokens=gen_len,
                                 do_sample=False, pad_token_id=0)
            generated += (out.shape[1] - width) * len(chunk)
    torch.cuda.synchronize()
    return {"wall_s": time.perf_counter() - began, "generated_tokens": generated,
            "peak_device_bytes": torch.cuda.max_memory_allocated()}


def worker(job: dict) -> dict:
    from bench.common import fixed_prompts, run_engine
    from planner.profile import load_profile
    from runtime.checkpoint import open_checkpoint

    _cap_cuda(job["device_gb"])
    checkpoint_dir = Path(job["checkpoint"])
    checkpoint = open_checkpoint(checkpoint_dir)
    prompts = fixed_prompts(checkpoint.tokenizer, job["num_prompts"], job["sizes"]["prompt_len"], seed=2)
    gen_len = job["sizes"]["gen_len"]
    if job["system"] == "hf-offload":
        result = run_hf_offload(checkpoint_dir, prompts, gen_len, job["batch"], job["device_gb"])
    else:
        profile = load_profile(job["profile"])
        plan = capped_plan(checkpoint.spec, profile, job["profile"], checkpoint_dir, job["sizes"], job["device_gb"])
        report = run_engine(checkpoint, plan, profile, prompts, gen_len)
        e2e = report["throughput"]["end_to_end"]
        result = {"wall_s": report["elapsed_time"], "generated_tokens": report["output_tokens"],
                  "plan_tok_s": e2e["predicted"], "peak_device_bytes": report["memory"]["device"]["peak_bytes"],
                  "num_seqs": plan.num_seqs, "resident_experts_per_layer": plan.resident_experts_per_layer,
                  "s_mbu": report["utilisation"]["s_mbu"]["achieved"],
                  "s_mfu": report["utilisation"]["s_mfu"]["achieved"],
                  "modules": report["decode_step_modules"]}
    result["tok_s"] = result["generated_tokens"] / result["wall_s"]
    return result


def _measure(job: dict, timeout_s: float) -> dict | None:
    result = run_worker("bench.bench_gpu", job, timeout_s)
    if result is not None:
        print(f"    {job['system']} B={job.get('batch', '-')}: {result['tok_s']:.4g} tok/s", flush=True)
    return result


def _this_machine_profile() -> str:
    from planner import locations
    from planner.errors import UserError
    from planner.profile import find_profile_for_this_machine

    try:
        return find_profile_for_this_machine().name
    except UserError:
        from runtime.profiler.measure import SIZINGS, measure_profile

        profile = measure_profile(SIZINGS["quick"], command="runtime profile --quick (bench_gpu)")
        return str(profile.save(locations.user_file("profiles", profile.name)))


def markdown(results: dict, command: str) -> str:
    rows = []
    for r in results["models"]:
        engine, hf = r["engine"], r["hf"]
        rows.append([r["model"], f"{r['weights_gib']:.1f}", f"{r['device_gb']:g}", engine["num_seqs"],
                     engine["plan_tok_s"], engine["tok_s"], f"{100 * (engine['plan_tok_s'] / engine['tok_s'] - 1):+.1f}%",
                     hf["tok_s"] if hf else "-", hf and f"B={hf['batch']}" or "-",
                     f"{engine['tok_s'] / hf['tok_s']:.2f}x" if hf else "-"])
    table = markdown_table(["model", "weights GiB", "device cap GiB", "N", "predicted tok/s", "achieved tok/s",
                            "error", "HF offload tok/s", "HF batch", "engine / HF"], rows)
    return "\n".join([f"## GPU: streaming weights (`{command}`)", "", results["machine"],
                      f"Profile `{results['profile']}`; {results['sizes']['num_prompts']} prompts of "
                      f"{results['sizes']['prompt_len']} tokens, {results['sizes']['gen_len']} generated each.", "",
                      table])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 prompts, 16 generated")
    parser.add_argument("--device-fraction", type=float, default=0.5,
                        help="device memory cap as a fraction of each model's weights (default 0.5)")
    parser.add_argument("--device-gb", type=float, help="device memory cap, GiB, for every model instead")
    parser.add_argument("--mixtral-layers", type=int, default=8)
    parser.add_argument("--deepseek-layers", type=int, default=8)
    parser.add_argument("--timeout-s", type=float, default=7200.0)
    parser.add_argument("--no-markdown", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.worker_out.write_text(json.dumps(worker(json.loads(args.worker))))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: skipped, no CUDA GPU here (torch.cuda.is_available() is False); run it on a machine "
              "with one and a CUDA build of torch")
        return 0
    sizes = QUICK if args.quick else FULL
    machine, profile_ref = machine_line(), _this_machine_profile()
    results = {"machine": machine, "profile": profile_ref, "sizes": sizes, "models": []}
    from planner.costs import ModelCosts
    from planner.spec import load_spec

    for model, layers in gpu_models(args.mixtral_layers, args.deepseek_layers):
        checkpoint_dir = ensure_checkpoint(model, layers)
        spec = load_spec(model).with_layers(layers)
        weights_gib = ModelCosts(spec).total_bytes() / GiB
        device_gb = args.device_gb or round(args.device_fraction * weights_gib, 2)
        base = {"checkpoint": str(checkpoint_dir), "profile": profile_ref, "sizes": sizes,
                "num_prompts": sizes["num_prompts"], "device_gb": device_gb}
        print(f"{spec.name}: engine", flush=True)
        engine = _measure({**base, "system": "engine"}, args.timeout_s)
        if engine is None:
            continue
        hf_runs = [{"batch": b, **r} for b in sizes["hf_batches"]
                   if (r := _measure({**base, "system": "hf-offload", "batch": b}, args.timeout_s)) is not None]
        hf = max(hf_runs, key=lambda r: r["tok_s"]) if hf_runs else None
        results["models"].append({"model": spec.name, "weights_gib": weights_gib, "device_gb": device_gb,
                                  "engine": engine, "hf": hf, "hf_runs": hf_runs})
    (RESULTS_DIR / "gpu.json").write_text(json.dumps(results, indent=1) + "\n")
    command = "python -m bench.bench_gpu" + (" --quick" if args.quick else "")
    text = markdown(results, command)
    print(text)
    if not (args.no_markdown or args.quick):
        update_section("gpu", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

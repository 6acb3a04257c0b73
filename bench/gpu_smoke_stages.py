"""Stages 3-7 of `bench.gpu_smoke`: GEMM rates, CUDA-path exactness, a sync audit with a trace, predicted vs
achieved on real shapes, and the HF + accelerate offload baseline. Each takes the run's `Context` (device,
dry_run, out, `keep(key, value)` for partial results a timeout still saves) and returns a dict of results;
with `dry_run` the same logic runs on the CPU at small shapes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings

from planner.units import KV_BLOCK_SIZE, GiB

# hidden, expert intermediate, experts, top-k: the real shapes, and small ones for the dry run
EXPERT_SHAPES = {"mixtral-8x7b": (4096, 14336, 8, 2), "deepseek-v2-lite": (2048, 1408, 64, 6)}
DRY_EXPERT_SHAPES = {"mixtral-like": (256, 512, 8, 2), "deepseek-like": (128, 96, 16, 4)}
DELAY_CYCLES = 20_000_000  # ~10 ms of GPU sleep queued before each weight copy (exactness, delayed)
DELAY_S = 0.003  # the CPU copy worker's sleep before each copy in the dry run
# device caps tried, as fractions of the weights: the first the planner fits that still streams (a small model's
# two stream slots and the device reserve can take more than its weights)
DEVICE_FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2)


def _timed(ctx, fn, budget_s: float = 2.0) -> float:
    from runtime.profiler.timing import median_seconds

    return median_seconds(
        fn,
        ctx.device,
        warmup=1,
        repeats=3 if ctx.dry_run else 5,
        budget_s=budget_s,
        min_sample_s=0.0 if ctx.dry_run else 0.02,
    )


# ----- 3. GEMM rate and per-expert overhead -----
def _expert_layer(ctx, hidden: int, inter: int, experts: int, top_k: int, tokens: int):
    import torch

    from runtime.engine.expert_stacks import stack_names

    dtype = torch.bfloat16
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    gate_up = (torch.randn(experts, 2 * inter, hidden, device=ctx.device, generator=gen) * hidden**-0.5).to(
        dtype
    )
    down = (torch.randn(experts, hidden, inter, device=ctx.device, generator=gen) * inter**-0.5).to(dtype)
    x = torch.randn(tokens, hidden, device=ctx.device, generator=gen).to(dtype)
    scores = torch.rand(tokens, experts, device=ctx.device, generator=gen)
    topk_weights, topk_ids = torch.topk(torch.softmax(scores, dim=-1), top_k, dim=-1)
    names = stack_names(0, experts)
    return x, topk_ids, topk_weights.float(), {names[0]: gate_up, names[1]: down}


def _expert_costs(ctx, hidden: int, inter: int, experts: int, top_k: int, row_counts) -> dict:
    import torch

    from runtime.engine.ffn import grouped_experts, looped_experts
    from runtime.model.layers import expert_ffn

    tokens = 32 if ctx.dry_run else 256
    x, ids, weights, w = _expert_layer(ctx, hidden, inter, experts, top_k, tokens)
    gate_up, down = w.values()
    gate, up, down0 = gate_up[0, :inter], gate_up[0, inter:], down[0]
    rates = {}
    for m in row_counts:
        xs = x[:1].expand(m, hidden).contiguous()
        rates[m] = 6 * m * hidden * inter / _timed(ctx, lambda xs=xs: expert_ffn(xs, gate, up, down0)) / 1e12
    hit = int(torch.unique(ids).numel())
    rows = x[: max(tokens * top_k // hit, 1)]
    one_expert = _timed(ctx, lambda: expert_ffn(rows, gate, up, down0))
    looped = _timed(ctx, lambda: looped_experts(x, ids, weights, w, experts, 1 << 20, [(0, experts)]))
    out = {
        "shape": {"hidden": hidden, "intermediate": inter, "experts": experts, "top_k": top_k},
        "tflops_by_rows": rates,
        "tokens": tokens,
        "experts_hit": hit,
        "looped_s": looped,
        "gemm_only_s": hit * one_expert,
        "per_expert_overhead_s": (looped - hit * one_expert) / hit,
    }
    try:
        out["grouped_s"] = _timed(
            ctx, lambda: grouped_experts(x, ids, weights, w, experts, 1 << 20, [(0, experts)])
        )
    except (RuntimeError, NotImplementedError) as err:  # torch._grouped_mm missing for this device or dtype
        out["grouped_s"] = f"unsupported: {err}"[:300]
    return out


def gemm(ctx) -> dict:
    import torch

    shapes = DRY_EXPERT_SHAPES if ctx.dry_run else EXPERT_SHAPES
    row_counts = (1, 16, 64) if ctx.dry_run else (1, 16, 128, 512, 2048)
    out = {}
    for name, shape in shapes.items():
        out[name] = _expert_costs(ctx, *shape, row_counts)
        ctx.keep("experts", out)
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    return {"experts": out}


# ----- 4. exactness -----
def tiny_spec():
    from planner.specs.spec import load_spec

    return dataclasses.replace(
        load_spec("mixtral-mini"),
        name="mixtral-smoke-tiny",
        num_layers=3,
        hidden_size=128,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        vocab_size=320,
        num_experts=6,
        top_k=2,
        moe_intermediate_size=48,
        max_position_embeddings=256,
        sliding_window=9,
    )


TINY_PROMPT_LENS = (1, 23, 7, 30, 2, 13, 18, 5, 11)
TINY_MAX_TOKENS = (12, 3, 14, 6, 9, 1, 10, 13, 4)


def _tiny_job(spec):
    import torch

    from runtime.sampling import SamplingParams

    gen = torch.Generator().manual_seed(9)
    prompts = [torch.randint(3, spec.vocab_size, (n,), generator=gen).tolist() for n in TINY_PROMPT_LENS]
    return [
        (p, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
        for p, n in zip(prompts, TINY_MAX_TOKENS)
    ]


def _run_engine_tokens(checkpoint, config, job) -> tuple[list[list[int]], object]:
    from runtime.engine import Engine, Request

    engine = Engine(checkpoint, config)
    done = {}
    try:
        stats = engine.run(
            [Request(i, p, params) for i, (p, params) in enumerate(job)],
            on_finish=lambda c: done.__setitem__(c.id, c.token_ids),
        )
    finally:
        engine.close()
    return [done[i] for i in range(len(job))], stats


@contextlib.contextmanager
def delayed_copies(device):
    """Every streamed-weight copy starts late: a GPU sleep queued on the copy stream, or a CPU sleep."""
    import numpy as np
    import torch

    from runtime.engine import streamer

    if device.type == "cuda":
        original = streamer.copy_to_device

        def late(dst, src, stream=None):
            with torch.cuda.stream(stream):
                torch.cuda._sleep(DELAY_CYCLES)
            return original(dst, src, stream)

        streamer.copy_to_device = late
        try:
            yield
        finally:
            streamer.copy_to_device = original
        return

    class SlowNumpy:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def copyto(dst, src):
            time.sleep(DELAY_S)
            np.copyto(dst, src)

    streamer.np = SlowNumpy()
    try:
        yield
    finally:
        streamer.np = np


def exactness(ctx) -> dict:
    from runtime.checkpoint.in_memory import random_checkpoint
    from runtime.engine import EngineConfig
    from runtime.model.generation import ReferenceBackend
    from runtime.model.reference import ReferenceModel
    from runtime.sampling import GenerationState

    spec = tiny_spec()
    checkpoint = random_checkpoint(spec, "fp32", seed=5)
    job = _tiny_job(spec)
    states = [GenerationState(p, params, frozenset(), None) for p, params in job]
    ReferenceBackend(ReferenceModel(spec, checkpoint.weights)).run(states)
    reference = [s.token_ids for s in states]
    kv_budget = 11 * 4 * spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim * 4  # 11 blocks: preemption
    base = EngineConfig.build(
        num_seqs=3,
        attn_batch=2,
        expert_batch=3,
        kv_budget_bytes=kv_budget,
        kv_block_size=4,
        prefill_chunk=12,
        attention_threads=1,
        device=str(ctx.device),
    )
    streamed = base.with_(
        force_streaming=True, resident_modules=("embed", "lm_head", "router"), token_groups=2
    )
    variants = {
        "resident": (base, contextlib.nullcontext()),
        "streamed": (streamed, contextlib.nullcontext()),
        "streamed_three_slots": (streamed.with_(stream_slots=3), contextlib.nullcontext()),
        "streamed_delayed": (streamed, delayed_copies(ctx.device)),
    }
    out = {}
    for name, (config, around) in variants.items():
        with around:
            tokens, stats = _run_engine_tokens(checkpoint, config, job)
        out[name] = {
            "identical": tokens == reference,
            "preemptions": stats.num_preemptions,
            "mismatched_requests": [i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b],
        }
        ctx.keep("variants", out)
    return {"variants": out, "all_identical": all(v["identical"] for v in out.values())}


# ----- 5. sync audit and trace -----
def sync_audit(ctx) -> dict:
    import torch

    from runtime.checkpoint.in_memory import random_checkpoint
    from runtime.engine import Engine, EngineConfig, Request
    from runtime.sampling import SamplingParams

    spec = tiny_spec()
    checkpoint = random_checkpoint(spec, "bf16", seed=5)
    config = EngineConfig.build(
        num_seqs=8,
        attn_batch=4,
        kv_budget_bytes=64 << 20,
        kv_block_size=KV_BLOCK_SIZE,
        prefill_chunk=64,
        device=str(ctx.device),
        force_streaming=True,
        token_groups=2,
        resident_modules=("embed", "lm_head", "router"),
    )
    engine = Engine(checkpoint, config)
    job = [
        Request(i, [3 + i] * 12, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
        for i in range(8)
    ]
    out: dict = {}
    try:
        engine.run(job)  # warm: every shape seen once
        if ctx.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    stats = engine.run(job)
            finally:
                torch.cuda.set_sync_debug_mode(0)
            syncs: dict[str, int] = {}
            for w in caught:
                where = f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0][:120]}"
                syncs[where] = syncs.get(where, 0) + 1
            out["sync_audit"] = {
                "synchronising_calls": len(caught),
                "steps": stats.steps,
                "per_step": len(caught) / max(stats.steps, 1),
                "by_place": syncs,
            }
        else:
            out["sync_audit"] = {"skipped": "no CUDA device: nothing synchronises with the host on the CPU"}
        ctx.keep("sync_audit", out["sync_audit"])
        activities = [torch.profiler.ProfilerActivity.CPU]
        if ctx.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        two_steps = [Request(0, [5] * 12, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))]
        with torch.profiler.profile(activities=activities) as prof:
            stats = engine.run(two_steps)  # one prefill step, two decode steps
        trace = ctx.out / "trace.json"
        prof.export_chrome_trace(str(trace))
        averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        out["trace"] = {
            "file": str(trace),
            "bytes": trace.stat().st_size,
            "steps": stats.steps,
            "top_self_cpu_us": {e.key: e.self_cpu_time_total for e in averages},
        }
    finally:
        engine.close()
    return out


# ----- 6. predicted vs achieved on real shapes -----
def _profile_for(ctx):
    from planner.errors import UserError
    from planner.hardware.profile import find_profile_for_this_machine, load_profile

    try:
        return find_profile_for_this_machine()
    except UserError:
        if ctx.dry_run:
            return load_profile("cpu-amd-epyc-2c")
        import torch

        name = torch.cuda.get_device_properties(ctx.device).name
        return load_profile("h100-pcie-lambda" if "PCIe" in name else "h100-sxm-lambda")


def capped_plan(spec, profile, workload, dry_run: bool):
    """The plan and its device cap (GiB): the smallest of `DEVICE_FRACTIONS` of the weights the planner can fit
    (two stream slots and the reserve set a floor) that still streams experts; in the dry run the CPU's
    forced-streaming plan (no cap)."""
    from planner.errors import UserError
    from planner.perf.costs import ModelCosts
    from planner.perf.memory import Budgets
    from planner.plans.build import make_plan

    if dry_run:
        return make_plan(spec, profile, workload, Budgets.from_args(profile, 0.05), stream_on_host=True), None
    weights_gib = ModelCosts(spec).total_bytes() / GiB
    for fraction in DEVICE_FRACTIONS:
        cap = round(fraction * weights_gib, 2)
        try:
            plan = make_plan(spec, profile, workload, Budgets.from_args(profile, 8.0, device_gb=cap))
        except UserError:  # too small for the stream slots and reserve: a larger cap
            continue
        if plan.decisions.stream_weights:
            return plan, cap
    raise UserError(
        f"no device cap under {DEVICE_FRACTIONS[-1]:.0%} of {spec.name}'s weights makes it stream and fit",
        "use more layers (bench.gpu_smoke truncates to 4)",
    )


def _predicted(ctx, model: str, dry_model: str) -> dict:
    import torch

    from bench.common import run_engine
    from planner.perf.costs import ModelCosts
    from planner.plans.workload import Workload
    from planner.specs.spec import load_spec
    from runtime.checkpoint.in_memory import random_checkpoint

    spec = load_spec(dry_model).with_layers(2) if ctx.dry_run else load_spec(model).with_layers(4)
    prompts_n, prompt_len, gen_len = (6, 16, 4) if ctx.dry_run else (128, 128, 32)
    profile = _profile_for(ctx)
    weights_gib = ModelCosts(spec).total_bytes() / GiB
    began = time.perf_counter()
    checkpoint = random_checkpoint(spec, "bf16", seed=0, fast=True)
    out = {
        "model": spec.name,
        "profile": profile.name,
        "weights_gib": weights_gib,
        "build_weights_s": time.perf_counter() - began,
    }
    plan, cap = capped_plan(spec, profile, Workload.fixed(prompt_len, gen_len, prompts_n), ctx.dry_run)
    if ctx.dry_run:
        overrides = {"force_streaming": True, "device": "cpu"}
    else:
        total = torch.cuda.get_device_properties(ctx.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(cap * GiB / total, 1.0), ctx.device)
        overrides, out["device_cap_gib"] = {"device": "cuda"}, cap
    out.update(
        num_seqs=plan.decisions.num_seqs,
        stream_slots=plan.decisions.stream_slots,
        stream_weights=plan.decisions.stream_weights,
        resident_experts_per_layer=plan.decisions.resident_experts_per_layer,
    )
    ctx.keep("plan", out)
    gen = torch.Generator().manual_seed(2)
    prompts = [
        torch.randint(3, spec.vocab_size, (prompt_len,), generator=gen).tolist() for _ in range(prompts_n)
    ]
    report = run_engine(checkpoint, plan, profile, prompts, gen_len, **overrides)
    e2e = report["throughput"]["end_to_end"]
    stats = report["run_stats"]
    out.update(
        predicted_tok_s=e2e["predicted"],
        achieved_tok_s=e2e["achieved"],
        error=e2e["achieved"] / e2e["predicted"] - 1 if e2e["predicted"] else None,
        decode_step_modules=report["decode_step_modules"],
        memory=report["memory"],
        streamed_bytes_per_token=stats["streamed_weight_bytes"]
        * stats["steps"]
        / max(stats["generated_tokens"], 1),
    )
    if ctx.device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0, ctx.device)
        torch.cuda.empty_cache()
    return out


def predicted_mixtral(ctx) -> dict:
    return _predicted(ctx, "mixtral-8x7b", "mixtral-mini")


def predicted_deepseek(ctx) -> dict:
    return _predicted(ctx, "deepseek-v2-lite", "deepseek-v2-lite-mini")


# ----- 7. HF + accelerate offload -----
def hf_offload(ctx) -> dict:
    try:
        import accelerate
    except ImportError:
        return {"skipped": "accelerate is not installed (pip install -e '.[gpu]')"}
    import torch
    import transformers

    from planner.perf.costs import ModelCosts
    from planner.specs.hf_config import spec_to_hf_config
    from planner.specs.spec import load_spec

    spec = (
        load_spec("deepseek-v2-lite-mini").with_layers(2)
        if ctx.dry_run
        else load_spec("deepseek-v2-lite").with_layers(4)
    )
    config = transformers.AutoConfig.for_model(**spec_to_hf_config(spec))
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    cap_gib = max(0.5 * ModelCosts(spec).total_bytes() / GiB, 0.01)
    device = 0 if ctx.device.type == "cuda" else "cpu"
    device_map = accelerate.infer_auto_device_map(
        model, max_memory={device: f"{cap_gib:.2f}GiB", "cpu": "100GiB"}
    )
    model = accelerate.dispatch_model(model, device_map=device_map)
    prompts, gen_len = (4, 3) if ctx.dry_run else (32, 16)
    ids = torch.randint(3, spec.vocab_size, (prompts, 64 if not ctx.dry_run else 8), device=ctx.device)
    began = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=gen_len, min_new_tokens=gen_len, do_sample=False)
    seconds = time.perf_counter() - began
    return {
        "model": spec.name,
        "device_cap_gib": cap_gib,
        "tok_s": (out.shape[1] - ids.shape[1]) * prompts / seconds,
    }

"""Turn a solved decision into a `Plan`: predictions, per-module times, utilisation, memory, bound, S-MBU/S-MFU.

`make_plan(spec, profile, workload, budgets, model_ref, profile_ref)` builds the performance model, solves
it and returns the Plan; `plan_from_solution(model, solution, model_ref, profile_ref)` does the second half.
S-MBU / S-MFU follow MoE-CAP (Jiang et al., 2024) with the defects of its public code fixed:
bytes read per decode step = weights of the modules every token uses + the expected distinct experts hit
(not all experts) + KV read, over the step time and the peak bandwidth of the memory the device computes
from (device memory, estimated from the measured GEMV rate; host memory without a device); FLOPs = top-k
experts per token (not one), attention FLOPs counted once, over the dense measured GEMM peak.
"""

from __future__ import annotations

import math

import numpy as np

from planner.errors import UserError
from planner.hardware.profile import HardwareProfile
from planner.modules import WEIGHT_MODULES
from planner.perf.bound import compute_bound, gemm_flops_per_token
from planner.perf.memory import Budgets, GiB
from planner.perf.model import Candidates, PerfModel
from planner.plans.decisions import Decisions
from planner.plans.plan import (
    SCHEMA_VERSION,
    BudgetsGiB,
    ModelRef,
    Plan,
    Prediction,
    ProfileRef,
)
from planner.plans.solver import ATTN_BATCHES, EXPERT_BATCHES_LOG2, PREFILL_CHUNKS, Solution, solve
from planner.plans.workload import Workload
from planner.specs.spec import COMPUTE_DTYPES, ModelSpec


def spec_hash(spec: ModelSpec) -> str:
    return spec.fingerprint()


def model_ref_of(spec: ModelSpec, ref: str) -> ModelRef:
    return ModelRef(
        name=spec.name,
        hash=spec_hash(spec),
        dtype=spec.dtype,
        ref=str(ref),
        weight_formats=dict(spec.weight_formats),
    )


def profile_ref_of(profile: HardwareProfile, ref: str) -> ProfileRef:
    return ProfileRef(
        name=profile.name, fingerprint=profile.fingerprint(), kind=profile.provenance.kind, ref=str(ref)
    )


def make_plan(
    spec: ModelSpec,
    profile: HardwareProfile,
    workload: Workload,
    budgets: Budgets,
    model_ref: str | None = None,
    profile_ref: str | None = None,
    stream_on_host: bool = False,
    batching: str = "module",
) -> Plan:
    """Solve and build the plan; `stream_on_host` plans the engine's forced-streaming mode on a CPU-only
    profile (routed experts streamed host to host; for benchmarks of the streamer without a device);
    `batching="model"` plans model-based batching (one batch size everywhere, KV in device memory)."""
    if spec.dtype not in COMPUTE_DTYPES:  # a plan the runtime could not execute is not offered
        raise UserError(
            f"model {spec.name} computes in {spec.dtype}; the runtime computes in {', '.join(COMPUTE_DTYPES)}",
            "plan fp8 or mxfp4 weights as stored formats (`planner solve --dtype fp8`, or a checkpoint whose "
            "quantization_config says so); they are dequantized to the compute dtype at each GEMM",
        )
    model = PerfModel(spec, profile, workload, budgets, stream_on_host=stream_on_host, batching=batching)
    return plan_from_solution(
        model,
        solve(model),
        model_ref_of(spec, model_ref or spec.name),
        profile_ref_of(profile, profile_ref or profile.name),
    )


def plan_from_solution(
    model: PerfModel, solution: Solution, model_ref: ModelRef, profile_ref: ProfileRef
) -> Plan:
    spec, lay, w, b = model.spec, model.layout, model.workload, model.budgets
    n = solution.num_seqs
    attn_batch = min(solution.attn_batch, math.ceil(n / model.groups))
    c = Candidates.of(
        residency=[solution.residency],
        attn_batch=[attn_batch],
        expert_batch=[solution.expert_batch],
        prefill_chunk=[solution.prefill_chunk],
        attention_threads=[solution.attention_threads],
        num_seqs=[n],
    )
    ev = model.evaluate(c)
    c = model.batched(c, np.array([float(n)]))  # model-based batching: one batch of N through every module
    attn_batch, expert_batch = int(c.attn_batch[0]), int(c.expert_batch[0])
    step = float(ev.decode_step_s[0])
    busy = {k: float(v[0]) for k, v in ev.busy.items()}
    utilisation = {k: v / step for k, v in busy.items()}
    bound = compute_bound(model)
    streams = (model.has_device or model.streams_on_host) and solution.residency < lay.max_residency
    slots = model.memory.stream_slots(c, float(n)) if streams else 2
    parts = int(np.ravel(model.memory.stream_parts(c))[0]) if streams else 1
    host, device = model.memory.breakdown(c, float(n), slots)
    if streams:
        resident, experts_resident = lay.resident_groups(solution.residency)
    else:
        resident, experts_resident = WEIGHT_MODULES, spec.num_experts
    price = model.profile.price.usd_per_hour
    predicted = Prediction(
        generated_tok_s=float(ev.generated_tok_s[0]),
        decode_tok_s=float(ev.decode_tok_s[0]),
        prefill_tok_s=float(ev.prefill_tok_s[0]),
        wall_time_s=float(ev.wall_time_s[0]),
        prefill_time_s=float(ev.prefill_time_s[0]),
        decode_steps=float(ev.decode_steps[0]),
        decode_step_s=step,
        prefill_chunk_s=float(ev.prefill_chunk_s[0]),
        static_batches_tok_s=static_batches_tok_s(model, c, ev),
        s_mbu=s_mbu(model, n, step),
        s_mfu=s_mfu(model, n, step),
        usd_per_million_tokens=None
        if price is None
        else price * float(ev.wall_time_s[0]) / 3600 / w.generated_tokens * 1e6,
    )
    return Plan(
        schema_version=SCHEMA_VERSION,
        model=model_ref,
        profile=profile_ref,
        budgets=BudgetsGiB(
            kv_gib=b.kv_bytes / GiB, host_gib=b.host_bytes / GiB, device_gib=b.device_bytes / GiB
        ),
        workload=w,
        decisions=Decisions(
            num_seqs=n,
            attn_batch=attn_batch,
            expert_batch=expert_batch,
            kv_budget_bytes=int(host["kv_cache"] or device.get("kv_cache", 0.0)),
            kv_block_size=lay.block_size,
            resident_modules=tuple(resident),
            resident_experts_per_layer=experts_resident,
            stream_weights=streams,
            prefill_chunk=solution.prefill_chunk,
            attention_threads=solution.attention_threads,
            compute_threads=solution.compute_threads,
            token_groups=model.groups,
            scheduling="refill",
            batching=model.batching,
            emulated_link_gbps=None
            if model.profile.emulated_link is None
            else model.profile.emulated_link.gbps,
            stream_slots=slots,
            stream_parts=parts,
            gemm_dtype=model.gemm_dtype,
        ),
        predicted=predicted,
        module_times={
            "decode_step": {k: float(v[0]) for k, v in ev.decode_modules.items()},
            "prefill_chunk": {k: float(v[0]) for k, v in ev.prefill_modules.items()},
        },
        utilisation=utilisation,
        bottleneck=max(utilisation, key=utilisation.get),
        memory={"host": host, "device": device},
        bound=bound,
        dequant_ns=dict(model.dequant.ns_per_weight),
        dequant_source=model.dequant.source,
        solver={
            "evaluations": float(solution.evaluations),
            "lattice_points": float(
                (lay.max_residency + 1)
                * ATTN_BATCHES.size
                * PREFILL_CHUNKS.size
                * (EXPERT_BATCHES_LOG2[1] - EXPERT_BATCHES_LOG2[0] + 1)
            ),
        },
    )


def static_batches_tok_s(model: PerfModel, c: Candidates, ev) -> float:
    """The same decisions run as static batches: KV reserved for p + g_max per sequence, each batch
    decodes until its longest generation ends, no refill."""
    w, lay = model.workload, model.layout
    per_seq = (w.prompt_len_mean + w.gen_len_max + lay.block_size / 2) * lay.kv_bytes_per_token
    kv = model.memory.kv_budget_bytes(ev.num_seqs)
    n = float(np.clip(np.floor(kv / per_seq), 1, ev.num_seqs)[0])
    step = float(model.decode_step(c, np.array([n]))["step"][0])
    decode = math.ceil(w.num_prompts / n) * w.gen_len_max * step
    return w.generated_tokens / (float(ev.prefill_time_s[0]) + decode)


def _activated_weight_bytes(model: PerfModel, num_seqs: float) -> float:
    lay = model.layout
    gb = lay.group_bytes
    per_moe = sum(gb["moe"].values()) + float(lay.expected_experts(num_seqs)) * lay.expert_bytes
    per_dense = sum(gb["dense"].values())
    embed_rows = num_seqs * model.spec.hidden_size * model.spec.dtype_bytes
    return (
        lay.num_moe_layers * per_moe
        + lay.num_dense_layers * per_dense
        + lay.step_bytes["lm_head"]
        + embed_rows
    )


def s_mbu(model: PerfModel, num_seqs: float, step_s: float) -> float:
    lay = model.layout
    kv = num_seqs * lay.kv_read_bytes_per_seq_layer * model.spec.num_layers
    peak = model.rates.device_read_bps if model.has_device else model.rates.host_read_bps
    return (_activated_weight_bytes(model, num_seqs) + kv) / step_s / peak


def s_mfu(model: PerfModel, num_seqs: float, step_s: float) -> float:
    lay = model.layout
    read_tokens = lay.kv_read_bytes_per_seq_layer / lay.kv_bytes_per_token_layer
    attention = lay.decode_attention_flops_per_ctx * read_tokens
    return num_seqs * (gemm_flops_per_token(model) + attention) / step_s / model.rates.peak_flops

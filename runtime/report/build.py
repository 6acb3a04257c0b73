"""The run report: what `runtime execute` achieved beside what its plan predicted, as one JSON-able dict.

How it works: docs/design.md, `runtime/report/build.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from planner.hardware.emulated_link import describe_device
from planner.hardware.profile import HardwareProfile
from planner.modules import WEIGHT_MODULES, Module
from planner.perf.costs import ModelCosts
from planner.plans.plan import Plan
from planner.specs.spec import ModelSpec
from runtime.report.metrics import ContextTally, sparse_utilisation

if TYPE_CHECKING:
    from runtime.engine.stats import RunStats

REPORT_SCHEMA_VERSION = 1


def relative_error(achieved: float | None, predicted: float | None) -> float | None:
    if achieved is None or not predicted:
        return None
    return (achieved - predicted) / predicted


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def compared(achieved: float | None, predicted: float | None) -> dict[str, float | None]:
    return {
        "achieved": achieved,
        "predicted": predicted,
        "relative_error": relative_error(achieved, predicted),
    }


def _module_rows(measured: dict[str, float], predicted: dict[str, float]) -> list[dict[str, Any]]:
    names = list(predicted) + [m for m in measured if m not in predicted]
    return [
        {
            "module": m,
            "measured_s": measured.get(m),
            "predicted_s": predicted.get(m),
            "relative_error": relative_error(measured.get(m), predicted.get(m)),
        }
        for m in names
        if measured.get(m) or predicted.get(m)
    ]


def _throughput(stats: RunStats, plan: Plan) -> dict[str, dict]:
    p = plan.predicted
    return {
        "end_to_end": compared(_ratio(stats.generated_tokens, stats.wall_seconds), p.generated_tok_s),
        "decode": compared(_ratio(stats.decode_tokens, stats.decode_seconds), p.decode_tok_s),
        "prefill": compared(_ratio(stats.prefill_tokens, stats.prefill_seconds), p.prefill_tok_s),
    }


def _decode_modules(stats: RunStats, plan: Plan) -> list[dict[str, Any]]:
    steps = stats.decode_steps
    decode = stats.module_seconds.get("decode", {})
    measured = {m: s / steps for m, s in decode.items()} if steps else {}
    if steps:
        measured["prefill"] = stats.prefill_seconds / steps
    return _module_rows(measured, plan.module_times.get("decode_step", {}))


def _prefill_modules(stats: RunStats, plan: Plan) -> list[dict[str, Any]]:
    per_kilo = 1000.0 / stats.prefill_tokens if stats.prefill_tokens else 0.0
    measured = (
        {m: s * per_kilo for m, s in stats.module_seconds.get("prefill", {}).items()} if per_kilo else {}
    )
    chunk = plan.module_times.get("prefill_chunk", {})
    chunk_tokens = (
        plan.predicted.prefill_tok_s * plan.predicted.prefill_chunk_s
    )  # min(chunk, the job's prompts)
    predicted = {m: s * 1000.0 / chunk_tokens for m, s in chunk.items()} if chunk_tokens > 0 else {}
    return _module_rows(measured, predicted)


def _busy(
    stats: RunStats, profile: HardwareProfile, decode_bytes: dict[str, float]
) -> dict[str, float | None]:
    """Measured share of decode time each of the plan's resources was busy (its names, `planner.plans.plan`)."""
    decode = stats.module_seconds.get("decode", {})
    seconds = stats.decode_seconds

    def share(modules) -> float | None:
        return _ratio(sum(decode.get(m, 0.0) for m in modules), seconds)

    if profile.emulated_link is not None:  # the CPU computes; the paced link's own busy-time counter
        streamed = stats.streamed_weight_bytes * stats.decode_steps
        host_bytes = sum(decode_bytes.values())
        busy = {
            "cpu": share([m for m in decode if m != Module.WEIGHT_COPY]),
            "link": _ratio(stats.link_busy_seconds, seconds),
        }
    elif profile.has_device:
        streamed = stats.streamed_weight_bytes * stats.decode_steps
        host_bytes = decode_bytes["kv"] + streamed
        busy = {
            "device": share(WEIGHT_MODULES),  # the device's GEMMs
            "cpu_attention": share((Module.ATTENTION,)),
            "link": share((Module.WEIGHT_COPY,)),
        }
    else:
        host_bytes = sum(decode_bytes.values())
        busy = {"cpu": share([m for m in decode if m != Module.WEIGHT_COPY])}
    busy["host_memory"] = _ratio(host_bytes, seconds * profile.memory.read_gbps * 1e9)
    return busy


def _utilisation(
    stats: RunStats, plan: Plan, profile: HardwareProfile, costs: ModelCosts, tally: ContextTally
) -> dict[str, Any]:
    sparse = sparse_utilisation(
        costs,
        profile,
        tally,
        stats.decode_steps,
        float(sum(stats.activated_experts_sum)),
        stats.decode_seconds,
        stats.prefill_seconds,
    )
    busy = _busy(stats, profile, sparse.decode_bytes)
    resources = {
        r: {"achieved": busy.get(r), "predicted": plan.utilisation.get(r)}
        for r in list(plan.utilisation) + [r for r in busy if r not in plan.utilisation]
    }
    attention_s = stats.module_seconds.get("decode", {}).get(Module.ATTENTION, 0.0)
    copy_s = sum(s.get(Module.WEIGHT_COPY, 0.0) for s in stats.module_seconds.values())
    layout = "mla" if costs.spec.attention == "mla" else "gqa"
    streamed = stats.streamed_weight_bytes * (stats.decode_steps + stats.prefill_forwards)
    return {
        "s_mbu": compared(sparse.s_mbu, plan.predicted.s_mbu),
        "s_mfu": compared(sparse.s_mfu, plan.predicted.s_mfu),
        "prefill_s_mfu": sparse.prefill_s_mfu,
        "peak_memory_gbps": sparse.peak_memory_gbps,
        "peak_dense_tflops": sparse.peak_dense_tflops,
        "decode_bytes": sparse.decode_bytes,
        "decode_flops": sparse.decode_flops,
        "resources": resources,
        "attention_kv_gbps": {
            "achieved": _ratio(sparse.decode_bytes["kv"], attention_s * 1e9),
            "profile": profile.attention_gbps(plan.decisions.attention_threads, layout),
        },
        "weight_copy_gbps": {
            "achieved": _ratio(streamed, copy_s * 1e9) if streamed else None,
            "profile": profile.h2d_gbps(1 << 30) if profile.has_device else None,
        },
    }


def _memory(stats: RunStats, plan: Plan) -> dict[str, dict]:
    def side(peak: int, planned: dict[str, float]) -> dict:
        return {
            "peak_bytes": peak,
            "plan_bytes": planned.get("total"),
            "budget_bytes": planned.get("budget"),
            "peak_over_plan": _ratio(peak, planned.get("total") or 0.0),
        }

    return {
        "host": side(stats.peak_host_bytes, plan.memory.get("host", {})),
        "device": side(stats.peak_device_bytes, plan.memory.get("device", {})),
    }


def build_report(
    stats: RunStats,
    plan: Plan,
    profile: HardwareProfile,
    spec: ModelSpec,
    tally: ContextTally,
    skipped: list | tuple = (),
    resumed: int = 0,
) -> dict[str, Any]:
    """See the module docstring; `stats` is the engine's RunStats."""
    costs = ModelCosts(spec)
    total_tokens = stats.prompt_tokens + stats.generated_tokens
    activated = stats.activated_experts_per_layer
    moe_layers = (
        [activated[layer] for layer in range(spec.num_layers) if spec.is_moe_layer(layer)]
        if activated
        else []
    )
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "elapsed_time": stats.wall_seconds,
        "num_requests": stats.num_requests,
        "total_num_tokens": total_tokens,
        "requests_per_second": _ratio(stats.num_requests, stats.wall_seconds),
        "tokens_per_second": _ratio(total_tokens, stats.wall_seconds),
        "output_tokens_per_second": _ratio(stats.generated_tokens, stats.wall_seconds),
        "prompt_tokens": stats.prompt_tokens,
        "output_tokens": stats.generated_tokens,
        "throughput": _throughput(stats, plan),
        "decode_step_modules": _decode_modules(stats, plan),
        "prefill_modules": _prefill_modules(stats, plan),
        "utilisation": _utilisation(stats, plan, profile, costs, tally),
        "activated_experts": {
            "per_moe_layer_per_step": _ratio(sum(moe_layers), len(moe_layers)) if moe_layers else None,
            "uniform_expectation": costs.expected_distinct_experts(stats.mean_decode_batch)
            if stats.decode_steps
            else None,
            "mean_decode_batch": stats.mean_decode_batch,
            "plan_num_seqs": plan.decisions.num_seqs,
        },
        "memory": _memory(stats, plan),
        "skipped_lines": [{"line": s.line_number, "reason": s.reason} for s in skipped],
        "resumed_requests": resumed,
        "model": {"name": spec.name, "plan_model": plan.model.name, "plan_hash": plan.model.hash},
        "profile": {
            "name": profile.name,
            "device": describe_device(profile),
            "fingerprint": profile.fingerprint(),
            "plan_fingerprint": plan.profile.fingerprint,
        },
        "plan": plan.to_dict(),
        "spec": spec.to_dict(),
        "run_stats": stats.to_dict(),
    }

"""`planner explain plan.yaml`: a readable account of a plan and what would raise its throughput most.

`explain(plan, what_if=True) -> str` renders tables: decisions, predictions, seconds per module per decode
step and per prefill chunk, resource utilisation and the binding resource, memory on host and device, the
upper bound with its terms. With `what_if`, it reloads the plan's model spec and profile (refusing when their
hash / fingerprint changed since the plan was solved) and re-solves with one resource doubled at a time:
KV memory, link bandwidth, CPU cores (attention bandwidth, and CPU GEMMs without a device), host memory
bandwidth, device memory, device compute, ranked by the throughput gained.
"""

from __future__ import annotations

from dataclasses import replace

from planner.errors import UserError
from planner.hardware.emulated_link import DEVICE_WORDS, device_name
from planner.hardware.profile import load_profile
from planner.perf.dequant import DEFAULT as DEQUANT_DEFAULT
from planner.perf.memory import Budgets, GiB
from planner.perf.rates import RateScale
from planner.plans.build import spec_hash
from planner.plans.plan import Plan
from planner.plans.sweep import Problem, solve_problem
from planner.specs.spec import load_spec
from planner.tables import text_table

RESOURCE_WORDS = {
    "device": "device compute",
    "cpu_attention": "CPU attention (KV read bandwidth)",
    "link": "host-to-device link",
    "host_memory": "host memory bandwidth",
    "cpu": "CPU (GEMMs and attention share the cores)",
}


def table(headers: list[str], rows: list[list]) -> str:
    return "\n".join(text_table(headers, [[_cell(v) for v in row] for row in rows]))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def problem_from_plan(plan: Plan) -> Problem:
    spec = load_spec(plan.model.ref)
    if (spec.dtype, spec.weight_formats) != (plan.model.dtype, plan.model.weight_formats):
        spec = replace(spec, dtype=plan.model.dtype, weight_formats=plan.model.weight_formats)
    if spec_hash(spec) != plan.model.hash:
        raise UserError(
            f"model spec {plan.model.ref} changed since the plan was solved",
            "re-solve the plan with `planner solve`",
        )
    profile = load_profile(plan.profile.ref)
    if profile.fingerprint() != plan.profile.fingerprint:
        raise UserError(
            f"profile {plan.profile.ref} changed since the plan was solved",
            "re-solve the plan with `planner solve`",
        )
    b = plan.budgets
    budgets = Budgets(b.kv_gib * GiB, b.host_gib * GiB, b.device_gib * GiB)
    return Problem(
        spec,
        profile,
        plan.workload,
        budgets,
        model_ref=plan.model.ref,
        profile_ref=plan.profile.ref,
        batching=plan.decisions.batching,
    )


def what_ifs(problem: Problem) -> list[tuple[str, float]]:
    """(change, generated tok/s after re-solving) for each resource doubled."""
    b, s = problem.budgets, RateScale()
    changes = [
        (
            "2x KV memory (host grows by the same)",
            replace(problem, budgets=Budgets(2 * b.kv_bytes, b.host_bytes + b.kv_bytes, b.device_bytes)),
        ),
        ("2x CPU cores", replace(problem, scale=replace(s, cpu=2.0))),
        ("2x host memory bandwidth", replace(problem, scale=replace(s, host_memory=2.0))),
    ]
    if problem.profile.has_device:
        link = (
            f"2x {DEVICE_WORDS} bandwidth"
            if problem.profile.emulated_link is not None
            else "2x link bandwidth"
        )
        changes += [
            (link, replace(problem, scale=replace(s, link=2.0))),
            (
                "2x device memory",
                replace(problem, budgets=Budgets(b.kv_bytes, b.host_bytes, 2 * b.device_bytes)),
            ),
        ]
        if problem.profile.emulated_link is None:  # an emulated device computes on the CPU cores
            changes.append(("2x device compute", replace(problem, scale=replace(s, device_compute=2.0))))
    results = []
    for name, changed in changes:
        try:
            results.append((name, solve_problem(changed).predicted.generated_tok_s))
        except UserError:
            continue
    return results


def plan_device_words(plan: Plan) -> str:
    """How plans, progress and reports name the device a plan runs on."""
    if plan.decisions.emulated_link_gbps is not None:
        return device_name(plan.decisions.emulated_link_gbps)
    return "a device" if plan.budgets.device_gib > 0 else "CPU only"


def resource_words(plan: Plan, resource: str) -> str:
    if resource == "link" and plan.decisions.emulated_link_gbps is not None:
        return f"{DEVICE_WORDS} ({plan.decisions.emulated_link_gbps:g} GB/s)"
    return RESOURCE_WORDS.get(resource, resource)


def explain(plan: Plan, what_if: bool = True) -> str:
    p, w = plan.predicted, plan.workload
    batching = (
        "model-based batching (one batch of N everywhere, KV in device memory)"
        if plan.decisions.batching == "model"
        else "module-based batching"
    )
    out = [
        f"plan: {plan.model.name} (weights {plan.weights_words}) on {plan.profile.name} ({plan.profile.kind} profile)",
        f"device: {plan_device_words(plan)}; {batching}",
        f"workload: {w.describe()}",
        "",
    ]
    if plan.dequant_source == DEQUANT_DEFAULT:
        out[-1:-1] = [
            "dequantization: this profile has no measured `dequant_ns`, so it is priced at the memory-bound "
            "floor (slower in practice, on a CPU several times): re-profile with `runtime profile` to measure it"
        ]
    residency = ", ".join(plan.decisions.resident_modules) or "nothing"
    out.append(
        table(
            ["decision", "value"],
            [
                ["sequences in flight (num_seqs)", plan.decisions.num_seqs],
                ["attention micro-batch (attn_batch)", plan.decisions.attn_batch],
                ["expert batch (expert_batch)", plan.decisions.expert_batch],
                ["prefill chunk (tokens)", plan.decisions.prefill_chunk],
                ["KV budget (GiB)", plan.decisions.kv_budget_bytes / GiB],
                ["resident on device", residency],
                ["routed experts resident per layer", plan.decisions.resident_experts_per_layer],
                ["stream weights", plan.decisions.stream_weights],
                ["token groups", plan.decisions.token_groups],
                [
                    "attention / compute threads",
                    f"{plan.decisions.attention_threads} / {plan.decisions.compute_threads}",
                ],
            ],
        )
    )
    out += [
        "",
        table(
            ["prediction", "value"],
            [
                ["generated tok/s (end to end)", p.generated_tok_s],
                ["decode tok/s", p.decode_tok_s],
                ["prefill tok/s", p.prefill_tok_s],
                ["wall time (s)", p.wall_time_s],
                ["decode steps", p.decode_steps],
                [
                    "mean decode batch (of N)",  # below N: admission, ramps and the last wave (perf/schedule.py)
                    f"{plan.workload.decoded_tokens / max(p.decode_steps, 1e-9):.4g} "
                    f"(of {plan.decisions.num_seqs})",
                ],
                ["static batches instead (tok/s)", p.static_batches_tok_s],
                ["S-MBU", p.s_mbu],
                ["S-MFU", p.s_mfu],
                [
                    "$ per million generated tokens",
                    "n/a" if p.usd_per_million_tokens is None else p.usd_per_million_tokens,
                ],
            ],
        ),
    ]
    decode, prefill = plan.module_times["decode_step"], plan.module_times["prefill_chunk"]
    rows = [
        [m, decode.get(m, 0.0), decode.get(m, 0.0) / p.decode_step_s, prefill.get(m, 0.0)]
        for m in decode
        if decode.get(m, 0.0) or prefill.get(m, 0.0)
    ]
    out += [
        "",
        f"seconds per module (modules overlap; a decode step takes {p.decode_step_s:.4g} s, "
        f"a prefill chunk {p.prefill_chunk_s:.4g} s):",
        table(["module", "s / decode step", "x step", "s / prefill chunk"], rows),
    ]
    out += [
        "",
        table(
            ["resource", "busy fraction of a decode step"],
            [
                [resource_words(plan, k), v]
                for k, v in sorted(plan.utilisation.items(), key=lambda kv: -kv[1])
            ],
        ),
        f"binding resource: {resource_words(plan, plan.bottleneck)}",
    ]
    for where, parts in plan.memory.items():
        if parts:
            out += ["", table([f"{where} memory", "GiB"], [[k, v / GiB] for k, v in parts.items()])]
    bound = plan.bound
    out += [
        "",
        table(["upper bound term", "generated tok/s"], [[k, v] for k, v in bound.terms.items()]),
        f"bound {bound.tok_s:.4g} tok/s in decode, set by {bound.binding}, {bound.end_to_end_tok_s:.4g} end to "
        f"end (the prompts' prefill at peak on the compute term); the plan reaches {p.generated_tok_s / bound.end_to_end_tok_s:.0%} of "
        f"it end to end, {p.decode_tok_s / bound.tok_s:.0%} in decode",
    ]
    if what_if:
        out.append("")
        try:
            results = what_ifs(problem_from_plan(plan))
        except UserError as err:
            out.append(f"what-ifs skipped: {err.cause}")
            results = []
        if results:
            results.sort(key=lambda r: -r[1])
            out.append(
                table(
                    ["if we had", "generated tok/s", "gain"],
                    [[name, v, f"{v / p.generated_tok_s - 1:+.0%}"] for name, v in results],
                )
            )
            out.append(f"what would raise throughput most: {results[0][0]}")
    return "\n".join(out)

"""Report math: S-MBU / S-MFU on hand-computed cases, context sums, and the report's figures and table."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner.hardware.profile import load_profile
from planner.perf.costs import ModelCosts
from planner.specs.spec import ModelSpec
from runtime.report.metrics import (
    ContextTally,
    decode_bytes,
    machine_peaks,
    sparse_utilisation,
    sum_of_capped_range,
    token_flops,
)

# 2 layers, h 4, 2 heads / 1 KV head of dim 2, 4 experts top-2 of width 3, vocab 10, bf16.
# Per layer: qkv 4*(4+2*2)=32, o 2*2*4=16, norms 8, router 16, one expert 3*4*3=36 params.
# Per decode step, everything but experts and embed: 2*(32+16+8+16) + lm_head 40 + final norm 4 = 188 params.
TINY = ModelSpec(
    name="tiny",
    family="mixtral",
    num_layers=2,
    hidden_size=4,
    num_heads=2,
    num_kv_heads=1,
    head_dim=2,
    vocab_size=10,
    num_experts=4,
    top_k=2,
    moe_intermediate_size=3,
)
COSTS = ModelCosts(TINY)


def test_range_sums():
    assert sum_of_capped_range(4, 5, None) == 9
    assert sum_of_capped_range(1, 10, 4) == 1 + 2 + 3 + 4 + 6 * 4
    assert sum_of_capped_range(6, 8, 4) == 12
    assert sum_of_capped_range(5, 4, 4) == 0


def test_context_tally_one_request():
    tally = ContextTally()
    tally.add(prompt_len=3, generated=3)  # decode steps attend over 4 and 5 tokens
    assert (tally.decode_tokens, tally.decode_context) == (2, 9)
    assert (tally.prefill_tokens, tally.prefill_context) == (3, 6)
    tally.add(prompt_len=2, generated=1)  # first token comes from prefill: no decode step
    assert (tally.decode_tokens, tally.decode_context, tally.prefill_context) == (2, 9, 9)
    windowed = ContextTally(window=4)
    windowed.add(prompt_len=3, generated=4)  # contexts 4, 5, 6 -> capped 4, 4, 4
    assert (windowed.decode_context, windowed.decode_window_context) == (15, 12)


def test_decode_bytes_hand_computed():
    # 2 steps, 2 tokens, 5 distinct experts over steps x layers, contexts summing to 9
    got = decode_bytes(COSTS, steps=2, tokens=2, activated_experts=5, context=9, window_context=9)
    assert got["weights"] == 2 * 188 * 2 + 2 * 4 * 2  # weights per step + embedding rows
    assert got["experts"] == 5 * 36 * 2
    assert got["kv"] == 2 * (2 * 1 * 2 * 2) * 9  # layers x KV bytes per token per layer x context


def test_flops_count_k_experts_and_attention_once():
    got = token_flops(COSTS, tokens=2, context=9, window_context=9)
    per_token = 2 * (2 * (32 + 16 + 16 + 2 * 36)) + 2 * 10 * 4  # layers (qkv, o, router, 2 experts) + lm_head
    assert got["matmul"] == 2 * per_token
    assert got["attention"] == 2 * (4 * 2 * 2) * 9  # layers x 4 H d_h x context, once
    top1 = token_flops(ModelCosts(ModelSpec(**{**TINY.__dict__, "top_k": 1})), 2, 9, 9)
    assert got["matmul"] - top1["matmul"] == 2 * 2 * 2 * 36  # tokens x layers x 2 x one expert
    # two sequences attending over 4 and 5 tokens cost the sum, not the sum times the batch
    one, two = token_flops(COSTS, 1, 4, 4), token_flops(COSTS, 1, 5, 5)
    assert got["attention"] == one["attention"] + two["attention"]


def cpu_only(profile):
    return replace(profile, links=None, machine=replace(profile.machine, device=None, device_memory_gib=0))


def test_peaks_are_the_measured_ones():
    profile = load_profile("a5000-epyc7453")
    measured_max = max(t for curve in profile.gemm_curves for t in curve.tflops) * 1e12
    device_bw, device_flops = machine_peaks(profile, COSTS)
    assert 0 < device_flops <= measured_max * 1.000001 and device_bw > profile.memory.read_gbps * 1e9
    host_bw, _ = machine_peaks(cpu_only(profile), COSTS)
    assert host_bw == profile.memory.read_gbps * 1e9


def test_sparse_utilisation_against_measured_peaks():
    profile = cpu_only(load_profile("a5000-epyc7453"))
    peak_bw, peak_flops = machine_peaks(profile, COSTS)
    tally = ContextTally()
    tally.add(prompt_len=3, generated=3)
    total_bytes = (2 * 188 * 2 + 16) + 5 * 72 + 144
    total_flops = 2 * 624 + 288
    util = sparse_utilisation(
        COSTS, profile, tally, decode_steps=2, activated_experts=5, decode_seconds=0.5, prefill_seconds=0.25
    )
    assert util.s_mbu == pytest.approx(total_bytes / 0.5 / (profile.memory.read_gbps * 1e9))
    assert util.s_mfu == pytest.approx(total_flops / 0.5 / peak_flops)
    assert util.prefill_s_mfu == pytest.approx((3 * 624 + 2 * 16 * 6) / 0.25 / peak_flops)
    assert util.peak_memory_gbps == pytest.approx(peak_bw / 1e9)
    idle = sparse_utilisation(COSTS, profile, ContextTally(), 0, 0, 0.0, 0.0)
    assert idle.s_mbu is None and idle.s_mfu is None


# ---- the report built from a run's stats and a plan --------------------------------------------------------
@pytest.fixture(scope="module")
def plan_and_profile():
    from planner.perf.memory import Budgets
    from planner.plans.build import make_plan
    from planner.plans.workload import Workload

    profile = cpu_only(load_profile("a5000-epyc7453"))
    plan = make_plan(TINY, profile, Workload.fixed(10, 5, 4), Budgets.from_args(profile, 0.01, host_gb=8))
    return plan, profile


def run_stats():
    from runtime.engine.stats import RunStats

    return RunStats(
        wall_seconds=2.0,
        prefill_seconds=0.5,
        decode_seconds=1.5,
        num_requests=4,
        prompt_tokens=40,
        generated_tokens=20,
        prefill_tokens=40,
        decode_tokens=16,
        decode_steps=8,
        prefill_forwards=2,
        decode_batch_sizes_sum=16,
        module_seconds={"decode": {"attention": 0.4, "experts": 0.8}, "prefill": {"experts": 0.2}},
        activated_experts_sum=[12, 10],
        peak_host_bytes=3 << 30,
    )


def test_report_figures(plan_and_profile):
    from runtime.jobio import SkippedLine
    from runtime.report import build_report, format_report

    plan, profile = plan_and_profile
    tally = ContextTally()
    for _ in range(4):
        tally.add(prompt_len=10, generated=5)
    report = build_report(
        run_stats(), plan, profile, TINY, tally, [SkippedLine(3, "malformed JSON")], resumed=1
    )
    assert (report["elapsed_time"], report["num_requests"], report["total_num_tokens"]) == (2.0, 4, 60)
    assert (
        report["requests_per_second"],
        report["tokens_per_second"],
        report["output_tokens_per_second"],
    ) == (2.0, 30.0, 10.0)
    e2e = report["throughput"]["end_to_end"]
    assert e2e == {
        "achieved": 10.0,
        "predicted": plan.predicted.generated_tok_s,
        "relative_error": pytest.approx(
            (10.0 - plan.predicted.generated_tok_s) / plan.predicted.generated_tok_s
        ),
    }
    assert report["throughput"]["decode"]["achieved"] == pytest.approx(16 / 1.5)
    assert report["throughput"]["prefill"]["achieved"] == 80.0
    rows = {r["module"]: r for r in report["decode_step_modules"]}
    predicted = plan.module_times["decode_step"]["experts"]
    assert rows["experts"]["measured_s"] == 0.1 and rows["experts"]["predicted_s"] == predicted
    assert rows["experts"]["relative_error"] == pytest.approx((0.1 - predicted) / predicted)
    assert rows["prefill"]["measured_s"] == 0.5 / 8
    prefill_rows = {r["module"]: r for r in report["prefill_modules"]}
    assert prefill_rows["experts"]["measured_s"] == pytest.approx(0.2 * 1000 / 40)
    assert report["activated_experts"]["per_moe_layer_per_step"] == pytest.approx((12 / 8 + 10 / 8) / 2)
    assert report["utilisation"]["resources"]["cpu"]["achieved"] == pytest.approx(1.2 / 1.5)
    # 4 requests x 4 decode tokens at contexts 11..14
    assert report["utilisation"]["decode_bytes"]["kv"] == 4 * (11 + 12 + 13 + 14) * 2 * 8
    assert report["memory"]["host"]["peak_bytes"] == 3 << 30
    assert report["memory"]["host"]["plan_bytes"] == plan.memory["host"]["total"]
    assert (
        report["skipped_lines"] == [{"line": 3, "reason": "malformed JSON"}]
        and report["resumed_requests"] == 1
    )
    text = format_report(report)
    assert text.startswith("Throughput: 2.00 requests/s, 30.00 total tokens/s, 10.00 output tokens/s")
    assert "experts" in text and "line 3: malformed JSON" in text and "S-MBU" in text


def test_relative_error_and_strict_json(tmp_path):
    import json

    from runtime.report import relative_error, write_report

    assert relative_error(9.0, 10.0) == pytest.approx(-0.1)
    assert relative_error(None, 10.0) is None and relative_error(1.0, 0.0) is None
    path = write_report(tmp_path / "r.json", {"a": float("inf"), "b": [1.5, float("nan")]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None]}

"""Dequantization cost: measured by the profiler (`dequant_ns`), priced by the planner on every quantized
module's calls (a quantized plan's module time is the bf16 plan's plus calls x weights x ns), named by plans
and explain; a profile without the field prices the memory-bound default and says so."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import yaml

from planner.errors import UserError
from planner.hardware.profile import HardwareProfile, load_profile
from planner.modules import micro_batches
from planner.perf.dequant import DEFAULT, MEASURED, memory_bound_ns
from planner.perf.memory import Budgets
from planner.perf.model import Candidates, PerfModel
from planner.plans.build import make_plan
from planner.plans.explain import explain
from planner.plans.plan import Plan
from planner.plans.workload import Workload
from planner.specs.spec import load_spec
from planner.specs.weight_formats import WEIGHT_FORMAT_BYTES
from runtime.profiler.dequant import measure_dequant, random_stack
from tests.planner_support import profile_dict

NS = {"fp8": 3.0, "mxfp4": 7.0}
N, B_A = 48, 8
FP8_EVERYWHERE = dict.fromkeys(("qkv_proj", "o_proj", "experts"), "fp8")


def spec_with(formats: dict[str, str] | None = None):
    spec = load_spec("mixtral-mini").with_layers(2)
    return spec.with_weight_formats(formats) if formats else spec


def evaluate(spec, profile: HardwareProfile):
    model = PerfModel(spec, profile, Workload.fixed(64, 32, 128), Budgets.from_args(profile, 1.0))
    c = Candidates.of(
        residency=[model.residency_range[0]],
        attn_batch=[B_A],
        expert_batch=[256],
        prefill_chunk=[256],
        attention_threads=[2],
        num_seqs=[N],
    )
    return model, model.decode_step(c, np.array([float(N)])), model.prefill_chunk(c)


@pytest.mark.parametrize("device", [False, True], ids=["cpu", "device"])
@pytest.mark.parametrize("fmt", ["fp8", "mxfp4"])
def test_quantized_module_time_is_bf16_time_plus_profiled_dequant(device, fmt):
    profile = dataclasses.replace(HardwareProfile.from_dict(profile_dict(device=device)), dequant_ns=NS)
    spec = spec_with()
    formats = {"experts": fmt, "qkv_proj": fmt, "o_proj": fmt}
    model, bf16, bf16_pre = evaluate(spec, profile)
    _, quant, quant_pre = evaluate(spec.with_weight_formats(formats), profile)
    h, inter, experts = spec.hidden_size, spec.moe_intermediate_size, spec.num_experts
    ns = NS[fmt] * 1e-9
    groups = model.groups
    assert groups == (2 if device else 1)
    # every expert of each MoE layer is dequantized once per FFN call (one per token group)
    expert_term = spec.num_moe_layers * experts * 3 * h * inter * ns
    assert quant["experts"][0] - bf16["experts"][0] == pytest.approx(groups * expert_term, rel=1e-9)
    assert quant_pre["experts"][0] - bf16_pre["experts"][0] == pytest.approx(expert_term, rel=1e-9)
    # attention projections: once per attention micro-batch
    qkv_weights = h * (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim
    calls = float(micro_batches(N, groups, B_A))
    qkv_term = spec.num_layers * calls * qkv_weights * ns
    assert quant["qkv_proj"][0] - bf16["qkv_proj"][0] == pytest.approx(qkv_term, rel=1e-9)
    assert quant["step"][0] > bf16["step"][0] or device  # a device step may stay link-bound


def test_plan_names_the_format_and_the_measured_dequant_cost():
    profile = dataclasses.replace(HardwareProfile.from_dict(profile_dict(device=False)), dequant_ns=NS)
    plan = make_plan(
        spec_with(FP8_EVERYWHERE), profile, Workload.fixed(64, 32, 128), Budgets.from_args(profile, 1.0)
    )
    assert plan.dequant_ns == {"fp8": 3.0} and plan.dequant_source == MEASURED
    again = Plan.from_yaml(plan.to_yaml())
    assert again == plan
    text = explain(again, what_if=False)
    assert (
        "fp8 (qkv_proj, o_proj, experts), bfloat16 elsewhere; dequantizing fp8 3 ns per weight (measured)"
        in text
    )
    assert "re-profile" not in text


def test_old_profile_without_dequant_prices_the_memory_bound_default_and_says_so():
    profile = load_profile("cpu-amd-epyc-2c")  # shipped before `dequant_ns` existed
    assert profile.dequant_ns == {}
    spec = spec_with(FP8_EVERYWHERE)
    plan = make_plan(spec, profile, Workload.fixed(64, 32, 128), Budgets.from_args(profile, 1.0))
    expected = (WEIGHT_FORMAT_BYTES["fp8"] + 2) / (profile.memory.read_gbps * 1e9) * 1e9
    assert plan.dequant_ns["fp8"] == pytest.approx(expected)
    assert expected == pytest.approx(memory_bound_ns("fp8", 2, profile.memory.read_gbps * 1e9))
    assert plan.dequant_source == DEFAULT
    assert "re-profile with `runtime profile`" in explain(plan, what_if=False)
    bf16_plan = make_plan(spec_with(), profile, Workload.fixed(64, 32, 128), Budgets.from_args(profile, 1.0))
    assert bf16_plan.dequant_ns == {} and bf16_plan.dequant_source is None
    old = bf16_plan.to_dict()
    del old["dequant_ns"], old["dequant_source"]  # a plan written before the fields existed
    assert Plan.from_dict(old) == bf16_plan


def test_profile_dequant_section_round_trips_and_is_validated():
    data = profile_dict(device=False)
    plain = HardwareProfile.from_dict(data)
    measured = HardwareProfile.from_dict({**data, "dequant_ns": dict(NS)})
    assert measured.dequant_ns == NS
    assert HardwareProfile.from_dict(yaml.safe_load(measured.to_yaml())) == measured
    assert "dequant_ns" not in plain.to_dict()  # profiles without it keep their fingerprint
    assert measured.fingerprint() != plain.fingerprint()
    for bad, match in ((-1.0, "positive"), ("x", "positive")):
        with pytest.raises(UserError, match=match):
            HardwareProfile.from_dict({**data, "dequant_ns": {"fp8": bad}})
    with pytest.raises(UserError, match="unknown field"):
        HardwareProfile.from_dict({**data, "dequant_ns": {"int4": 1.0}})


@pytest.mark.parametrize("method", ["fp8", "mxfp4"])
def test_profiler_stage_times_the_runtime_dequantizer(method):
    stack = random_stack(method, (2, 256, 4096), torch.device("cpu"))
    values = stack.dequantize(torch.bfloat16)
    assert values.shape == (2, 256, 4096) and torch.isfinite(values).all() and values.abs().max() > 0
    ns = measure_dequant(torch.device("cpu"), torch.bfloat16, 1 << 20, repeats=2, budget_s=2.0)
    assert set(ns) == set(WEIGHT_FORMAT_BYTES) and all(math.isfinite(v) and v > 0 for v in ns.values())

"""The performance model, rate tables, memory model and bound, checked against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from planner.hardware.profile import HardwareProfile, load_profile
from planner.perf.bound import compute_bound
from planner.perf.memory import Budgets, GiB
from planner.perf.model import Candidates, PerfModel
from planner.perf.rates import GemmTable
from planner.plans.build import make_plan
from planner.plans.workload import Workload
from planner.specs.spec import load_spec
from tests.planner_support import make_profile, profile_dict, small_spec

FLAT_LINK_GBPS = 20.0
ATTENTION_GBPS = 50.0


def flat_profile(device: bool = True) -> HardwareProfile:
    """Constant link and attention rates, so times are bytes / rate exactly."""
    data = profile_dict(device=device, cores=8, host_gib=512, device_gib=40, read_gbps=400)
    if device:
        for name in data["links"]:
            data["links"][name]["gbps"] = [FLAT_LINK_GBPS] * len(data["links"][name]["sizes"])
    for curve in data["attention"]["curves"]:
        curve["gbps"] = [ATTENTION_GBPS] * len(curve["threads"])
    return HardwareProfile.from_dict(data)


def candidates(**overrides) -> Candidates:
    values = dict(
        residency=0, attn_batch=64, expert_batch=256, prefill_chunk=4096, attention_threads=4, num_seqs=100
    )
    values.update(overrides)
    return Candidates.of(**{k: [v] for k, v in values.items()})


def test_expected_distinct_experts():
    layout = PerfModel(
        small_spec(num_experts=64, top_k=6),
        flat_profile(),
        Workload.fixed(64, 64, 10),
        Budgets(GiB, 64 * GiB, 16 * GiB),
    ).layout
    hits = layout.expected_experts(np.array([1.0, 10.0, 1e6]))
    assert hits[0] == pytest.approx(6.0)
    assert hits[1] == pytest.approx(64 * (1 - (1 - 6 / 64) ** 10))
    assert hits[2] == pytest.approx(64.0)


def test_gemm_rates_are_cleaned_to_monotone_times():
    data = profile_dict()
    noisy = data["gemm"]["curves"][1]
    noisy["tflops"][3] = noisy["tflops"][2] * 0.5  # a noisy dip
    noisy["tflops"][5] = noisy["tflops"][4] * 9  # and a super-linear jump
    profile = HardwareProfile.from_dict(data)
    table = GemmTable.sample(profile, noisy["n"], noisy["k"], 2.0 * noisy["n"] * noisy["k"], 1.0)
    rows = np.geomspace(1, 1e6, 400)
    seconds = table.seconds(rows)
    assert np.all(np.diff(seconds) >= -1e-15)
    assert np.all(np.diff(seconds / rows) <= 1e-15)
    assert table.peak_flops_per_s <= max(noisy["tflops"]) * 1e12


def test_chunks_are_priced_pro_rata_and_continuously():
    model = PerfModel(
        small_spec(), flat_profile(), Workload.fixed(64, 64, 10), Budgets(GiB, 64 * GiB, 16 * GiB)
    )
    experts = model.rates.gemm["experts"]
    assert experts.chunked_seconds(100.0, 100.0) == pytest.approx(experts.seconds(100.0))
    assert experts.chunked_seconds(350.0, 100.0) == pytest.approx(3.5 * experts.seconds(100.0))
    assert experts.chunked_seconds(99.0, 100.0) == pytest.approx(experts.seconds(99.0))


def test_attention_and_weight_copy_are_bytes_over_rates():
    spec = small_spec()
    model = PerfModel(
        spec, flat_profile(), Workload.fixed(300, 200, 1000), Budgets(8 * GiB, 512 * GiB, 40 * GiB)
    )
    step = model.decode_step(candidates(), np.array([100.0]))
    kv_per_token_layer = 2 * spec.num_kv_heads * spec.head_dim * 2
    attention = spec.num_layers * 100 * (300 + 200 / 2) * kv_per_token_layer / (ATTENTION_GBPS * 1e9)
    assert step["attention"][0] == pytest.approx(attention)
    assert step["weight_copy"][0] == pytest.approx(model.layout.total_bytes / (FLAT_LINK_GBPS * 1e9))
    streamed = (
        model.layout.total_bytes - model.layout.step_bytes["lm_head"] - model.layout.step_bytes["embed"]
    )
    host = (100 * 400 * kv_per_token_layer * spec.num_layers + streamed) / 400e9
    assert step["busy_host_memory"][0] == pytest.approx(host)


def test_independent_resources_overlap_and_shared_cores_add():
    spec, workload = small_spec(), Workload.fixed(300, 200, 1000)
    gpu = PerfModel(spec, flat_profile(True), workload, Budgets(8 * GiB, 512 * GiB, 40 * GiB))
    step = gpu.decode_step(candidates(), np.array([100.0]))
    busy = [step[k][0] for k in ("busy_device", "busy_cpu_attention", "busy_link", "busy_host_memory")]
    assert max(busy) <= step["step"][0] < sum(busy)
    cpu = PerfModel(spec, flat_profile(False), workload, Budgets(8 * GiB, 512 * GiB, 0))
    top = cpu.layout.max_residency
    cpu_step = cpu.decode_step(candidates(residency=top, attention_threads=8), np.array([100.0]))
    gemms = sum(
        cpu_step[k][0] for k in ("qkv_proj", "o_proj", "router", "experts", "lm_head", "embed", "sampling")
    )
    assert cpu_step["step"][0] >= gemms + cpu_step["attention"][0]
    assert cpu_step["weight_copy"][0] == 0


def test_residency_trades_copies_for_device_memory():
    spec = small_spec()
    model = PerfModel(
        spec, flat_profile(), Workload.fixed(300, 200, 1000), Budgets(8 * GiB, 512 * GiB, 40 * GiB)
    )
    lay = model.layout
    assert np.all(np.diff(lay.resident_bytes) > -1) and np.all(np.diff(lay.streamed_moe_layer) <= 0)
    top = lay.max_residency
    assert lay.resident_bytes[top] == pytest.approx(lay.total_bytes)
    assert lay.streamed_moe_layer[top] == 0 and lay.streamed_per_step[top] == 0
    assert lay.resident_groups(top) == (
        ("router", "qkv_proj", "o_proj", "shared_experts", "dense_mlp", "lm_head", "embed", "experts"),
        spec.num_experts,
    )
    copies = [
        model.decode_step(candidates(residency=r), np.array([100.0]))["weight_copy"][0]
        for r in range(top + 1)
    ]
    assert all(b <= a for a, b in zip(copies, copies[1:])) and copies[-1] == 0


def test_prefill_amortises_streaming_over_bigger_chunks():
    model = PerfModel(
        small_spec(), flat_profile(), Workload.fixed(512, 64, 10_000), Budgets(8 * GiB, 512 * GiB, 40 * GiB)
    )
    chunks = np.array([256.0, 1024.0, 4096.0, 16384.0])
    pre = model.prefill_chunk(candidates(prefill_chunk=chunks, num_seqs=[100] * 4))
    rate = pre["tokens"] / pre["chunk"]
    assert np.all(np.diff(rate) > 0)


def test_more_sequences_never_lower_modelled_throughput():
    model = PerfModel(
        load_spec("mixtral"),
        load_profile("a5000-epyc7453"),
        Workload.fixed(512, 256, 5000),
        Budgets.from_args(load_profile("a5000-epyc7453"), 128),
    )
    n = np.arange(1, 1600, dtype=np.float64)
    ev = model.evaluate(
        Candidates.of(
            residency=8,
            attn_batch=512,
            expert_batch=4096,
            prefill_chunk=16384,
            attention_threads=32,
            num_seqs=n,
        )
    )
    value = ev.generated_tok_s[ev.feasible]
    # the job runs in whole waves (equal lengths): between two wave counts a larger N only moves tokens from the
    # last wave to the full ones, which a step time that is not linear in the batch prices a hair differently
    assert value.size > 1000 and np.all(np.diff(value) >= -1e-4 * value[1:])
    waves = np.floor((5000 - 1) / n[ev.feasible]) + 1
    fewer = np.flatnonzero(np.diff(waves) < 0)
    assert fewer.size > 0 and np.all(value[fewer + 1] > value[fewer])  # one wave fewer is faster


def test_memory_model_caps_sequences_by_kv_and_host():
    profile = load_profile("a5000-epyc7453")
    spec, workload = load_spec("mixtral"), Workload.fixed(512, 256, 100_000)
    c = candidates(residency=8, attn_batch=256, expert_batch=1024, prefill_chunk=8192)
    n = [
        float(PerfModel(spec, profile, workload, Budgets.from_args(profile, kv)).memory.max_num_seqs(c)[0])
        for kv in (16, 64, 128, 256)
    ]
    assert n[0] < n[1] < n[2] < n[3]
    per_slot = (512 + 256 + 8) * 128 * 1024  # equal lengths: every slot holds p + g at once
    assert n[1] == pytest.approx((64 * GiB - (768 + 16) * 128 * 1024) / per_slot)
    host_limited = PerfModel(spec, profile, workload, Budgets.from_args(profile, 256))
    mem, lay = host_limited.memory, host_limited.layout
    host_weights = lay.total_bytes - lay.resident_bytes[8]  # host copies of device-resident weights are freed
    host_left = 256 * GiB - host_weights - mem.host_reserve - lay.kv_bytes_one_sequence
    assert n[3] == pytest.approx(host_left / (per_slot + mem.per_seq_staging))


def test_bound_terms_by_hand():
    profile = flat_profile()
    spec, workload = (
        small_spec(num_layers=16, hidden_size=2048, moe_intermediate_size=4096),
        Workload.fixed(300, 200, 1_000_000),
    )
    model = PerfModel(spec, profile, workload, Budgets(4 * GiB, 512 * GiB, 2 * GiB))
    bound = compute_bound(model)
    kv_token = model.layout.kv_bytes_per_token
    capacity = 4 * GiB / kv_token
    assert bound.kv_capacity_tokens == pytest.approx(capacity)
    delta = max(model.layout.total_bytes - (2 * GiB - model.memory.device_reserve), 0) / (
        FLAT_LINK_GBPS * 1e9
    )
    assert bound.terms["kv_link"] == pytest.approx(
        capacity / 500 / delta
    )  # equal lengths hold p + g per slot
    assert bound.moe_lens_processed_tok_s == pytest.approx(workload.pme * capacity / delta)
    assert workload.pme == pytest.approx(2 * 500 / (800 * 200))
    assert bound.terms["cpu_attention"] == pytest.approx(ATTENTION_GBPS * 1e9 / (400 * kv_token))
    assert bound.tok_s == min(bound.terms.values()) and bound.terms[bound.binding] == bound.tok_s
    cpu = compute_bound(PerfModel(spec, flat_profile(False), workload, Budgets(4 * GiB, 512 * GiB, 0)))
    assert set(cpu.terms) == {"host_memory", "cpu_compute"} and cpu.delta_s is None


def test_refill_beats_static_batches_when_generation_lengths_vary():
    profile = make_profile(device=True, device_gib=16)
    workload = Workload.from_lengths([200] * 4, [10, 50, 200, 1000], num_prompts=20_000)
    plan = make_plan(
        small_spec(num_layers=8, hidden_size=2048), profile, workload, Budgets.from_args(profile, 16)
    )
    assert plan.predicted.static_batches_tok_s < plan.predicted.generated_tok_s


def test_plan_accounts_memory_by_category_within_budgets():
    profile = load_profile("a5000-epyc7453")
    plan = make_plan(
        load_spec("mixtral"), profile, Workload.fixed(512, 256, 10_000), Budgets.from_args(profile, 128)
    )
    host, device = plan.memory["host"], plan.memory["device"]
    assert host["total"] == pytest.approx(
        sum(v for k, v in host.items() if k not in ("total", "budget", "pinned_weights"))
    )
    assert host["pinned_weights"] == host["weights"]  # the streamed weights' arena, all of it pinned
    assert host["total"] <= host["budget"] and device["total"] <= device["budget"]
    assert device["total"] == pytest.approx(
        device["resident_weights"]
        + device["stream_buffers"]
        + device["reserve"]
        + device["decode_activations"]
        + device["prefill_workspace"]
    )
    assert plan.decisions.kv_budget_bytes == host["kv_cache"] <= 128 * GiB
    assert plan.decisions.is_resident("qkv_proj") and plan.decisions.is_resident("experts", 0)
    assert not plan.decisions.is_resident("experts", plan.decisions.resident_experts_per_layer)


def test_streaming_on_the_host_adds_expert_copies_at_the_memory_copy_rate():
    spec, workload = small_spec(), Workload.fixed(300, 200, 1000)
    profile, budgets = flat_profile(False), Budgets(8 * GiB, 512 * GiB, 0)
    plain = PerfModel(spec, profile, workload, budgets)
    streamed = PerfModel(spec, profile, workload, budgets, stream_on_host=True)
    assert plain.residency_range == (plain.layout.max_residency,) * 2
    rho = streamed.residency_range[0]
    assert streamed.residency_range == (rho, rho) and streamed.layout.resident_groups(rho)[1] == 0
    c = candidates(residency=rho, attention_threads=8)
    base, step = plain.decode_step(c, np.array([100.0])), streamed.decode_step(c, np.array([100.0]))
    copy = spec.num_moe_layers * streamed.layout.streamed_moe_layer[rho] / (profile.memory.copy_gbps * 1e9)
    assert step["weight_copy"][0] == pytest.approx(copy) and copy > 0
    assert step["step"][0] == pytest.approx(base["step"][0] + copy)
    plan = make_plan(spec, profile, workload, budgets, stream_on_host=True)
    assert plan.decisions.stream_weights and plan.decisions.resident_experts_per_layer == 0
    assert not make_plan(spec, profile, workload, budgets).decisions.stream_weights


def test_end_to_end_bound_adds_the_prompts_prefill_at_peak_to_the_compute_term():
    spec, workload = small_spec(), Workload.fixed(300, 200, 1000)
    model = PerfModel(spec, flat_profile(False), workload, Budgets(8 * GiB, 512 * GiB, 0))
    bound = compute_bound(model)
    from planner.perf.bound import prefill_flops_per_prompt_token

    prefill_s = 300 / 200 * prefill_flops_per_prompt_token(model) / model.rates.peak_flops
    decoded = 199 / 200  # each sequence's first token comes from its prefill
    compute = 1 / (decoded / bound.terms["cpu_compute"] + prefill_s)
    memory = bound.terms["host_memory"] / decoded
    assert bound.end_to_end_tok_s == pytest.approx(min(compute, memory))
    assert compute < bound.terms["cpu_compute"]
    plan = make_plan(spec, flat_profile(False), workload, Budgets(8 * GiB, 512 * GiB, 0))
    assert plan.predicted.generated_tok_s <= plan.bound.end_to_end_tok_s


def test_a_chunk_riding_a_decode_step_pays_no_weight_copy_of_its_own():
    """The merged pass: with refill every prefill chunk rides a decode step, so the streamed layers it would
    have copied for a pass of its own are not paid again; its expert batches join the decode tokens'."""
    from planner.perf.merged import merged_prefill

    spec, profile, budgets = small_spec(), flat_profile(False), Budgets(8 * GiB, 512 * GiB, 0)
    staggered = Workload.from_lengths([300] * 4, [8, 30, 50, 64], num_prompts=1000)
    model = PerfModel(spec, profile, staggered, budgets, stream_on_host=True)
    c = candidates(residency=model.residency_range[0], attention_threads=8)
    n = np.array([100.0])
    alone, decode = model.prefill_chunk(c, n), model.decode_step(c, n)
    merged = merged_prefill(model, c, alone, decode, n, np.array([1.0]))
    assert alone["weight_copy"][0] > 0
    assert merged["chunk"][0] <= alone["chunk"][0] - 0.9 * alone["weight_copy"][0]  # the copy, not paid again
    assert merged["weight_copy"][0] < alone["weight_copy"][0]
    unmerged = merged_prefill(model, c, alone, decode, n, np.array([0.0]))  # no decode step to ride
    assert unmerged["chunk"][0] == alone["chunk"][0] and unmerged["weight_copy"][0] == alone["weight_copy"][0]


def test_a_third_stream_slot_only_when_device_memory_has_room():
    from planner.plans.plan import Plan

    spec, workload, profile = (
        load_spec("mixtral"),
        Workload.fixed(512, 256, 10_000),
        load_profile("a5000-epyc7453"),
    )
    c, n = candidates(residency=0, num_seqs=64), 64.0
    seen = set()
    for device_gib in np.linspace(8, 40, 17):
        memory = PerfModel(spec, profile, workload, Budgets(128 * GiB, 512 * GiB, device_gib * GiB)).memory
        used = float(
            (memory.device_fixed(c) + memory.decode_activations(c, n) + memory.prefill_workspace(c))[0]
        )
        slot = float(memory.stream_buffers(c, 3)[0] - memory.stream_buffers(c, 2)[0])
        seen.add(memory.stream_slots(c, n))
        assert memory.stream_slots(c, n) == (3 if used + slot <= device_gib * GiB else 2)
    assert seen == {2, 3}
    plan = make_plan(spec, profile, workload, Budgets.from_args(profile, 128, device_gb=80))  # streams
    assert (
        plan.decisions.stream_slots == 3 and plan.memory["device"]["total"] <= plan.memory["device"]["budget"]
    )
    assert Plan.from_yaml(plan.to_yaml()).decisions.stream_slots == 3
    old = plan.to_dict()
    del old["stream_slots"]  # a plan written before the field: 2 slots
    assert Plan.from_dict(old).decisions.stream_slots == 2

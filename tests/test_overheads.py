"""The profile's `overheads` section: schema and validation, the perf model's exact use of it, its calibration
multiplier, and the profiler's measurement of it on this machine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from planner.calibration.calibrate import fit
from planner.calibration.runs import load_run
from planner.errors import UserError
from planner.hardware.profile import (
    CALL_OVERHEADS,
    ELEMENTWISE_COSTS,
    HardwareProfile,
    Overheads,
    load_profile,
)
from planner.modules import DECODE_MODULES, PREFILL_MODULES
from planner.perf.memory import Budgets
from planner.perf.model import Candidates, PerfModel
from planner.plans.workload import Workload
from tests.planner_support import profile_dict, small_spec
from tests.test_calibrate import CONFIGS, write_reports

CALL_S = {name: (i + 1) * 1e-5 for i, name in enumerate(CALL_OVERHEADS)}
ELEMENT_NS = {"norm": 3.0, "rope": 2.0, "add": 0.5, "attention_score": 1.5, "sampling": 0.8}


def with_overheads(data: dict, call_s=CALL_S, elementwise_ns=ELEMENT_NS) -> dict:
    return {**data, "overheads": {"call_s": dict(call_s), "elementwise_ns": dict(elementwise_ns)}}


def cpu_dict(**kwargs) -> dict:
    return profile_dict(
        device=False,
        cores=4,
        host_gib=64.0,
        read_gbps=40.0,
        peak_tflops=2.0,
        attention_gbps_per_core=5.0,
        name="synthetic-cpu",
        **kwargs,
    )


# ---- schema ----------------------------------------------------------------------------------------
def test_section_round_trips_through_yaml(tmp_path):
    profile = HardwareProfile.from_dict(with_overheads(cpu_dict()))
    assert profile.overheads.call_s.expert == CALL_S["expert"]
    assert profile.overheads.elementwise_ns.attention_score == ELEMENT_NS["attention_score"]
    again = load_profile(profile.save(tmp_path / "p.yaml"))
    assert again == profile and again.to_dict()["overheads"] == profile.to_dict()["overheads"]


def test_absent_section_is_zero_and_not_written():
    old = HardwareProfile.from_dict(cpu_dict())
    assert old.overheads == Overheads() and not old.overheads.measured
    assert "overheads" not in old.to_dict()
    partial = HardwareProfile.from_dict({**cpu_dict(), "overheads": {"call_s": {"expert": 2e-4}}})
    assert partial.overheads.call_s.expert == 2e-4 and partial.overheads.call_s.router == 0.0
    assert partial.overheads.elementwise_ns.norm == 0.0


def test_fingerprint_changes_only_when_measured():
    plain = HardwareProfile.from_dict(cpu_dict())
    zeros = HardwareProfile.from_dict(
        with_overheads(cpu_dict(), dict.fromkeys(CALL_S, 0.0), dict.fromkeys(ELEMENT_NS, 0.0))
    )
    measured = HardwareProfile.from_dict(with_overheads(cpu_dict()))
    assert zeros.fingerprint() == plain.fingerprint() != measured.fingerprint()
    assert plain.with_efficiency(overhead=1.0).fingerprint() == plain.fingerprint()
    assert plain.with_efficiency(overhead=2.0).fingerprint() != plain.fingerprint()


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("call_s", "expert", -1e-6, "overheads.call_s.expert: expected a non-negative number"),
        ("call_s", "router", float("nan"), "overheads.call_s.router: expected a non-negative number"),
        ("call_s", "qkv_proj", float("inf"), "overheads.call_s.qkv_proj: expected a non-negative number"),
        ("elementwise_ns", "norm", "fast", "overheads.elementwise_ns.norm: expected a non-negative number"),
        ("elementwise_ns", "softmax", 1.0, "overheads.elementwise_ns: unknown field(s) softmax"),
        ("call_s", "experts", 1e-6, "overheads.call_s: unknown field(s) experts"),
    ],
)
def test_bad_values_name_their_field(tmp_path, section, key, value, message):
    data = with_overheads(cpu_dict())
    data["overheads"][section][key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_profile(path)


def test_bad_section_shape_and_multiplier_are_named():
    with pytest.raises(UserError, match="overheads: unknown field"):
        HardwareProfile.from_dict({**cpu_dict(), "overheads": {"calls": {}}})
    with pytest.raises(UserError, match="overheads.call_s: expected a mapping"):
        HardwareProfile.from_dict({**cpu_dict(), "overheads": {"call_s": [1, 2]}})
    with pytest.raises(UserError, match="efficiency.overhead: expected a positive number"):
        HardwareProfile.from_dict({**cpu_dict(), "efficiency": {"overhead": 0}})


# ---- the performance model -------------------------------------------------------------------------
N, B_A, B_E, CHUNK = 16.0, 4.0, 1024.0, 512.0
PROMPT, GEN = 64, 32


def model_for(data: dict, family: str = "mixtral") -> PerfModel:
    profile = HardwareProfile.from_dict(data)
    return PerfModel(
        small_spec(family), profile, Workload.fixed(PROMPT, GEN, 128), Budgets.from_args(profile, 1.0)
    )


def candidates() -> Candidates:
    return Candidates.of(
        residency=[0],
        attn_batch=[B_A],
        expert_batch=[B_E],
        prefill_chunk=[CHUNK],
        attention_threads=[4],
        num_seqs=[N],
    )


@pytest.mark.parametrize("multiplier", [1.0, 2.5])
def test_decode_terms_grow_by_calls_times_costs(multiplier):
    base = cpu_dict()
    old = model_for(base).decode_step(candidates(), np.array([N]))
    new = model_for(with_overheads({**base, "efficiency": {"overhead": multiplier}})).decode_step(
        candidates(), np.array([N])
    )
    spec = small_spec()  # 4 MoE layers, h 512, 8 q / 2 kv heads of 64, 8 experts top-2
    layers, h, ns = spec.num_layers, spec.hidden_size, {k: v * 1e-9 for k, v in ELEMENT_NS.items()}
    c = CALL_S
    micro_batches = N / B_A  # one token group without a device
    windows = -(-N * 2 // B_E)  # grouped experts (planner.perf.expert_kernels): a call per b_e routed rows
    expected = {
        "embed": c["embed"],
        "qkv_proj": layers
        * (micro_batches * c["qkv_proj"] + N * (h * ns["norm"] + (8 + 2) * 64 * ns["rope"])),
        "attention": layers * micro_batches * c["attention"],
        "o_proj": layers * (micro_batches * c["o_proj"] + N * h * ns["add"]),
        "router": layers * (c["router"] + N * h * ns["norm"]),
        "experts": layers * (c["expert_grouping"] + windows * c["expert"]),
        "shared_experts": 0.0,
        "dense_mlp": 0.0,
        "weight_copy": 0.0,
        "lm_head": c["lm_head"] + N * h * ns["norm"],
        "sampling": c["sampling"] + N * spec.vocab_size * ns["sampling"],
    }
    # a measured cost per logit replaces the bandwidth estimate of sampling (three fp32 passes at 40 GB/s)
    by_bandwidth = {"sampling": N * spec.vocab_size * 4 * 3 / 40e9}
    for module in DECODE_MODULES:
        assert new[module][0] - old[module][0] == pytest.approx(
            multiplier * expected[module] - by_bandwidth.get(module, 0.0), rel=1e-9, abs=1e-15
        ), module


def test_prefill_terms_grow_by_segments_and_score_elements():
    base = cpu_dict()
    old, new = (
        model_for(base).prefill_chunk(candidates()),
        model_for(with_overheads(base)).prefill_chunk(candidates()),
    )
    spec = small_spec()
    layers, h, ns = spec.num_layers, spec.hidden_size, {k: v * 1e-9 for k, v in ELEMENT_NS.items()}
    c = CALL_S
    segments = CHUNK / PROMPT  # equal prompts: every query scores PROMPT keys
    windows = -(-CHUNK * 2 // B_E)  # grouped experts: a call per b_e routed rows
    expected = {
        "embed": c["embed"],
        "qkv_proj": layers * (c["qkv_proj"] + CHUNK * (h * ns["norm"] + (8 + 2) * 64 * ns["rope"])),
        "attention": layers
        * (segments * c["prefill_attention"] + CHUNK * 8 * PROMPT * ns["attention_score"]),
        "o_proj": layers * (c["o_proj"] + CHUNK * h * ns["add"]),
        "router": layers * (c["router"] + CHUNK * h * ns["norm"]),
        "experts": layers * (c["expert_grouping"] + windows * c["expert"]),
        "shared_experts": 0.0,
        "dense_mlp": 0.0,
        "weight_copy": 0.0,
        "lm_head": c["lm_head"] + segments * h * ns["norm"],
    }
    for module in PREFILL_MODULES:
        assert new[module][0] - old[module][0] == pytest.approx(expected[module], rel=1e-9, abs=1e-15), module


def test_shared_experts_qk_norm_and_dense_layers_are_priced():
    base = cpu_dict()
    for family, module in (("qwen2_moe", "shared_experts"), ("deepseek_v2", "dense_mlp")):
        old = model_for(base, family).decode_step(candidates(), np.array([N]))
        new = model_for(with_overheads(base), family).decode_step(candidates(), np.array([N]))
        assert new[module][0] > old[module][0], (family, module)
    qk = {"qk_norm": "per_head"}
    plain = PerfModel(
        small_spec(),
        HardwareProfile.from_dict(with_overheads(base)),
        Workload.fixed(PROMPT, GEN, 128),
        Budgets.from_args(HardwareProfile.from_dict(base), 1.0),
    )
    normed = PerfModel(small_spec(**qk), plain.profile, plain.workload, plain.budgets)
    gap = (
        normed.decode_step(candidates(), np.array([N]))["qkv_proj"][0]
        - plain.decode_step(candidates(), np.array([N]))["qkv_proj"][0]
    )
    extra_norm = N * (8 + 2) * 64 * ELEMENT_NS["norm"] * 1e-9
    assert gap == pytest.approx(
        small_spec().num_layers * (N / B_A * CALL_S["qk_norm"] + extra_norm), rel=1e-9
    )


MLA_CALL_S = {"qkv_proj": 4e-4, "attention": 7e-5, "o_proj": 3e-4, "prefill_attention": 6e-4}


def test_mla_path_costs_round_trip_and_price_mla_models_only(tmp_path):
    base = with_overheads(cpu_dict())
    mla = {
        **base,
        "overheads": {**base["overheads"], "mla_call_s": MLA_CALL_S, "mla_attention_score_ns": 4.0},
    }
    profile = HardwareProfile.from_dict(mla)
    assert profile.overheads.mla_call_s == MLA_CALL_S
    assert profile.overheads.elementwise_for("mla").attention_score == 4.0
    assert profile.overheads.elementwise_for("gqa").attention_score == ELEMENT_NS["attention_score"]
    assert load_profile(profile.save(tmp_path / "p.yaml")) == profile
    assert HardwareProfile.from_dict(base).overheads.mla_call_s is None
    assert profile.fingerprint() != HardwareProfile.from_dict(base).fingerprint()
    calls = profile.overheads.calls_for("mla")
    assert calls["qkv_proj"] == 4e-4 and calls["qk_norm"] == 0.0 and calls["expert"] == CALL_S["expert"]
    assert profile.overheads.calls_for("gqa") == CALL_S
    with pytest.raises(UserError, match="overheads.mla_call_s: unknown field"):
        HardwareProfile.from_dict(
            {**base, "overheads": {**base["overheads"], "mla_call_s": {"router": 1e-5}}}
        )
    n = np.array([N])
    for family, changed in (("deepseek_v2", True), ("mixtral", False)):
        with_mla, without = model_for(mla, family), model_for(base, family)
        new, old = with_mla.decode_step(candidates(), n), without.decode_step(candidates(), n)
        for module in ("qkv_proj", "attention", "o_proj"):
            assert (new[module][0] != old[module][0]) == changed, (family, module)
        assert new["experts"][0] == old["experts"][0]
    spec = small_spec("deepseek_v2")
    gap = (
        model_for(mla, "deepseek_v2").decode_step(candidates(), n)["attention"][0]
        - model_for(base, "deepseek_v2").decode_step(candidates(), n)["attention"][0]
    )
    assert gap == pytest.approx(
        spec.num_layers * N / B_A * (MLA_CALL_S["attention"] - CALL_S["attention"]), rel=1e-9
    )
    with_mla, without = model_for(mla, "deepseek_v2"), model_for(base, "deepseek_v2")
    segments = CHUNK / PROMPT
    scores = CHUNK * spec.num_heads * PROMPT
    gap = (
        with_mla.prefill_chunk(candidates())["attention"][0]
        - without.prefill_chunk(candidates())["attention"][0]
    )
    per_layer = (
        segments * (MLA_CALL_S["prefill_attention"] - CALL_S["prefill_attention"])
        + scores * (4.0 - ELEMENT_NS["attention_score"]) * 1e-9
    )
    assert gap == pytest.approx(spec.num_layers * per_layer, rel=1e-9)


def test_without_the_section_the_multiplier_changes_nothing():
    base = cpu_dict()
    plain = model_for(base).evaluate(candidates())
    scaled = model_for({**base, "efficiency": {"overhead": 7.0}}).evaluate(candidates())
    zeros = model_for(
        with_overheads(base, dict.fromkeys(CALL_S, 0.0), dict.fromkeys(ELEMENT_NS, 0.0))
    ).evaluate(candidates())
    for other in (scaled, zeros):
        assert other.generated_tok_s[0] == plain.generated_tok_s[0]
        assert all(other.decode_modules[k][0] == plain.decode_modules[k][0] for k in plain.decode_modules)
        assert all(other.prefill_modules[k][0] == plain.prefill_modules[k][0] for k in plain.prefill_modules)
    measured = model_for(with_overheads(base)).evaluate(candidates())
    assert measured.decode_step_s[0] > plain.decode_step_s[0]


# ---- calibration -----------------------------------------------------------------------------------
def test_calibration_fits_the_overhead_multiplier(tmp_path):
    profile = HardwareProfile.from_dict(with_overheads(cpu_dict()))
    truth = {"gemm": 0.7, "overhead": 1.8}
    runs = [load_run(p) for p in write_reports(tmp_path, profile, truth, CONFIGS[:3])]
    calibration = fit(runs, profile)
    assert "overhead" in calibration.fitted
    assert calibration.after["overhead"] == pytest.approx(1.8, rel=0.05)
    assert calibration.after["gemm"] == pytest.approx(0.7, rel=0.05)


# ---- the profiler ----------------------------------------------------------------------------------
def test_tiny_sizing_measures_the_section():
    torch = pytest.importorskip("torch")
    from runtime.profiler.measure import TINY
    from runtime.profiler.overheads import measure_overheads

    overheads = measure_overheads(
        torch.device("cpu"),
        TINY.overhead_budget_s,
        TINY.elementwise_rows,
        repeats=TINY.repeats,
        decode_tokens=TINY.probe_decode_tokens,
        engine_runs=TINY.probe_runs,
    )
    elementwise = overheads.elementwise_ns.to_dict()
    by_size = elementwise.pop("by_size")
    values = {**overheads.call_s.to_dict(), **elementwise}
    assert set(values) == set(CALL_OVERHEADS) | set(ELEMENTWISE_COSTS)
    assert all(math.isfinite(v) and v >= 0 for v in values.values()), values
    assert overheads.measured
    assert overheads.call_s.decode_step > 0  # scheduling; the fitted per-call terms may be 0 on a loaded host
    assert set(overheads.mla_call_s) == {"qkv_proj", "attention", "o_proj", "prefill_attention"}
    assert overheads.mla_attention_score_ns is not None and overheads.mla_attention_score_ns >= 0
    assert all(math.isfinite(v) and v >= 0 for v in overheads.mla_call_s.values())
    assert overheads.elementwise_ns.norm > 0
    sizes = by_size.pop("elements")
    assert sizes == sorted(sizes) and set(by_size) == {"norm", "rope", "add"}
    assert all(len(v) == len(sizes) and min(v) > 0 for v in by_size.values())
    assert overheads.elementwise_ns.ns("norm", sizes[-1]) == pytest.approx(
        overheads.elementwise_ns.norm, rel=1e-2
    )
    HardwareProfile.from_dict(
        with_overheads(cpu_dict(), overheads.call_s.to_dict(), overheads.elementwise_ns.to_dict())
    )  # passes validation


def test_rounds_keep_each_costs_median():
    from runtime.profiler.overheads import median_overheads

    def measured(scale: float) -> Overheads:
        return HardwareProfile.from_dict(
            {
                **with_overheads(
                    cpu_dict(),
                    {k: v * scale for k, v in CALL_S.items()},
                    {k: v * scale for k, v in ELEMENT_NS.items()},
                )
            }
        ).overheads

    quiet, slow, quick = measured(1.0), measured(2.0), measured(0.9)
    slow = Overheads(
        call_s=slow.call_s,
        elementwise_ns=slow.elementwise_ns,
        mla_call_s={"qkv_proj": 4e-4},
        mla_attention_score_ns=3.0,
    )
    quiet = Overheads(
        call_s=quiet.call_s,
        elementwise_ns=quiet.elementwise_ns,
        mla_call_s={"qkv_proj": 2e-4},
        mla_attention_score_ns=1.0,
    )
    quick = Overheads(
        call_s=quick.call_s,
        elementwise_ns=quick.elementwise_ns,
        mla_call_s={"qkv_proj": 1e-4},
        mla_attention_score_ns=2.0,
    )
    median = median_overheads([slow, quiet, quick])
    assert median.call_s.to_dict() == pytest.approx(CALL_S, rel=1e-3)  # kept to 3 significant digits
    assert median.elementwise_ns.norm == ELEMENT_NS["norm"]
    assert median.mla_call_s == {"qkv_proj": 2e-4} and median.mla_attention_score_ns == 2.0
    assert median_overheads([slow]) is slow


# ---- elementwise costs by size of call -------------------------------------------------------------
BY_SIZE = {"elements": [1024, 65536, 4194304], "norm": [2.0, 0.5, 4.0], "rope": [1.0, 1.0, 2.0]}


def test_elementwise_by_size_round_trips_and_interpolates(tmp_path):
    profile = HardwareProfile.from_dict(
        with_overheads(cpu_dict(), elementwise_ns={**ELEMENT_NS, "by_size": BY_SIZE})
    )
    costs = profile.overheads.elementwise_ns
    assert load_profile(profile.save(tmp_path / "p.yaml")) == profile
    assert costs.ns("norm", 65536) == pytest.approx(0.5) and costs.ns("norm", 10) == pytest.approx(2.0)
    assert costs.ns("norm", 8192) == pytest.approx(2.0 ** (1 - 2 * 0.5))  # log-log halfway: 2 -> 0.5
    assert costs.ns("add", 10) == ELEMENT_NS["add"]  # no curve: the scalar
    bad = {**BY_SIZE, "rope": [1.0, 2.0]}
    with pytest.raises(UserError, match="rope: has 2 values but elements has 3"):
        HardwareProfile.from_dict(with_overheads(cpu_dict(), elementwise_ns={**ELEMENT_NS, "by_size": bad}))


def test_perf_model_prices_elementwise_work_at_the_size_of_each_call():
    spec, workload = small_spec(), Workload.fixed(100, 10, 1000)
    curve = {"elements": [1024, 1 << 30], "norm": [1.0, 1.0], "rope": [1.0, 1.0], "add": [1.0, 1.0]}
    flat = HardwareProfile.from_dict(
        with_overheads(cpu_dict(), elementwise_ns={**ELEMENT_NS, "by_size": curve})
    )
    curve_small = {**curve, "norm": [1.0, 9.0]}  # calls of more elements cost more per element
    steep = HardwareProfile.from_dict(
        with_overheads(cpu_dict(), elementwise_ns={**ELEMENT_NS, "by_size": curve_small})
    )
    c = Candidates.of(
        residency=[PerfModel(spec, flat, workload, Budgets(1 << 34, 1 << 36, 0)).layout.max_residency],
        attn_batch=[8],
        expert_batch=[256],
        prefill_chunk=[1024],
        attention_threads=[4],
        num_seqs=[64],
    )
    budgets = Budgets(1 << 34, 1 << 36, 0)
    one = PerfModel(spec, flat, workload, budgets).decode_step(c, np.array([64.0]))
    two = PerfModel(spec, steep, workload, budgets).decode_step(c, np.array([64.0]))
    assert two["router"][0] > one["router"][0] and two["qkv_proj"][0] > one["qkv_proj"][0]
    assert two["o_proj"][0] == pytest.approx(one["o_proj"][0])  # adds: the same curve in both


def test_expert_rows_are_bucketed_to_a_bounded_set_of_gemm_shapes():
    from planner.perf.row_buckets import EXACT_ROWS, bucket_rows, expected_padding

    assert [bucket_rows(m) for m in (1, EXACT_ROWS, 65, 100, 128, 129, 1000)] == [
        1,
        64,
        72,
        104,
        128,
        144,
        1024,
    ]
    assert all(m <= bucket_rows(m) <= 1.125 * m for m in range(1, 5000))
    assert len({bucket_rows(m) for m in range(1, 1025)}) < 100
    assert expected_padding(np.array([10.0, 1000.0])).tolist() == [1.0, pytest.approx(1 + np.log(2) / 16)]


# ---- sampling modes ----------------------------------------------------------------------------------
def sampling_seconds(elementwise_ns: dict, sampled: float, top_p: float) -> float:
    profile = HardwareProfile.from_dict(with_overheads(cpu_dict(), elementwise_ns=elementwise_ns))
    workload = Workload.from_lengths(
        [PROMPT], [GEN], num_prompts=128, sampled_share=sampled, top_p_share=top_p
    )
    model = PerfModel(small_spec(), profile, workload, Budgets.from_args(profile, 1.0))
    return float(model.decode_step(candidates(), np.array([N]))["sampling"][0])


def test_sampling_is_priced_at_the_workloads_shares_of_each_mode():
    from planner.perf.overheads import TEMPERATURE_PER_GREEDY, TOP_P_PER_GREEDY

    logits = N * small_spec().vocab_size
    greedy = sampling_seconds(ELEMENT_NS, 0.0, 0.0)
    measured = {**ELEMENT_NS, "sampling_temperature": 2.0, "sampling_top_p": 30.0}
    mixed = sampling_seconds(measured, 0.5, 0.25)
    # half greedy (0.8 ns), a quarter temperature (2 ns), a quarter top-p (30 ns) per logit
    assert mixed - greedy == pytest.approx(logits * (0.25 * (2.0 - 0.8) + 0.25 * (30.0 - 0.8)) * 1e-9)
    assert sampling_seconds(measured, 0.0, 0.0) == pytest.approx(greedy)
    # a profile that measured only greedy sampling prices the other modes at fixed multiples of it
    fallback = sampling_seconds(ELEMENT_NS, 1.0, 0.5) - greedy
    expected = 0.5 * (TEMPERATURE_PER_GREEDY - 1.0) + 0.5 * (TOP_P_PER_GREEDY - 1.0)
    assert fallback == pytest.approx(logits * 0.8 * expected * 1e-9)


def test_sampling_mode_costs_are_written_only_when_measured():
    measured = {**ELEMENT_NS, "sampling_temperature": 2.0, "sampling_top_p": 30.0}
    profile = HardwareProfile.from_dict(with_overheads(cpu_dict(), elementwise_ns=measured))
    assert profile.to_dict()["overheads"]["elementwise_ns"]["sampling_top_p"] == 30.0
    older = HardwareProfile.from_dict(with_overheads(cpu_dict()))  # written before these fields existed
    assert "sampling_temperature" not in older.to_dict()["overheads"]["elementwise_ns"]
    assert older.overheads.elementwise_ns.sampling_temperature == 0.0
    assert older.fingerprint() != profile.fingerprint()

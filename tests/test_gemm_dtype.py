"""GEMMs upcast to float32 on a CPU whose profile says so (`planner.perf.gemm_dtype`): the plan's rule and host
bytes, the engine's store holding exactly those bytes, greedy tokens of a bf16 model still the reference's
(looped and grouped experts), and the profiler measuring curves with wider weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import yaml

from planner.errors import UserError
from planner.hardware.profile import GemmCurve, HardwareProfile, load_profile
from planner.perf.costs import ModelCosts
from planner.perf.gemm_dtype import plan_gemm_dtype, upcast_extra_bytes
from planner.perf.memory import Budgets
from planner.plans.build import make_plan
from planner.plans.plan import Plan
from planner.plans.workload import Workload
from planner.specs.spec import load_spec
from runtime.checkpoint import open_checkpoint, write_random_checkpoint
from runtime.engine import Engine, EngineBackend, EngineConfig
from runtime.model.generation import ReferenceBackend
from runtime.model.layers import linear
from runtime.model.reference import ReferenceModel
from runtime.profiler import gemm as profiler_gemm
from runtime.profiler.gemm import measure_gemm_curve
from runtime.profiler.grids import EXPERT_SHAPES
from tests.test_engine import new_states, tiny_spec

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_the_rule_upcasts_16_bit_gqa_models_computing_on_the_host_only():
    mixtral, mla = load_spec("mixtral-mini"), load_spec("deepseek-v2-lite")
    assert plan_gemm_dtype(mixtral, "float32", host_compute=True) == "float32"
    assert plan_gemm_dtype(mixtral, "bfloat16", host_compute=True) is None
    assert plan_gemm_dtype(mixtral, "float32", host_compute=False) is None
    assert plan_gemm_dtype(mla, "float32", host_compute=True) is None
    assert plan_gemm_dtype(dataclasses.replace(mixtral, dtype="float32"), "float32", True) is None


def test_plan_holds_gemm_weights_wide_and_prices_their_bytes():
    spec = load_spec("mixtral-mini")
    base = load_profile("cpu-amd-epyc-2c")
    workload = Workload.fixed(128, 64, 256)
    plans = {
        dtype: make_plan(
            spec, dataclasses.replace(base, gemm_dtype=dtype), workload, Budgets.from_args(base, 4.0)
        )
        for dtype in ("bfloat16", "float32")
    }
    assert plans["bfloat16"].decisions.gemm_dtype is None
    assert plans["float32"].decisions.gemm_dtype == "float32"
    extra = plans["float32"].memory["host"]["weights"] - plans["bfloat16"].memory["host"]["weights"]
    assert (
        extra == pytest.approx(upcast_extra_bytes(spec, "float32"))
        and extra > 0.8 * ModelCosts(spec).total_bytes()
    )
    again = Plan.from_yaml(plans["float32"].to_yaml())
    assert again.decisions.gemm_dtype == "float32"
    assert EngineConfig.from_plan(again, device="cpu").upcast_dtype == "float32"


@pytest.fixture(scope="module", params=["mixtral", "qwen3_moe", "qwen2_moe"])
def bf16_checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"{request.param}-bf16")
    write_random_checkpoint(tiny_spec(request.param), directory, dtype="bf16", seed=5)
    return open_checkpoint(directory)


def _config(**changes) -> EngineConfig:
    return EngineConfig.build(
        num_seqs=3,
        attn_batch=2,
        expert_batch=3,
        kv_budget_bytes=1 << 22,
        kv_block_size=4,
        prefill_chunk=12,
        attention_threads=1,
        **changes,
    )


def test_store_holds_what_the_planner_counts(bf16_checkpoint):
    spec = bf16_checkpoint.spec
    engine = Engine(bf16_checkpoint, _config(gemm_dtype="float32"))
    try:
        counted = ModelCosts(spec).total_bytes() + upcast_extra_bytes(spec, "float32")
        assert engine.store.resident_bytes == pytest.approx(counted, rel=0.01)
        layer = engine.store.layers[0]
        assert layer["attn.q_proj"].dtype == layer["moe.experts.0-6.gate_up"].dtype == torch.float32
        assert layer["moe.router"].dtype == engine.store.dtype == torch.bfloat16
        assert engine.store.globals["lm_head"].dtype == torch.float32
        assert not engine.stack.grouped  # the per-expert loop is the default where GEMMs run upcast
    finally:
        engine.close()


@pytest.mark.parametrize("grouped", [None, True], ids=["default", "grouped"])
def test_greedy_tokens_match_the_bf16_reference(bf16_checkpoint, grouped):
    if bf16_checkpoint.spec.num_shared_experts:
        pytest.skip("bf16 accumulation order flips a tie of this tiny model in the engine either way")
    generator = torch.Generator().manual_seed(9)
    vocab = bf16_checkpoint.spec.vocab_size
    prompts = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in (1, 23, 7, 30, 2, 13, 18)]
    workload = (prompts, [12, 3, 14, 6, 9, 1, 10])
    reference = new_states(workload)
    ReferenceBackend(ReferenceModel(bf16_checkpoint.spec, bf16_checkpoint.weights)).run(reference)
    engine = Engine(bf16_checkpoint, _config(gemm_dtype="float32", grouped_experts=grouped))
    states = new_states(workload)
    try:
        EngineBackend(engine).run(states)
    finally:
        engine.close()
    assert [s.token_ids for s in states] == [s.token_ids for s in reference]


def test_linear_with_a_wider_weight_rounds_to_the_input_dtype():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, generator=generator).bfloat16()
    w, b = (
        torch.randn(32, 64, generator=generator).bfloat16(),
        torch.randn(32, generator=generator).bfloat16(),
    )
    out = linear(x, w.float(), b)
    assert out.dtype == torch.bfloat16
    expected = F.linear(x.float(), w.float(), b.float()).bfloat16()
    assert torch.equal(out, expected)


def test_profiler_measures_curves_with_wider_weights():
    curve = measure_gemm_curve(
        EXPERT_SHAPES[0], (1, 4), torch.device("cpu"), torch.bfloat16, 0, 1.0, 1.0, 2, torch.float32
    )
    assert curve.rows == (1, 4) and all(rate > 0 for rate in curve.tflops)


def test_profiler_measures_the_narrow_speed_where_it_picks_float32(monkeypatch):
    def fake_curve(shape, rows, device, dtype, cache, budget, max_call, repeats, weight_dtype):
        rate = (0.3 if weight_dtype == torch.float32 else 0.15) / (1 if rows[0] == 256 else 2 - rows[0] / 16)
        return GemmCurve(shape=shape.label, n=shape.n, k=shape.k, rows=rows, tflops=(rate,))

    monkeypatch.setattr(profiler_gemm, "measure_gemm_curve", fake_curve)
    cpu = torch.device("cpu")
    dtype, narrow = profiler_gemm.pick_gemm_dtype(cpu, EXPERT_SHAPES[0], torch.bfloat16, 1 << 20)
    assert dtype == torch.float32 and narrow == ((1, 0.5), (16, 0.5), (256, 0.5))
    assert profiler_gemm.pick_gemm_dtype(cpu, EXPERT_SHAPES[0], torch.float32, 1 << 20) == (torch.float32, ())


def test_bf16_plans_on_float32_curves_pay_the_measured_narrow_speed():
    base = dataclasses.replace(load_profile("cpu-amd-epyc-2c"), gemm_dtype="float32")
    slower = dataclasses.replace(base, gemm_narrow_speed=((1, 1.0), (256, 0.5)))
    again = HardwareProfile.from_dict(yaml.safe_load(slower.to_yaml()))
    assert again.gemm_narrow_speed == slower.gemm_narrow_speed
    workload = Workload.fixed(128, 64, 512)

    def tok_s(model: str, profile) -> float:
        spec = load_spec(model)
        plan = make_plan(spec, profile, workload, Budgets.from_args(profile, 4.0))
        return plan.predicted.generated_tok_s

    assert tok_s("deepseek-v2-lite-mini", slower) < 0.9 * tok_s("deepseek-v2-lite-mini", base)  # MLA: bf16
    assert tok_s("mixtral-mini", slower) == tok_s("mixtral-mini", base)  # upcast to float32: the curves as is


def test_a_narrow_speed_needs_one_ratio_per_row_count():
    data = dataclasses.replace(load_profile("cpu-amd-epyc-2c"), gemm_narrow_speed=((1, 1.0),)).to_dict()
    data["gemm"]["narrow_speed"]["ratio"] = [1.0, 0.5]
    with pytest.raises(UserError, match="narrow_speed"):
        HardwareProfile.from_dict(data)

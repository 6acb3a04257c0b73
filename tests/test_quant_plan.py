"""The planner prices weights by their storage format: quantized checkpoints' configs give `weight_formats`,
host weight bytes shrink as the formats say (mixtral-mini, 2 layers: fp8 <= 0.70x, mxfp4 <= 0.50x of bf16),
the priced bytes are the bytes a quantized checkpoint stores, plans name the format, and a plan computing in
fp8 (which the runtime cannot run) is refused."""

from __future__ import annotations

import dataclasses

import pytest

from planner.errors import UserError
from planner.hardware.profile import load_profile
from planner.perf.costs import ModelCosts
from planner.perf.memory import Budgets
from planner.plans.build import make_plan
from planner.plans.explain import explain
from planner.plans.plan import Plan
from planner.plans.workload import Workload
from planner.specs.hf_config import spec_from_hf_config, spec_to_hf_config
from planner.specs.spec import load_spec
from runtime.checkpoint.names import expected_tensors
from runtime.quant.config import make_quant_config

PROFILE = "cpu-amd-epyc-2c"


def quantized_spec(spec, method):
    config = spec_to_hf_config(spec)
    if method:
        config["quantization_config"] = make_quant_config(method, expected_tensors(spec))
    return spec_from_hf_config(config)


def host_weight_bytes(spec) -> float:
    profile = load_profile(PROFILE)
    plan = make_plan(spec, profile, Workload.fixed(64, 32, 64), Budgets.from_args(profile, 1.0))
    return plan.memory["host"]["weights"], plan


def test_host_weight_bytes_by_format_and_the_plan_names_it():
    spec = load_spec("mixtral-mini").with_layers(2)
    bf16, _ = host_weight_bytes(quantized_spec(spec, None))
    fp8, fp8_plan = host_weight_bytes(quantized_spec(spec, "fp8"))
    mxfp4, mxfp4_plan = host_weight_bytes(quantized_spec(spec, "mxfp4"))
    assert fp8 <= 0.70 * bf16 and mxfp4 <= 0.50 * bf16
    assert fp8_plan.model.weight_formats["qkv_proj"] == "fp8" and fp8_plan.model.dtype == "bfloat16"
    assert mxfp4_plan.model.weight_formats == {"experts": "mxfp4"}
    assert "mxfp4 (experts), bfloat16 elsewhere" in explain(
        Plan.from_yaml(mxfp4_plan.to_yaml()), what_if=False
    )


@pytest.mark.parametrize("method", ["fp8", "mxfp4"])
def test_priced_bytes_are_what_the_checkpoint_stores(method, tmp_path):
    from runtime.checkpoint import open_checkpoint, write_random_checkpoint

    spec = dataclasses.replace(
        load_spec("mixtral-mini"),
        num_layers=1,
        hidden_size=256,
        num_heads=4,
        num_kv_heads=2,
        vocab_size=512,
        moe_intermediate_size=384,
        num_experts=4,
    )
    write_random_checkpoint(spec, tmp_path, seed=1, quant=method)
    with open_checkpoint(tmp_path) as checkpoint:
        stored = checkpoint.weights.total_nbytes()
        priced = ModelCosts(checkpoint.spec).total_bytes()
    assert abs(priced - stored) <= 1e-3 * stored


def test_a_plan_computing_in_fp8_is_refused():
    spec = dataclasses.replace(load_spec("mixtral-mini"), dtype="float8_e4m3fn")
    with pytest.raises(UserError, match="the runtime computes in bfloat16"):
        host_weight_bytes(spec)


@pytest.mark.slow
@pytest.mark.parametrize("method,most", [("fp8", 0.70), ("mxfp4", 0.50)])
def test_make_checkpoint_quant_then_generate_and_plan(method, most, tmp_path, capsys):
    """`runtime make-checkpoint --model mixtral-mini --layers 2 --quant X`, then `runtime generate` on it; the
    plan of that checkpoint holds at most `most` of the bf16 model's host weight bytes."""
    import json

    from runtime.cli import main

    out = tmp_path / method
    argv = ["make-checkpoint", "--model", "mixtral-mini", "--layers", "2", "--quant", method, "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(out),
                "--prompt",
                "Hello",
                "--max-tokens",
                "4",
                "--json",
                "--profile",
                PROFILE,
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(record["token_ids"]) == 4 and record["finish_reason"] == "length"
    quantized, plan = host_weight_bytes(load_spec(str(out)))
    bf16, _ = host_weight_bytes(load_spec("mixtral-mini").with_layers(2))
    assert quantized <= most * bf16 and method in plan.weights_words

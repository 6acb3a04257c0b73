"""The specs of checkpoints published in FP8 (DeepSeek-V3/R1, Kimi-K2, Qwen3-30B-A3B-FP8) carry the published
quantization_config, so they plan as FP8; `spec_to_hf_config` writes it back (the fingerprint survives, and
transformers 5.23 reads it as its FP8 config), and a checkpoint written from such a spec stores FP8 and reads
back as the same spec. GLM-4.5's published checkpoint is bf16 (its FP8 release is a separate repo)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import transformers
import yaml
from transformers.quantizers import AutoQuantizationConfig

from planner.errors import UserError
from planner.perf.costs import ModelCosts
from planner.specs.hf_config import spec_from_hf_config, spec_to_hf_config
from planner.specs.model_spec import ModelSpec
from planner.specs.spec import load_spec

MODELS = Path(__file__).resolve().parents[1] / "models"
FP8_SPECS = ("deepseek-v3", "kimi-k2", "qwen3-30b-a3b-fp8")


@pytest.mark.parametrize("name", FP8_SPECS)
def test_fp8_specs_plan_as_fp8_and_round_trip_through_config_json(name):
    spec = load_spec(name)
    assert spec.weight_formats == dict.fromkeys(spec.quantizable_modules, "fp8") and spec.dtype == "bfloat16"
    config = spec_to_hf_config(spec)
    assert spec_from_hf_config(config).fingerprint() == spec.fingerprint()
    quant = AutoQuantizationConfig.from_dict(config["quantization_config"])
    assert type(quant).__name__ == "FineGrainedFP8Config" and list(quant.weight_block_size) == [128, 128]
    assert transformers.AutoConfig.for_model(**config).quantization_config["quant_method"] == "fp8"
    bf16 = dataclasses.replace(spec, weight_formats={})
    assert ModelCosts(spec).total_bytes() < 0.55 * ModelCosts(bf16).total_bytes()


def test_deepseek_r1_is_fp8_too_and_glm_4_5_is_bf16():
    assert load_spec("deepseek-r1").weight_formats == load_spec("deepseek-v3").weight_formats
    glm = load_spec("glm-4.5")
    assert glm.weight_formats == {} and "quantization_config" not in spec_to_hf_config(glm)


@pytest.mark.parametrize("formats", [{"experts": "mxfp4"}, {"experts": "fp8", "shared_experts": "fp8"}])
@pytest.mark.parametrize("name", ["qwen2-moe-mini", "deepseek-v3-mini", "mixtral-mini"])
def test_partial_formats_round_trip(name, formats):
    spec = load_spec(name).with_weight_formats(formats)
    assert spec_from_hf_config(spec_to_hf_config(spec)).fingerprint() == spec.fingerprint()


def test_mixed_formats_and_conflicting_fields_are_user_errors():
    mixed = load_spec("mixtral-mini").with_weight_formats({"experts": "mxfp4", "qkv_proj": "fp8"})
    with pytest.raises(UserError, match="one quantization_config holds one method"):
        spec_to_hf_config(mixed)
    data = yaml.safe_load((MODELS / "deepseek-v3.yaml").read_text())
    with pytest.raises(UserError, match="both weight_formats and quantization_config"):
        ModelSpec.from_dict({**data, "weight_formats": {"experts": "fp8"}})
    with pytest.raises(UserError, match="supported: fp8"):
        ModelSpec.from_dict({**data, "quantization_config": {"quant_method": "awq"}})


def test_checkpoint_written_from_an_fp8_spec_stores_fp8_and_reads_back_as_the_spec(tmp_path):
    from runtime.checkpoint import open_checkpoint, write_random_checkpoint

    data = yaml.safe_load((MODELS / "deepseek-v3-mini.yaml").read_text())
    quant = yaml.safe_load((MODELS / "deepseek-v3.yaml").read_text())["quantization_config"]
    spec = ModelSpec.from_dict({**data, "quantization_config": quant}).with_layers(2)
    spec = dataclasses.replace(spec, vocab_size=512)
    write_random_checkpoint(spec, tmp_path, seed=1)
    transformers.AutoConfig.from_pretrained(tmp_path)
    with open_checkpoint(tmp_path) as checkpoint:
        assert checkpoint.spec.fingerprint() == spec.fingerprint()
        layouts = checkpoint.weights.quant
        assert layouts["layers.1.moe.experts.0.gate_proj"].method == "fp8"
        assert layouts["layers.0.attn.kv_b_proj"].method == "fp8" and "lm_head" not in layouts

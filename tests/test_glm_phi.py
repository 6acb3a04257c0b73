"""GLM-4.5 (`Glm4MoeForCausalLM`) and Phi-3.5-MoE (`PhimoeForCausalLM`) against transformers 5.23.

Tiny random fp32 models are built with transformers' config classes, saved sharded with `save_pretrained`,
opened by our loader and run by `ReferenceModel`: logits within 1e-4 relative for the prefill and 32 decode
steps, the greedy token identical at every step, and greedy batches through `runtime.LLM` equal to
transformers' greedy decoding. Cases: GLM with per-head q/k norm, q/k/v biases, a quarter-rotary RoPE,
group-limited sigmoid routing with a random correction bias, a shared expert and a dense first layer; a
GLM-4.5-Air-like one (no q/k norm, half-rotary, no groups, no dense layer); Phi with LayerNorm biases,
q/k/v/o and lm_head biases, a sliding window shorter than the run and a wide sparsemixer margin (so the
top-2 weights are not all 1); Phi with longrope (short and long mscales differing, decoding past the
original positions); Phi with the published margin. The routers are also compared with
transformers' own router modules.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_deepseek import randomize_correction_bias, run_ours, run_transformers  # noqa: E402
from test_reference_forward import hf_greedy, randomize, relative_error  # noqa: E402

from runtime.checkpoint import open_checkpoint  # noqa: E402
from runtime.model.reference import ReferenceModel  # noqa: E402
from runtime.model.routing import route, router_logits  # noqa: E402

VOCAB = 128
TOLERANCE = 1e-4
DECODE_STEPS = 32
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    attn_implementation="eager",
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
)
GLM = ("Glm4MoeConfig", "Glm4MoeForCausalLM")
PHI = ("PhimoeConfig", "PhimoeForCausalLM")
CASES = {
    "glm": (
        *GLM,
        dict(
            intermediate_size=96,
            moe_intermediate_size=32,
            n_routed_experts=8,
            num_experts_per_tok=3,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            attention_bias=True,
            use_qk_norm=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        ),
    ),
    "glm_air": (
        *GLM,
        dict(
            intermediate_size=96,
            moe_intermediate_size=32,
            n_routed_experts=6,
            num_experts_per_tok=2,
            n_shared_experts=1,
            first_k_dense_replace=0,
            attention_bias=True,
            use_qk_norm=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5},
        ),
    ),
    "phi": (
        *PHI,
        dict(
            intermediate_size=48,
            num_local_experts=6,
            num_experts_per_tok=2,
            attention_bias=True,
            lm_head_bias=True,
            sliding_window=16,
            router_jitter_noise=0.4,
        ),
    ),
    # longrope: short-factor frequencies, the long mscale once decoding passes the original 16 positions
    "phi_longrope": (
        *PHI,
        dict(
            intermediate_size=48,
            num_local_experts=4,
            num_experts_per_tok=2,
            router_jitter_noise=0.3,
            rope_parameters=dict(
                rope_type="longrope",
                rope_theta=10000.0,
                short_factor=[1.0, 1.3, 1.9, 2.6, 3.1, 4.0, 5.2, 6.0],
                long_factor=[1.5, 2.0, 3.0, 4.5, 6.0, 8.0, 10.0, 12.0],
                short_mscale=1.1,
                long_mscale=1.3,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    "phi_published_margin": (
        *PHI,
        dict(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, attention_bias=True),
    ),
}
NAMES = sorted(CASES)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def hf_config(name: str, **overrides):
    config_cls, _, extra = CASES[name]
    return getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides})


def build_checkpoint(name: str, directory, seed: int, **overrides):
    """Save a tiny random fp32 transformers model of case `name` in several shards; return the model."""
    torch.manual_seed(seed)
    model = getattr(transformers, CASES[name][1])(hf_config(name, **overrides)).float().eval()
    randomize(model, seed)
    randomize_correction_bias(model, seed)
    model.save_pretrained(directory, max_shard_size="40KB")
    return model


@pytest.fixture(scope="module", params=NAMES)
def case(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    return request.param, build_checkpoint(request.param, directory, NAMES.index(request.param)), directory


def test_checkpoint_is_sharded_and_spec_matches(case):
    name, hf_model, directory = case
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    spec = open_checkpoint(directory).spec
    config = hf_model.config
    assert spec.family == config.model_type
    if spec.family == "glm4_moe":
        assert spec.partial_rotary_factor == config.rope_parameters["partial_rotary_factor"]
        assert spec.rotary_dim < spec.head_dim
        assert (spec.qk_norm == "per_head") == config.use_qk_norm
        assert spec.first_dense_layers == config.first_k_dense_replace
        assert (spec.scoring, spec.topk_method) == ("sigmoid", "noaux_tc")
    else:
        assert (spec.norm_type, spec.topk_method, spec.lm_head_bias) == (
            "layernorm",
            "sparsemixer",
            config.lm_head_bias,
        )
        assert spec.extra["router_jitter_noise"] == config.router_jitter_noise


def test_logits_and_greedy_tokens_match_transformers(case):
    name, hf_model, directory = case
    checkpoint = open_checkpoint(directory)
    model = ReferenceModel(checkpoint.spec, checkpoint.weights)
    prompt = torch.randint(3, VOCAB, (11,), generator=torch.Generator().manual_seed(7)).tolist()
    theirs, hf_tokens = run_transformers(hf_model, prompt)
    ours, cache = run_ours(model, prompt, hf_tokens)
    errors = [relative_error(a, b) for a, b in zip(ours, theirs)]
    assert len(errors) == DECODE_STEPS + 1
    assert max(errors) < TOLERANCE, f"{name}: relative logit errors per call {errors}"
    assert [int(step[-1].argmax()) for step in ours[:-1]] == hf_tokens
    assert cache.length == len(prompt) + DECODE_STEPS


def test_greedy_batch_through_llm_matches_transformers(case):
    from runtime import LLM, SamplingParams

    name, hf_model, directory = case
    generator = torch.Generator().manual_seed(11)
    # transformers scales a longrope prefill past the original positions by long_mscale throughout (it decides
    # per call); ours decides per position, as transformers does for every token decoded one at a time
    lengths = (2, 13) if name == "phi_longrope" else (2, 13, 20)
    prompts = [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in lengths]
    outputs = LLM(directory, reference=True).generate(
        prompts, SamplingParams(temperature=0, max_tokens=DECODE_STEPS, ignore_eos=True)
    )
    for prompt, output in zip(prompts, outputs):
        assert output.outputs[0].token_ids == hf_greedy(hf_model, prompt, DECODE_STEPS), name


def hf_router_output(hf_model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk ids, topk weights) of the first MoE layer's transformers router on x."""
    layer = next(layer for layer in hf_model.model.layers if hasattr(layer.mlp, "experts"))
    router = layer.mlp.gate if hasattr(layer.mlp, "gate") else layer.mlp.router
    with torch.no_grad():
        _, weights, ids = router(x)
    return ids, weights


def test_routers_match_transformers_and_are_not_degenerate(case):
    name, hf_model, directory = case
    checkpoint = open_checkpoint(directory)
    spec = checkpoint.spec
    moe_layer = spec.first_dense_layers
    w = {
        key: checkpoint.weights[f"layers.{moe_layer}.{key}"]
        for key in ("moe.router", "moe.router_bias")
        if f"layers.{moe_layer}.{key}" in checkpoint.weights
    }
    x = 2 * torch.randn(256, spec.hidden_size, generator=torch.Generator().manual_seed(3))
    ids, weights = route(router_logits(x, w, spec), spec, w.get("moe.router_bias"))
    hf_ids, hf_weights = hf_router_output(hf_model, x)
    order, hf_order = ids.sort(dim=-1), hf_ids.sort(dim=-1)
    assert torch.equal(order.values, hf_order.values), name
    torch.testing.assert_close(
        weights.gather(1, order.indices), hf_weights.float().gather(1, hf_order.indices), rtol=1e-6, atol=1e-7
    )
    assert torch.unique(ids).numel() == spec.num_experts
    differs = float(((weights - 1).abs() > 0.01).float().mean())
    assert differs > 0.005, "routing weights are all 1: the test would not see a wrong weight"

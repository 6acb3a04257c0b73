"""DeepSeek-V2/V3 (MLA, YaRN, group-limited and sigmoid routing) against transformers 5.23.

Tiny random fp32 models are built with transformers, saved sharded with `save_pretrained`, opened by our
loader and run by `ReferenceModel`: logits within 1e-4 relative for the prefill and 32 decode steps, with
the absorbed decode form (the default; attention over the cached latent rows) and the expanded one, the
greedy token identical at every step. Cases: a V2-Lite-like model (no q_lora, greedy routing, dense first
layer, YaRN), V2 with q_lora and group-limited routing, V3 with n_group/topk_group, a random correction bias
and YaRN whose mscale differs from mscale_all_dim, V3 with rotate-half RoPE. Routers and YaRN tables are also
compared with transformers' own modules, and `make-checkpoint` DeepSeek checkpoints load in both.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_reference_forward import hf_greedy, randomize, relative_error  # noqa: E402

from planner.specs.hf_config import spec_from_hf_config, spec_to_hf_config  # noqa: E402
from planner.specs.spec import load_spec  # noqa: E402
from runtime.checkpoint import open_checkpoint  # noqa: E402
from runtime.checkpoint.writer import write_random_checkpoint  # noqa: E402
from runtime.model import reference  # noqa: E402
from runtime.model.mla import make_mla_attention, mla_rope, mla_softmax_scale  # noqa: E402
from runtime.model.reference import ReferenceModel  # noqa: E402
from runtime.model.routing import route, router_logits  # noqa: E402

VOCAB = 128
TOLERANCE = 1e-4
DECODE_STEPS = 32
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    kv_lora_rank=32,
    qk_rope_head_dim=16,
    qk_nope_head_dim=16,
    v_head_dim=24,
    n_routed_experts=8,
    num_experts_per_tok=3,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    attn_implementation="eager",
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
)
YARN = dict(
    rope_type="yarn",
    factor=4.0,
    original_max_position_embeddings=32,
    beta_fast=32,
    beta_slow=1,
    rope_theta=10000.0,
)
V2 = ("DeepseekV2Config", "DeepseekV2ForCausalLM")
V3 = ("DeepseekV3Config", "DeepseekV3ForCausalLM")
CASES = {
    "v2_lite": (
        *V2,
        dict(
            q_lora_rank=None,
            topk_method="greedy",
            n_shared_experts=2,
            first_k_dense_replace=1,
            rope_parameters=dict(YARN, mscale=0.707, mscale_all_dim=0.707),
        ),
    ),
    "v2_qlora_group_limited": (
        *V2,
        dict(
            q_lora_rank=24,
            topk_method="group_limited_greedy",
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.0,
            n_shared_experts=1,
            first_k_dense_replace=0,
        ),
    ),
    "v3_group_limited": (
        *V3,
        dict(
            q_lora_rank=24,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            n_shared_experts=1,
            first_k_dense_replace=1,
            rope_parameters=dict(YARN, mscale=1.0, mscale_all_dim=0.707),
        ),
    ),
    "v3_rotate_half": (
        *V3,
        dict(
            q_lora_rank=None,
            rope_interleave=False,
            n_group=2,
            topk_group=1,
            n_shared_experts=1,
            first_k_dense_replace=1,
        ),
    ),
}
NAMES = sorted(CASES)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def hf_config(name: str, **overrides):
    config_cls, _, extra = CASES[name]
    return getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides})


def randomize_correction_bias(model: torch.nn.Module, seed: int) -> None:
    """e_score_correction_bias is a buffer, zero at init: give it values that change the selection."""
    generator = torch.Generator().manual_seed(seed)
    for name, buffer in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buffer.copy_(0.3 * torch.randn(buffer.shape, generator=generator))


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


def run_ours(
    model: ReferenceModel, prompt: list[int], tokens: list[int]
) -> tuple[list[torch.Tensor], object]:
    cache = model.new_cache()
    logits = [model.prefill(prompt, cache)]
    for token in tokens:
        logits.append(model.decode(token, cache)[None])
    return logits, cache


def run_transformers(hf_model, prompt: list[int]) -> tuple[list[torch.Tensor], list[int]]:
    """Prefill then DECODE_STEPS greedy steps; the logits of each call and the tokens fed back."""
    past = transformers.DynamicCache(config=hf_model.config)
    logits, tokens = [], []
    with torch.no_grad():
        out = hf_model(torch.tensor([prompt]), past_key_values=past, use_cache=True).logits[0]
        for _ in range(DECODE_STEPS):
            logits.append(out)
            tokens.append(int(out[-1].argmax()))
            out = hf_model(torch.tensor([[tokens[-1]]]), past_key_values=past, use_cache=True).logits[0]
    return logits + [out], tokens


def test_checkpoint_is_sharded_and_spec_matches(case):
    name, hf_model, directory = case
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    spec = open_checkpoint(directory).spec
    config = hf_model.config
    assert (spec.family, spec.attention, spec.q_lora_rank) == (
        config.model_type,
        "mla",
        config.q_lora_rank or 0,
    )
    assert spec.first_dense_layers == config.first_k_dense_replace


@pytest.mark.parametrize("decode_form", ["absorbed", "expanded"])
def test_logits_and_greedy_tokens_match_transformers(case, decode_form, monkeypatch):
    name, hf_model, directory = case
    monkeypatch.setitem(reference.ATTENTION, "mla", make_mla_attention(decode_form))
    checkpoint = open_checkpoint(directory)
    model = ReferenceModel(checkpoint.spec, checkpoint.weights)
    prompt = torch.randint(3, VOCAB, (11,), generator=torch.Generator().manual_seed(7)).tolist()
    theirs, hf_tokens = run_transformers(hf_model, prompt)
    ours, cache = run_ours(model, prompt, hf_tokens)
    errors = [relative_error(a, b) for a, b in zip(ours, theirs)]
    assert max(errors) < TOLERANCE, f"{name}/{decode_form}: relative logit errors per call {errors}"
    assert [int(step[-1].argmax()) for step in ours[:-1]] == hf_tokens
    spec = checkpoint.spec
    with torch.inference_mode():
        cached = cache.layers[0].append(latent=torch.zeros(1, spec.kv_lora_rank + spec.qk_rope_head_dim))
    assert set(cached) == {"latent"}, "the MLA cache holds only the latent rows"


def test_absorbed_and_expanded_decode_agree(case):
    _, _, directory = case
    checkpoint = open_checkpoint(directory)
    spec = checkpoint.spec
    generator = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, VOCAB, (9,), generator=generator).tolist()
    steps = torch.randint(3, VOCAB, (8,), generator=generator).tolist()
    outputs = {}
    for form in ("absorbed", "expanded"):
        reference.ATTENTION["mla"] = make_mla_attention(form)
        try:
            outputs[form], _ = run_ours(ReferenceModel(spec, checkpoint.weights), prompt, steps)
        finally:
            reference.ATTENTION["mla"] = make_mla_attention("absorbed")
    for absorbed, expanded in zip(outputs["absorbed"][1:], outputs["expanded"][1:]):
        assert relative_error(absorbed, expanded) < 1e-5


def test_greedy_batch_through_llm_matches_transformers(case):
    from runtime import LLM, SamplingParams

    name, hf_model, directory = case
    generator = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in (2, 13)]
    outputs = LLM(directory, reference=True).generate(
        prompts, SamplingParams(temperature=0, max_tokens=DECODE_STEPS, ignore_eos=True)
    )
    for prompt, output in zip(prompts, outputs):
        assert output.outputs[0].token_ids == hf_greedy(hf_model, prompt, DECODE_STEPS), name


@pytest.mark.parametrize("name", ["v2_qlora_group_limited", "v3_group_limited"])
def test_routers_match_transformers_and_groups_bind(name):
    config = hf_config(name)
    module = (
        transformers.models.deepseek_v3.modeling_deepseek_v3
        if name.startswith("v3")
        else transformers.models.deepseek_v2.modeling_deepseek_v2
    )
    router = (module.DeepseekV3TopkRouter if name.startswith("v3") else module.DeepseekV2TopkRouter)(config)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=generator) * 0.5)
        bias = getattr(router, "e_score_correction_bias", None)
        if bias is not None:
            bias.copy_(0.3 * torch.randn(bias.shape, generator=generator))
        x = torch.randn(256, config.hidden_size, generator=generator)
        _, hf_weights, hf_ids = router(x)
    spec = spec_from_hf_config(config.to_dict())
    w = {"moe.router": router.weight.detach()}
    ids, weights = route(router_logits(x, w, spec), spec, bias)
    order, hf_order = ids.argsort(dim=-1), hf_ids.argsort(dim=-1)
    assert torch.equal(ids.gather(1, order), hf_ids.gather(1, hf_order))
    torch.testing.assert_close(weights.gather(1, order), hf_weights.gather(1, hf_order))
    ungrouped = route(router_logits(x, w, spec), replace(spec, n_group=1, topk_group=1), bias)[0]
    changed = (ungrouped.sort(dim=-1).values != ids.sort(dim=-1).values).any(dim=-1)
    assert changed.float().mean() > 0.1, "group limiting must change the selection of many tokens"


@pytest.mark.parametrize("model", ["deepseek-v2-lite", "deepseek-v3", "deepseek-v2-lite-mini"])
def test_yarn_tables_and_softmax_scale_match_transformers(model):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    spec = load_spec(model)
    config = transformers.AutoConfig.for_model(**spec_to_hf_config(spec))
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
    rope = mla_rope(spec)
    torch.testing.assert_close(rope.inv_freq, inv_freq, rtol=1e-6, atol=0)
    assert rope.attention_scaling == pytest.approx(attention_factor, rel=1e-12)
    expected_scale = yarn_apply_mscale(config.rope_parameters, config.qk_head_dim**-0.5)
    assert mla_softmax_scale(spec) == pytest.approx(expected_scale, rel=1e-12)
    assert mla_softmax_scale(spec) > config.qk_head_dim**-0.5


@pytest.mark.parametrize("model", ["deepseek-v2-lite-mini", "deepseek-v3-mini"])
def test_make_checkpoint_loads_in_ours_and_transformers(model, tmp_path):
    spec = replace(load_spec(model).with_layers(2), vocab_size=2048)  # the layers as specified, a small vocab
    written = write_random_checkpoint(spec, tmp_path, dtype="fp32", seed=3, max_shard_bytes=40 * 2**20)
    assert written.num_shards > 1
    checkpoint = open_checkpoint(tmp_path)
    assert checkpoint.spec.family == spec.family and checkpoint.spec.num_layers == 2
    ours = ReferenceModel(checkpoint.spec, checkpoint.weights)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = torch.randint(3, 1000, (7,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        theirs = hf_model(torch.tensor([prompt])).logits[0]
    logits = ours.prefill(prompt, ours.new_cache())
    assert torch.isfinite(logits).all()
    assert relative_error(logits, theirs) < TOLERANCE


@pytest.mark.big
@pytest.mark.parametrize("model,layers", [("deepseek-v2-lite", None), ("deepseek-v3", 4)])
def test_full_size_make_checkpoint_opens_and_routes(model, layers, tmp_path):
    """About 31 GB (V2-Lite) / 30 GB (V3, 4 layers) of bf16 on disk; reads only the first MoE layer."""
    from runtime.cli import main

    argv = ["make-checkpoint", "--model", model, "--out", str(tmp_path), "--quiet"]
    assert main(argv + (["--layers", str(layers)] if layers else [])) == 0
    checkpoint = open_checkpoint(tmp_path)
    spec = checkpoint.spec
    assert spec.num_layers == (layers or load_spec(model).num_layers)
    moe_layer = spec.first_dense_layers
    w = {"moe.router": checkpoint.weights[f"layers.{moe_layer}.moe.router"]}
    bias = (
        checkpoint.weights[f"layers.{moe_layer}.moe.router_bias"] if spec.has_score_correction_bias else None
    )
    x = torch.randn(16, spec.hidden_size, generator=torch.Generator().manual_seed(0)).to(
        w["moe.router"].dtype
    )
    ids, weights = route(router_logits(x, w, spec), spec, bias)
    assert ids.shape == (16, spec.top_k) and torch.isfinite(weights).all()

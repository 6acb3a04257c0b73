"""The reference forward against transformers 5.23 (the reference implementation, used only in tests).

For each runnable GQA family a tiny random model is built with transformers in fp32, saved sharded with
`save_pretrained`, opened by our loader and run by `ReferenceModel`: logits must match within 1e-4 relative
(norm of difference / norm) for the prefill and each of 32 decode steps, and greedy tokens of a batch of
prompts of different lengths (through `runtime.LLM`) must equal transformers' own greedy decoding.
Weights are re-drawn so activations are O(1), norms are not all ones, and routing is far from uniform.
`build_hf_checkpoint` is also used by tests/test_llm_api.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from runtime.checkpoint import open_checkpoint  # noqa: E402
from runtime.model.reference import ReferenceModel  # noqa: E402
from runtime.model.routing import route, router_logits  # noqa: E402

VOCAB = 128
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    attn_implementation="eager",
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
)

# Each family with the features that set it apart switched on.
CONFIGS = {
    # sliding window shorter than prompt + 32 steps, so the window mask is exercised
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        dict(
            intermediate_size=48,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=16,
        ),
    ),
    # q/k/v biases, shared expert with sigmoid gate, no renormalisation of the top-k weights
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(
            intermediate_size=96,
            moe_intermediate_size=48,
            shared_expert_intermediate_size=80,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            qkv_bias=True,
        ),
    ),
    # per-head q/k norm, head_dim != hidden/heads, norm_topk_prob, linear RoPE scaling
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            intermediate_size=96,
            moe_intermediate_size=48,
            num_key_value_heads=2,
            head_dim=24,
            num_experts=6,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        ),
    ),
    # q/k norm over the whole projection, clip_qkv active at these activation scales
    "olmoe": (
        "OlmoeConfig",
        "OlmoeForCausalLM",
        dict(
            intermediate_size=48,
            num_key_value_heads=4,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            clip_qkv=2.0,
        ),
    ),
    # sinks, sliding window on even layers shorter than prompt + 32 steps, biases everywhere, clamped SwiGLU
    # with a limit the activations reach, router bias, YaRN (the config's default rope)
    "gpt_oss": (
        "GptOssConfig",
        "GptOssForCausalLM",
        dict(
            intermediate_size=48,
            num_key_value_heads=2,
            head_dim=16,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=8,
            swiglu_limit=1.5,
        ),
    ),
}
FAMILIES = sorted(CONFIGS)
TOLERANCE = 1e-4
DECODE_STEPS = 32


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def randomize(model: torch.nn.Module, seed: int, router_scale: float = 3.0) -> None:
    """Weights ~ N(0, 1/fan_in) (routers `router_scale` times larger), embeddings N(0, 1), norms near 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("sinks"):
                param.copy_(noise)
            elif param.dim() == 1:
                param.copy_(1 + 0.2 * noise if "norm" in name else 0.1 * noise)
            elif "embed_tokens" in name:
                param.copy_(noise)
            else:
                scale = router_scale if name.endswith(("mlp.gate.weight", "mlp.router.weight")) else 1.0
                fan_in = param.shape[-2] if param.dim() == 3 else param.shape[-1]  # gpt-oss: [E, in, out]
                param.copy_(noise * scale / fan_in**0.5)


def write_char_tokenizer(directory: Path) -> None:
    """A character-level tokenizer: ids 0-2 are <pad>, <s>, </s>; then printable ASCII."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = [chr(c) for c in range(32, 127)][: VOCAB - 4]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(chars)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(["<pad>", "<s>", "</s>", "<unk>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})
    )


def build_hf_checkpoint(family: str, directory: Path, seed: int = 0, with_tokenizer: bool = False):
    """Save a tiny random fp32 transformers model of `family` in several shards; return the model."""
    config_cls, model_cls, extra = CONFIGS[family]
    config = getattr(transformers, config_cls)(**COMMON, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).float().eval()
    randomize(model, seed)
    model.save_pretrained(directory, max_shard_size="40KB")
    if with_tokenizer:
        write_char_tokenizer(directory)
    return model


@pytest.fixture(scope="module", params=FAMILIES)
def family_checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    model = build_hf_checkpoint(request.param, directory, seed=FAMILIES.index(request.param))
    return request.param, model, directory


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours.float() - theirs.float()).norm() / theirs.float().norm())


def test_checkpoint_is_sharded(family_checkpoint):
    _, _, directory = family_checkpoint
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2


def test_prefill_and_decode_logits_match_transformers(family_checkpoint):
    family, hf_model, directory = family_checkpoint
    checkpoint = open_checkpoint(directory)
    assert checkpoint.spec.family == family
    model = ReferenceModel(checkpoint.spec, checkpoint.weights)
    prompt = torch.randint(0, VOCAB, (11,), generator=torch.Generator().manual_seed(7))

    cache = model.new_cache()
    ours = model.prefill(prompt.tolist(), cache)
    past = transformers.DynamicCache(config=hf_model.config)
    with torch.no_grad():
        theirs = hf_model(prompt[None], past_key_values=past, use_cache=True).logits[0]
    errors = [relative_error(ours, theirs)]
    token = int(ours[-1].argmax())
    for _ in range(DECODE_STEPS):
        ours = model.decode(token, cache)
        with torch.no_grad():
            theirs = hf_model(torch.tensor([[token]]), past_key_values=past, use_cache=True).logits[0, -1]
        errors.append(relative_error(ours, theirs))
        token = int(ours.argmax())
    assert cache.length == prompt.numel() + DECODE_STEPS
    assert max(errors) < TOLERANCE, f"{family}: relative logit errors per step {errors}"


def test_routing_is_not_degenerate(family_checkpoint):
    """The test models route tokens to several experts with clearly unequal weights."""
    family, _, directory = family_checkpoint
    checkpoint = open_checkpoint(directory)
    spec = checkpoint.spec
    x = torch.randn(64, spec.hidden_size, generator=torch.Generator().manual_seed(3))
    layer = {
        name: checkpoint.weights[f"layers.0.{name}"]
        for name in ("moe.router", "moe.router_linear_bias")
        if f"layers.0.{name}" in checkpoint.weights
    }
    topk_ids, topk_weights = route(router_logits(x, layer), spec)
    assert torch.unique(topk_ids).numel() == spec.num_experts
    assert float((topk_weights[:, 0] - topk_weights[:, 1]).mean()) > 0.05


def hf_greedy(hf_model, prompt: list[int], steps: int) -> list[int]:
    past = transformers.DynamicCache(config=hf_model.config)
    tokens, generated = torch.tensor([prompt]), []
    with torch.no_grad():
        for _ in range(steps):
            logits = hf_model(tokens, past_key_values=past, use_cache=True).logits[0, -1]
            generated.append(int(logits.argmax()))
            tokens = torch.tensor([[generated[-1]]])
    return generated


def test_greedy_batch_of_different_lengths_matches_transformers(family_checkpoint):
    from runtime import LLM, SamplingParams

    family, hf_model, directory = family_checkpoint
    generator = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in (3, 9, 17)]
    outputs = LLM(directory, reference=True).generate(
        prompts, SamplingParams(temperature=0, max_tokens=DECODE_STEPS, ignore_eos=True)
    )
    for prompt, output in zip(prompts, outputs):
        assert output.prompt_token_ids == prompt
        assert output.outputs[0].finish_reason == "length"
        assert output.outputs[0].token_ids == hf_greedy(hf_model, prompt, DECODE_STEPS), family


def test_unsupported_architecture_raises_user_error():
    from planner.errors import UserError
    from planner.specs.spec import load_spec

    with pytest.raises(UserError, match="does not implement"):
        ReferenceModel(load_spec("dbrx"), {})

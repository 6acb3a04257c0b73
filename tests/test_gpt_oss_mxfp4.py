"""gpt-oss with its experts in MXFP4 as the published checkpoints store them (`mlp.experts.gate_up_proj_blocks`
[E, 2I, h/32, 16] / `_scales` [E, 2I, h/32], `down_proj_blocks` / `_scales`): the writer's on-disk layout,
transformers 5.23 loading it with its own MXFP4 dequantization (fp32 logits within 1e-4 of ours), the engine
(experts MXFP4 in the store and across the streamed link) token-identical to the reference with refills,
`modules_to_not_convert` honoured, and the planner pricing those experts at MXFP4 bytes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from planner.perf.costs import ModelCosts
from planner.specs.spec import load_spec
from runtime.checkpoint import open_checkpoint, write_random_checkpoint
from runtime.engine import Engine, EngineBackend, EngineConfig, expert_stacks
from runtime.model.generation import ReferenceBackend
from runtime.model.reference import ReferenceModel
from runtime.quant.config import SCALES, QuantConfig
from runtime.quant.formats import dequantize_mxfp4
from runtime.quant.tensor import QuantTensor
from runtime.sampling import GenerationState, SamplingParams
from tests.test_quant_plan import host_weight_bytes, quantized_spec

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SPEC = dataclasses.replace(
    load_spec("gpt-oss-mini"),
    name="gpt-oss-mxfp4-tiny",
    num_layers=3,
    hidden_size=128,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    vocab_size=320,
    num_experts=6,
    top_k=2,
    moe_intermediate_size=64,
    max_position_embeddings=256,
    sliding_window=9,
)
EXPERTS = "model.layers.{}.mlp.experts."
PROMPTS = [[5, 9, 100, 7], [3], list(range(20, 41)), [200, 201], [17, 18, 19]]


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt_oss_mxfp4")
    write_random_checkpoint(SPEC, out, dtype="fp32", seed=5, quant="mxfp4")
    return out


def test_on_disk_layout_is_gpt_oss(directory):
    config = json.loads((directory / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "mxfp4" and "lm_head" in config["modules_to_not_convert"]
    transformers.AutoConfig.from_pretrained(directory)
    e, h, inter = SPEC.num_experts, SPEC.hidden_size, SPEC.moe_intermediate_size
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        shapes = {name: (f.get_slice(name).get_shape(), f.get_slice(name).get_dtype()) for name in f.keys()}
    prefix = EXPERTS.format(1)
    assert shapes[prefix + "gate_up_proj_blocks"] == ([e, 2 * inter, h // 32, 16], "U8")
    assert shapes[prefix + "gate_up_proj_scales"] == ([e, 2 * inter, h // 32], "U8")
    assert shapes[prefix + "down_proj_blocks"] == ([e, h, inter // 32, 16], "U8")
    assert shapes[prefix + "down_proj_scales"] == ([e, h, inter // 32], "U8")
    assert shapes[prefix + "gate_up_proj_bias"] == ([e, 2 * inter], "F32")
    assert (
        prefix + "gate_up_proj" not in shapes and shapes["model.layers.1.self_attn.q_proj.weight"][1] == "F32"
    )


def test_our_dequantization_is_transformers(directory):
    with safe_open(str(directory / "model.safetensors"), "pt") as f, open_checkpoint(directory) as checkpoint:
        for proj in ("gate_up_proj", "down_proj"):
            blocks, scales = (
                f.get_tensor(EXPERTS.format(2) + proj + part) for part in ("_blocks", "_scales")
            )
            theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, in, out]
            ours = checkpoint.weights.dequantized(torch.float32)[f"layers.2.moe.experts.{proj}"]
            assert torch.equal(ours, theirs)
            assert torch.equal(
                ours, dequantize_mxfp4(blocks, scales, blocks.shape[-2] * 32, torch.float32).mT
            )


def test_logits_match_transformers_mxfp4_loader(directory):
    config = transformers.Mxfp4Config(dequantize=True)  # its CPU path without triton kernels
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, quantization_config=config
    )
    prompt = [5, 9, 100, 7, 42, 300, 11, 12, 13, 14, 15, 16]
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        theirs, cache, token = [out.logits[0, -1]], out.past_key_values, out.logits[0, -1].argmax()
        for _ in range(8):
            out = model(token.view(1, 1), past_key_values=cache, use_cache=True)
            theirs.append(out.logits[0, -1])
            token = out.logits[0, -1].argmax()
    with open_checkpoint(directory) as checkpoint:
        reference = ReferenceModel(checkpoint.spec, checkpoint.weights.dequantized(torch.float32))
        kv = reference.new_cache()
        ours = [reference.prefill(prompt, kv)[-1]]
        for _ in range(8):
            ours.append(reference.decode(int(ours[-1].argmax()), kv))
    theirs, ours = torch.stack(theirs), torch.stack(ours).float()
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()


def greedy(backend, prompts, steps=6):
    states = [
        GenerationState(
            p, SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True), frozenset(), None
        )
        for p in prompts
    ]
    backend.run(states)
    return [s.token_ids for s in states]


@pytest.mark.parametrize("grouped", [False, True], ids=["looped", "grouped"])
@pytest.mark.parametrize("streamed", [False, True], ids=["in_place", "streamed"])
def test_engine_matches_the_reference_with_experts_in_mxfp4(directory, streamed, grouped, monkeypatch):
    monkeypatch.setattr(expert_stacks, "DEQUANT_CHUNK_BYTES", 100_000)  # one expert a chunk: biases sliced
    with open_checkpoint(directory) as checkpoint:
        reference = greedy(
            ReferenceBackend(ReferenceModel(checkpoint.spec, checkpoint.weights.dequantized())), PROMPTS
        )
        switches = (
            dict(force_streaming=True, resident_modules=("embed", "lm_head", "router")) if streamed else {}
        )
        config = EngineConfig.build(
            num_seqs=3, kv_block_size=4, grouped_experts=grouped, expert_batch=3, **switches
        )
        engine = Engine(checkpoint, config)  # 5 prompts on 3 slots: refills
        try:
            assert greedy(EngineBackend(engine), PROMPTS) == reference
            store, weights = engine.store, checkpoint.weights
            if streamed:  # the link moves the stored codes and scales
                experts = [n for n in weights if n.startswith("layers.") and ".moe.experts." in n]
                assert any(n.endswith(SCALES) for n in experts)
                per_layer = [
                    e.nbytes
                    for layer in store.packed
                    for e in layer.entries
                    if e.name.startswith("moe.experts.")
                ]
                assert sum(per_layer) == sum(weights.nbytes(n) for n in experts)
            else:
                view = store.layer_view(1, store.layers[1])
                assert isinstance(view["moe.experts.0-6.gate_up"], QuantTensor)
        finally:
            engine.close()


def test_modules_to_not_convert_keeps_a_layers_experts_float(directory, tmp_path):
    """Layer 1's experts listed in modules_to_not_convert and stored float: we and transformers load both."""
    tensors = {}
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        for name in f.keys():
            if name.startswith(EXPERTS.format(1)) and name.endswith("_blocks"):
                base = name.removesuffix("_blocks")
                tensors[base] = convert_moe_packed_tensors(f.get_tensor(name), f.get_tensor(base + "_scales"))
                tensors[base] = tensors[base].float().contiguous()
            elif not (name.startswith(EXPERTS.format(1)) and name.endswith("_scales")):
                tensors[name] = f.get_tensor(name)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"]["modules_to_not_convert"].append("model.layers.1.mlp.experts")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with open_checkpoint(tmp_path) as mixed, open_checkpoint(directory) as quantized:
        assert "layers.1.moe.experts.gate_up_proj" not in mixed.weights.quant
        assert "layers.0.moe.experts.gate_up_proj" in mixed.weights.quant
        reference = greedy(
            ReferenceBackend(ReferenceModel(quantized.spec, quantized.weights.dequantized())), PROMPTS
        )
        engine = Engine(mixed, EngineConfig.build(num_seqs=3, kv_block_size=4, force_streaming=True))
        try:
            assert greedy(EngineBackend(engine), PROMPTS) == reference
        finally:
            engine.close()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, quantization_config=transformers.Mxfp4Config(dequantize=True)
    )
    loaded = model.model.layers[1].mlp.experts.down_proj.detach()
    assert torch.equal(loaded, tensors[EXPERTS.format(1) + "down_proj"])
    keep = QuantConfig("mxfp4", (1, 32), ("model.layers.1.mlp.experts",))
    assert not keep.quantizes("layers.1.moe.experts.down_proj", "model.layers.1.mlp.experts.down_proj")
    assert keep.quantizes("layers.0.moe.experts.down_proj", "model.layers.0.mlp.experts.down_proj")


def test_plan_prices_gpt_oss_experts_in_mxfp4(directory):
    with open_checkpoint(directory) as checkpoint:
        assert checkpoint.spec.weight_formats == {"experts": "mxfp4"}
        stored, priced = checkpoint.weights.total_nbytes(), ModelCosts(checkpoint.spec).total_bytes()
    assert abs(priced - stored) <= 1e-3 * stored
    spec = load_spec("gpt-oss-20b").with_layers(4)
    bf16, _ = host_weight_bytes(quantized_spec(spec, None))
    mxfp4, plan = host_weight_bytes(quantized_spec(spec, "mxfp4"))
    costs = ModelCosts(spec)
    expert_bf16 = spec.num_moe_layers * spec.num_experts * costs.expert_params() * 2
    saved = expert_bf16 * (1 - 17 / 64)  # 4.25 bits per value where bf16 stores 16 (biases aside)
    assert plan.model.weight_formats == {"experts": "mxfp4"}
    assert abs((bf16 - mxfp4) - saved) <= 0.01 * saved

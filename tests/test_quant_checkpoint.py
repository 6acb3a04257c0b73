"""Quantized checkpoints (`runtime make-checkpoint --quant fp8|mxfp4`) end to end: the on-disk layout, the
loader's layouts, the engine (weights quantized in the store and across the streamed link) token-identical to
the reference forward on our dequantize-to-float weights, and logits against transformers 5.23's Mixtral on
the same checkpoint dequantized by transformers' own dequantizers (its FP8 loader needs accelerate, absent
here, and its MXFP4 loader converts gpt-oss experts only)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.integrations.finegrained_fp8 import Fp8Dequantize
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from planner.errors import UserError
from planner.specs.spec import load_spec
from runtime.checkpoint import open_checkpoint, write_random_checkpoint
from runtime.engine import Engine, EngineBackend, EngineConfig
from runtime.engine.weights import module_of
from runtime.model.generation import ReferenceBackend
from runtime.model.reference import ReferenceModel
from runtime.quant.config import SCALES
from runtime.quant.tensor import QuantTensor
from runtime.sampling import GenerationState, SamplingParams

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def tiny_spec(inter: int):
    return dataclasses.replace(
        load_spec("mixtral-mini"),
        name="mixtral-quant-tiny",
        num_layers=2,
        hidden_size=256,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        vocab_size=384,
        num_experts=4,
        top_k=2,
        moe_intermediate_size=inter,
        max_position_embeddings=256,
    )


@pytest.fixture(scope="module", params=["fp8", "mxfp4"])
def quantized(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    # 136: partial last fp8 block rows (gate, up) and columns (down), a partial mxfp4 group (down)
    write_random_checkpoint(tiny_spec(136), directory, dtype="fp32", seed=3, quant=request.param)
    return request.param, open_checkpoint(directory)


def test_on_disk_layout_and_loader_layouts(quantized):
    method, checkpoint = quantized
    config = json.loads((checkpoint.dir / "config.json").read_text())["quantization_config"]
    transformers.AutoConfig.from_pretrained(checkpoint.dir)  # transformers accepts the config
    expert = "model.layers.1.block_sparse_moe.experts.2.w2.weight"  # down: [256, 136]
    with safe_open(str(checkpoint.dir / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        if method == "fp8":
            assert config["weight_block_size"] == [128, 128] and config["fmt"] == "e4m3"
            assert f.get_slice(expert).get_dtype() == "F8_E4M3"
            assert f.get_slice(expert + "_scale_inv").get_shape() == [2, 2]
            assert "model.layers.0.self_attn.q_proj.weight_scale_inv" in names
        else:
            assert f.get_slice(expert + "_blocks").get_shape() == [256, 5, 16]
            assert f.get_slice(expert + "_scales").get_shape() == [256, 5]
            assert "model.layers.0.self_attn.q_proj.weight" in names  # attention stays float
    assert "model.layers.0.block_sparse_moe.gate.weight" in names and "lm_head.weight" in names
    quant = checkpoint.weights.quant
    assert quant["layers.1.moe.experts.2.down_proj"].shape == (256, 136)
    assert ("layers.0.attn.q_proj" in quant) == (method == "fp8")
    assert "layers.0.moe.router" not in quant and "lm_head" not in quant
    assert "layers.1.moe.experts.2.down_proj" + SCALES in checkpoint.weights


def greedy(backend, prompts, steps=6):
    states = [
        GenerationState(
            p, SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True), frozenset(), None
        )
        for p in prompts
    ]
    backend.run(states)
    return [s.token_ids for s in states]


PROMPTS = [[5, 9, 100, 7], [3], list(range(20, 41)), [200, 201]]


@pytest.mark.parametrize(
    "switches",
    [
        dict(),
        dict(force_streaming=True, resident_modules=("embed", "lm_head", "router")),
        dict(expert_batch=3),
    ],
    ids=["in_place", "streamed", "small_expert_batch"],
)
@pytest.mark.parametrize("grouped", [False, True], ids=["looped", "grouped"])
def test_engine_matches_the_dequantized_reference(quantized, switches, grouped):
    method, checkpoint = quantized
    reference = greedy(
        ReferenceBackend(ReferenceModel(checkpoint.spec, checkpoint.weights.dequantized())), PROMPTS
    )
    config = EngineConfig.build(num_seqs=3, kv_block_size=4, grouped_experts=grouped, **switches)
    engine = Engine(checkpoint, config)
    try:
        assert greedy(EngineBackend(engine), PROMPTS) == reference
        store = engine.store
        stack = store.layer_view(1, store.layers[1] if not store.streams else {})
        if not store.streams:  # the store holds the experts quantized
            assert isinstance(stack["moe.experts.0-4.gate_up"], QuantTensor)
        else:  # the link moves what the checkpoint stores: codes plus scales
            weights = checkpoint.weights
            layer_names = [n for n in weights if n.startswith("layers.") and module_of(n) != "router"]
            assert store.streamed_bytes == sum(weights.nbytes(n) for n in layer_names)
            experts = [n for n in layer_names if module_of(n) == "experts"]
            float_bytes = 4 * sum(math.prod(weights.quant[n].shape) for n in experts if n in weights.quant)
            ratio = sum(weights.nbytes(n) for n in experts) / float_bytes
            assert ratio <= (0.251 if method == "fp8" else 0.141)  # mxfp4: down pads 136 columns to 160
    finally:
        engine.close()


def test_unsupported_quant_method_is_one_user_error(quantized, tmp_path):
    _, checkpoint = quantized
    for path in checkpoint.dir.iterdir():
        (tmp_path / path.name).symlink_to(path)
    config = json.loads((checkpoint.dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="quant_method 'gptq' is not supported; supported: fp8"):
        open_checkpoint(tmp_path)
    del config["quantization_config"]  # quantized tensors without a quantization_config
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="does not match its config.json"):
        open_checkpoint(tmp_path)


def transformers_dequantized(directory, out, method):
    """A float twin of a quantized checkpoint, dequantized with transformers 5.23's own functions."""
    tensors = {}
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        for name in f.keys():
            if name.endswith(("_scale_inv", "_scales")):
                continue
            if method == "fp8" and f.get_slice(name).get_dtype() == "F8_E4M3":
                scale = f.get_tensor(name + "_scale_inv")
                tensors[name] = Fp8Dequantize(None)._dequantize_one(f.get_tensor(name), scale, torch.bfloat16)
            elif name.endswith("_blocks"):
                base = name.removesuffix("_blocks")
                blocks, scales = f.get_tensor(name)[None], f.get_tensor(base + "_scales")[None]
                tensors[base] = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)[
                    0
                ].T.contiguous()
            else:
                tensors[name] = f.get_tensor(name).to(torch.bfloat16)
    out.mkdir()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    del config["quantization_config"]
    (out / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("method", ["fp8", "mxfp4"])
def test_logits_match_transformers_on_its_own_dequantization(method, tmp_path):
    directory = tmp_path / "q"
    write_random_checkpoint(tiny_spec(256), directory, dtype="bf16", seed=4, quant=method)
    transformers_dequantized(directory, tmp_path / "hf", method)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16)
    prompt = torch.tensor([[5, 9, 100, 7, 42, 300, 11, 12]])
    with torch.no_grad():
        theirs = model(prompt).logits[0].float()
    with open_checkpoint(directory) as checkpoint:
        reference = ReferenceModel(checkpoint.spec, checkpoint.weights.dequantized(torch.bfloat16))
        ours = reference.prefill(prompt[0].tolist(), reference.new_cache()).float()
    tolerance = 0.03 * theirs.abs().max()  # bf16 rounding through two layers
    assert (ours - theirs).abs().max() < tolerance
    chosen = theirs.gather(1, ours.argmax(-1, keepdim=True))[
        :, 0
    ]  # our greedy token is a near-top one of theirs
    assert torch.all(chosen >= theirs.max(-1).values - tolerance)

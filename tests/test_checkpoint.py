"""Checkpoint loading and random real-shape checkpoints, against transformers 5.23 (broken checkpoints:
tests/test_checkpoint_errors.py).

For every runnable family: a tiny transformers model saved with forced sharding has exactly the on-disk names
our name map expects, and `open_checkpoint` reads every tensor equal to transformers' own state;
`runtime make-checkpoint` output loads in both our loader and transformers' `from_pretrained`. Then
determinism, the generated tokenizer, lazy metadata, tied embeddings and the CLI's overwrite rules.
"""

from __future__ import annotations

import hashlib
import json
import re
import resource
import shutil
import subprocess
import sys
import time
from math import prod
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from planner.errors import UserError  # noqa: E402
from planner.perf.costs import ModelCosts  # noqa: E402
from planner.specs.spec import RUNNABLE_FAMILIES, ModelSpec, list_specs, load_spec  # noqa: E402
from runtime.checkpoint import open_checkpoint  # noqa: E402
from runtime.checkpoint.names import expected_tensors  # noqa: E402
from runtime.checkpoint.tokenizer import CheckpointTokenizer  # noqa: E402
from runtime.checkpoint.tokenizer_build import SPECIAL_TOKENS  # noqa: E402
from runtime.cli import main as runtime_main  # noqa: E402

COMMON = dict(
    vocab_size=320,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
MLA = dict(
    num_hidden_layers=3,
    num_key_value_heads=4,
    moe_intermediate_size=16,
    intermediate_size=64,
    n_routed_experts=4,
    num_experts_per_tok=2,
    first_k_dense_replace=1,
    kv_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=8,
)
FAMILY_CONFIGS = {
    "mixtral": dict(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(
        intermediate_size=64,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=48,
        num_experts=4,
        num_experts_per_tok=2,
    ),
    "qwen3_moe": dict(
        intermediate_size=64,
        moe_intermediate_size=16,
        head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
        mlp_only_layers=[0],
    ),
    "olmoe": dict(intermediate_size=24, num_experts=4, num_experts_per_tok=2),
    "deepseek_v2": dict(MLA, n_shared_experts=2, q_lora_rank=None),
    "deepseek_v3": dict(MLA, n_shared_experts=1, q_lora_rank=24, n_group=2, topk_group=1),
    "gpt_oss": dict(
        intermediate_size=16, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=8
    ),
    "glm4_moe": dict(
        intermediate_size=64,
        moe_intermediate_size=16,
        head_dim=8,
        n_routed_experts=4,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        attention_bias=True,
        use_qk_norm=True,
    ),
    "phimoe": dict(
        intermediate_size=48,
        num_local_experts=4,
        num_experts_per_tok=2,
        attention_bias=True,
        lm_head_bias=True,
    ),
}
SHARD_BYTES = 20_000
EXPERT = re.compile(r"^layers\.(\d+)\.moe\.experts\.(\d+)\.(\w+)$")


def hf_config(family: str, **overrides):
    return transformers.AutoConfig.for_model(family, **{**COMMON, **FAMILY_CONFIGS[family], **overrides})


def hf_tensor(state: dict, spec: ModelSpec, canonical: str) -> torch.Tensor:
    """A canonical tensor out of transformers' in-memory state (experts fused there as gate_up_proj)."""
    match = EXPERT.match(canonical)
    if match:
        layer, expert, proj = int(match.group(1)), int(match.group(2)), match.group(3)
        prefix = f"model.layers.{layer}.mlp.experts."
        if proj == "down_proj":
            return state[prefix + "down_proj"][expert]
        gate_up = state[prefix + "gate_up_proj"][expert]
        return (
            gate_up[: spec.moe_intermediate_size]
            if proj == "gate_proj"
            else gate_up[spec.moe_intermediate_size :]
        )
    if canonical == "lm_head" and spec.tie_word_embeddings:
        canonical = "embed"
    disk = {t.canonical: t.disk_name for t in expected_tensors(spec)}[canonical]
    in_memory = disk.replace(".block_sparse_moe.", ".mlp.")
    if spec.family == "phimoe":  # Phi's router is `mlp.router` in memory, `block_sparse_moe.gate` on disk
        in_memory = in_memory.replace(".mlp.gate.", ".mlp.router.")
    return state[in_memory]


def index_of(directory: Path) -> dict:
    return json.loads((directory / "model.safetensors.index.json").read_text())


def make_checkpoint(config_path: Path, out: Path, *extra: str) -> int:
    return runtime_main(
        [
            "make-checkpoint",
            "--model",
            str(config_path),
            "--out",
            str(out),
            "--quiet",
            "--dtype",
            "fp32",
            "--max-shard-gb",
            str(SHARD_BYTES / 1e9),
            *extra,
        ]
    )


@pytest.fixture(scope="module", params=RUNNABLE_FAMILIES)
def hf_saved(request, tmp_path_factory):
    family = request.param
    torch.manual_seed(RUNNABLE_FAMILIES.index(family))
    model = transformers.AutoModelForCausalLM.from_config(hf_config(family)).eval()
    directory = tmp_path_factory.mktemp(f"hf-{family}")
    model.save_pretrained(directory, max_shard_size=f"{SHARD_BYTES // 1000}KB")
    return family, directory, model.state_dict()


def test_transformers_writes_the_names_our_map_expects(hf_saved):
    family, directory, _ = hf_saved
    spec = open_checkpoint(directory).spec
    weight_map = index_of(directory)["weight_map"]
    assert spec.family == family
    assert len(set(weight_map.values())) > 1
    assert set(weight_map) == {t.disk_name for t in expected_tensors(spec)}


def test_loader_reads_what_transformers_holds(hf_saved):
    _, directory, state = hf_saved
    with open_checkpoint(directory) as checkpoint:
        spec = checkpoint.spec
        for name in checkpoint.weights:
            tensor = checkpoint.weights[name]
            assert tensor.shape == checkpoint.weights.shape(name)
            assert tensor.dtype == checkpoint.weights.dtype(name) == torch.float32
            torch.testing.assert_close(tensor, hf_tensor(state, spec, name), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("family", RUNNABLE_FAMILIES)
def test_make_checkpoint_loads_in_ours_and_transformers(family, tmp_path):
    config_path = tmp_path / "config.json"
    hf_config(family).to_json_file(config_path)
    out = tmp_path / "ckpt"
    assert make_checkpoint(config_path, out) == 0
    assert len(index_of(out)["weight_map"]) == len(expected_tensors(load_spec(config_path)))
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with open_checkpoint(out) as checkpoint:
        assert checkpoint.spec.family == family
        state = model.state_dict()
        for name in checkpoint.weights:
            torch.testing.assert_close(
                checkpoint.weights[name], hf_tensor(state, checkpoint.spec, name), rtol=0, atol=0, msg=name
            )
        assert torch.all(checkpoint.weights["final_norm"] == 1)


def test_random_model_generates_varied_tokens_and_spreads_routing(tmp_path):
    config_path = tmp_path / "config.json"
    hf_config("mixtral", vocab_size=4096, hidden_size=64, num_local_experts=8).to_json_file(config_path)
    assert make_checkpoint(config_path, tmp_path / "ckpt", "--max-shard-gb", "1") == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    chosen = []
    model.model.layers[0].mlp.gate.register_forward_hook(
        lambda mod, inp, out: chosen.append(out[2].flatten())
    )
    prompt = torch.tensor([[1, 40, 41, 42, 43]])
    generated = model.generate(prompt, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert len(set(generated[0, 5:].tolist())) >= 24
    assert len(set(torch.cat(chosen).tolist())) == 8


def tree_digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_make_checkpoint_is_deterministic(tmp_path):
    config_path = tmp_path / "config.json"
    hf_config("qwen2_moe").to_json_file(config_path)
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert make_checkpoint(config_path, tmp_path / name, "--seed", seed) == 0
    first, second, other = (tree_digest(tmp_path / name) for name in "abc")
    assert first == second
    shards = [name for name in first if name.startswith("model-")]
    assert all(first[name] != other[name] for name in shards)
    single = tmp_path / "single"
    assert make_checkpoint(config_path, single, "--seed", "7", "--max-shard-gb", "1") == 0
    assert (single / "model.safetensors").is_file()
    with open_checkpoint(tmp_path / "a") as sharded, open_checkpoint(single) as whole:
        for name in sharded.weights:
            assert torch.equal(sharded.weights[name], whole.weights[name]), name


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("random")
    hf_config("mixtral").to_json_file(directory / "config.json")
    assert make_checkpoint(directory / "config.json", directory / "ckpt") == 0
    return directory / "ckpt"


def test_generated_tokenizer(random_checkpoint):
    tokenizer = open_checkpoint(random_checkpoint).tokenizer
    text = "def f(x):\n    return x ** 2  # naïve 🙂"
    ids = tokenizer.encode(text)
    assert (
        ids[0] == tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2 and tokenizer.pad_token_id == 0
    )
    assert tokenizer.decode(ids) == text
    assert tokenizer.vocab_size == COMMON["vocab_size"]
    assert all(tokenizer.decode([i]) for i in range(len(SPECIAL_TOKENS), tokenizer.vocab_size))
    messages = [{"role": "user", "content": "hello"}]
    assert tokenizer.apply_chat_template(messages) == "<s><|user|>\nhello</s>\n<|assistant|>\n"
    chat_ids = tokenizer.apply_chat_template(messages, tokenize=True)
    assert chat_ids.count(tokenizer.bos_token_id) == 1
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(random_checkpoint)
    assert hf_tokenizer(text)["input_ids"] == ids
    assert hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == tokenizer.apply_chat_template(messages)


def test_chat_template_runs_sandboxed(random_checkpoint):
    backend = open_checkpoint(random_checkpoint).tokenizer.backend
    mutating = CheckpointTokenizer(backend, chat_template="{{ messages.append(1) }}")
    with pytest.raises(UserError, match="chat template"):
        mutating.apply_chat_template([])
    refusing = CheckpointTokenizer(backend, chat_template="{{ raise_exception('only user roles') }}")
    with pytest.raises(UserError, match="only user roles"):
        refusing.apply_chat_template([{"role": "system", "content": "x"}])


def test_weight_metadata_needs_no_data(random_checkpoint, monkeypatch):
    checkpoint = open_checkpoint(random_checkpoint)
    monkeypatch.setattr("runtime.checkpoint.loader.safe_open", lambda *a, **k: pytest.fail("data was read"))
    weights = checkpoint.weights
    assert weights.shape("layers.1.moe.experts.3.down_proj") == (32, 48)
    assert weights.nbytes("embed") == 320 * 32 * 4 and weights.dtype("embed") == torch.float32
    assert (
        weights.disk_name("layers.0.moe.experts.0.up_proj")
        == "model.layers.0.block_sparse_moe.experts.0.w3.weight"
    )
    assert weights.total_nbytes() == index_of(random_checkpoint)["metadata"]["total_size"]


def test_tied_embeddings_alias_the_embedding(tmp_path):
    model = transformers.AutoModelForCausalLM.from_config(hf_config("qwen3_moe", tie_word_embeddings=True))
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert "lm_head.weight" not in index_of(tmp_path)["weight_map"]
    weights = open_checkpoint(tmp_path).weights
    assert weights.aliases == {"lm_head": "embed"} and "lm_head" in weights
    assert torch.equal(weights["lm_head"], model.get_input_embeddings().weight.detach())


def test_make_checkpoint_refuses_foreign_directories(random_checkpoint, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert make_checkpoint(random_checkpoint / "config.json", tmp_path) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (
        runtime_main(["make-checkpoint", "--model", "mixtral-mini", "--layers", "0", "--out", str(tmp_path)])
        == 2
    )


def test_make_checkpoint_replaces_its_own_output(random_checkpoint, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(random_checkpoint, out)
    config_path = tmp_path / "config.json"
    hf_config("olmoe").to_json_file(config_path)
    assert make_checkpoint(config_path, out, "--max-shard-gb", "1") == 0
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]
    assert open_checkpoint(out).spec.family == "olmoe"


@pytest.mark.big
def test_mixtral_8x7b_two_layers(tmp_path):
    """The real-shape 2-layer Mixtral-8x7B: bounded memory to write, loads in both.

    2 x 1.45 B layer parameters + 2 x 131 M embedding/head = 3.16 B parameters, 6.33 GB in bf16.
    """
    out = tmp_path / "mx2"
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "make-checkpoint",
            "--model",
            "mixtral-8x7b",
            "--layers",
            "2",
            "--out",
            str(out),
            "--quiet",
        ],
        check=True,
    )
    seconds = time.perf_counter() - start
    peak_rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
    total_gb = sum(p.stat().st_size for p in out.glob("*.safetensors")) / 1e9
    print(
        f"mixtral-8x7b-L2: {total_gb:.2f} GB on disk, {seconds:.0f} s, peak writer RSS {peak_rss_gb:.2f} GB"
    )
    assert 6.2 < total_gb < 6.45
    assert peak_rss_gb < 1.5
    with open_checkpoint(out) as checkpoint:
        assert checkpoint.weights.shape("layers.1.moe.experts.7.down_proj") == (4096, 14336)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.bfloat16, output_loading_info=True
    )
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


def test_expected_tensors_agree_with_the_planners_parameter_counts():
    specs = [spec for spec in map(load_spec, list_specs()) if spec.is_runnable]
    assert {spec.family for spec in specs} == set(RUNNABLE_FAMILIES)
    for spec in specs:
        assert sum(prod(t.shape) for t in expected_tensors(spec)) == ModelCosts(spec).total_params(), (
            spec.name
        )

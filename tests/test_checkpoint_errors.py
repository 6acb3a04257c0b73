"""Broken checkpoints: every way a checkpoint directory can be wrong ends in one UserError naming the problem.

Missing, unexpected, mis-shaped and wrongly typed tensors; truncated shards and corrupt headers; an index
that points outside the directory or at a missing shard; missing config.json; unsupported architectures.
Each test breaks a copy of one tiny `runtime make-checkpoint` output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")

from test_checkpoint import hf_config, index_of, make_checkpoint, random_checkpoint  # noqa: E402, F401

from planner.errors import UserError  # noqa: E402
from planner.specs.hf_config import spec_to_hf_config  # noqa: E402
from planner.specs.spec import load_spec  # noqa: E402
from runtime.checkpoint import open_checkpoint  # noqa: E402


@pytest.fixture
def broken(random_checkpoint, tmp_path) -> Path:  # noqa: F811  (the fixture imported above)
    directory = tmp_path / "broken"
    shutil.copytree(random_checkpoint, directory)
    return directory


def rewrite_shard_of(directory: Path, name: str, edit) -> None:
    """Apply `edit(tensors)` to the shard holding `name`, keeping the index in step."""
    index = index_of(directory)
    shard = index["weight_map"][name]
    tensors = edit(load_file(directory / shard))
    save_file(tensors, directory / shard)
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    index["weight_map"].update({k: shard for k in tensors})
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


K_PROJ = "model.layers.0.self_attn.k_proj.weight"


def test_missing_tensors_are_listed(broken):
    index = index_of(broken)
    dropped = sorted(n for n in index["weight_map"] if ".experts." in n and ".layers.1." in n)[:7]
    for name in dropped:
        del index["weight_map"][name]
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"missing 7 \(model\.layers\.1\..*, \.\.\.\)") as err:
        open_checkpoint(broken)
    assert dropped[0] in str(err.value)


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (
            lambda t: {**t, "model.layers.0.extra.weight": torch.zeros(2)},
            r"unexpected 1 \(model\.layers\.0\.extra",
        ),
        (
            lambda t: {**t, K_PROJ: t[K_PROJ].T.contiguous()},
            r"k_proj\.weight is \[32, 16\], expected \[16, 32\]",
        ),
        (lambda t: {**t, K_PROJ: t[K_PROJ].to(torch.int32)}, r"dtype I32"),
    ],
    ids=["unexpected", "wrong-shape", "wrong-dtype"],
)
def test_bad_tensor_is_named(broken, edit, pattern):
    rewrite_shard_of(broken, K_PROJ, edit)
    with pytest.raises(UserError, match=pattern):
        open_checkpoint(broken)


def largest_shard(directory: Path) -> Path:
    return max(directory.glob("model-*.safetensors"), key=lambda p: p.stat().st_size)


def test_truncated_shard(broken):
    shard = largest_shard(broken)
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(UserError, match=f"{shard.name} is truncated"):
        open_checkpoint(broken)


@pytest.mark.parametrize(
    "header, pattern",
    [
        ((1 << 40).to_bytes(8, "little"), "header length"),
        ((16).to_bytes(8, "little") + b"{not json,,,,,,", "not valid JSON"),
        (b"\x01\x02", "fewer than the 8-byte header length"),
    ],
    ids=["huge-length", "garbage-json", "too-short"],
)
def test_corrupt_header(broken, header, pattern):
    shard = largest_shard(broken)
    data = shard.read_bytes()
    shard.write_bytes(header if len(header) < 8 else header + data[len(header) :])
    with pytest.raises(UserError, match=f"{shard.name} is corrupt: .*{pattern}"):
        open_checkpoint(broken)


@pytest.mark.parametrize("shard_name", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_may_not_leave_the_directory(broken, shard_name):
    index = index_of(broken)
    index["weight_map"][K_PROJ] = shard_name
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="outside the checkpoint directory"):
        open_checkpoint(broken)


def test_missing_shard_and_missing_config(broken):
    largest_shard(broken).unlink()
    with pytest.raises(UserError, match="does not exist"):
        open_checkpoint(broken)
    (broken / "config.json").unlink()
    with pytest.raises(UserError, match="no config.json"):
        open_checkpoint(broken)


def test_unsupported_architectures(broken):
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(UserError, match="unsupported model_type 'llama'"):
        open_checkpoint(broken)
    (broken / "config.json").write_text(json.dumps(spec_to_hf_config(load_spec("dbrx"))))
    with pytest.raises(UserError, match="'dbrx' .* has no checkpoint name map"):
        open_checkpoint(broken)

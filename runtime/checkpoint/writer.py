"""Write a random-weight checkpoint with a model's real shapes in its family's on-disk HF layout.

How it works: docs/design.md, `runtime/checkpoint/writer.py`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from math import prod
from pathlib import Path

import torch

from planner.errors import UserError
from planner.specs.hf_config import spec_to_hf_config
from planner.specs.spec import ModelSpec
from planner.specs.weight_formats import weight_formats_from_hf
from runtime.checkpoint.names import ExpectedTensor, expected_tensors
from runtime.checkpoint.random_init import generate_chunks, init_rule
from runtime.checkpoint.safetensors_io import CODE_OF_DTYPE, INDEX_FILE, ITEMSIZE, SINGLE_FILE, ShardWriter
from runtime.checkpoint.tokenizer_build import write_tokenizer_files
from runtime.quant.config import QuantConfig, make_quant_config
from runtime.quant.formats import quantize_fp8, quantize_mxfp4

DTYPE_ALIASES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
OUR_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    SINGLE_FILE,
    INDEX_FILE,
)


@dataclass(frozen=True)
class WrittenCheckpoint:
    dir: Path
    spec: ModelSpec
    num_shards: int
    total_bytes: int  # tensor data bytes (the index's total_size)
    num_parameters: int
    seconds: float


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPE_ALIASES:
        raise UserError(f"unsupported dtype {name!r}", "use bf16, fp16 or fp32")
    return DTYPE_ALIASES[name]


def is_moelens_checkpoint(directory: Path) -> bool:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and isinstance(config.get("moelens"), dict)


def prepare_output_dir(out: Path) -> None:
    """Create `out`, or clear the files of an earlier moelens checkpoint in it; refuse anything else."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file", "pass a directory path")
    if out.is_dir() and any(out.iterdir()):
        if not is_moelens_checkpoint(out):
            raise UserError(
                f"{out} is not empty and is not a moelens checkpoint; refusing to overwrite it",
                "pass a new or empty directory",
            )
        for path in out.iterdir():
            if path.name in OUR_FILES or (path.name.startswith("model-") and path.suffix == ".safetensors"):
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def stored_forms(
    tensor: ExpectedTensor, dtype: torch.dtype, quant: QuantConfig | None
) -> list[tuple[str, str, tuple[int, ...]]]:
    """(disk name, dtype code, shape) of what one expected tensor is stored as."""
    if quant is not None and quant.quantizes(tensor.canonical, tensor.disk_name):
        parts = quant.stored_parts(tensor.disk_name, tensor.shape, tensor.canonical)
        return [(p.disk_name, p.dtype, p.shape) for p in parts]
    return [(tensor.disk_name, CODE_OF_DTYPE[dtype], tensor.shape)]


def _stored_bytes(tensor: ExpectedTensor, dtype: torch.dtype, quant: QuantConfig | None) -> int:
    return sum(prod(shape) * ITEMSIZE[code] for _, code, shape in stored_forms(tensor, dtype, quant))


def _stored_data(tensor: ExpectedTensor, values: list[torch.Tensor], quant: QuantConfig | None):
    """The tensor's stored tensors, in `stored_forms` order."""
    if quant is None or not quant.quantizes(tensor.canonical, tensor.disk_name):
        return values
    if quant.method == "fp8":
        return list(quantize_fp8(torch.cat(values), quant.block))
    if quant.layout(tensor.shape, tensor.canonical).transposed:  # gpt-oss's fused experts: chunk by chunk
        blocks, scales = zip(*(quantize_mxfp4(chunk.transpose(-1, -2)) for chunk in values))
        return [torch.cat(blocks), torch.cat(scales)]
    return list(quantize_mxfp4(torch.cat(values)))


def plan_shards(tensors: list[ExpectedTensor], nbytes_of, max_shard_bytes: int) -> list[list[ExpectedTensor]]:
    """Consecutive groups of at most `max_shard_bytes` (a larger tensor gets a shard of its own)."""
    shards: list[list[ExpectedTensor]] = [[]]
    size = 0
    for tensor in tensors:
        nbytes = nbytes_of(tensor)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += nbytes
    return shards


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_configs(spec: ModelSpec, out: Path, dtype: torch.dtype, seed: int, quant: dict | None) -> None:
    ids = write_tokenizer_files(out, spec.vocab_size, spec.max_position_embeddings)
    token_ids = {
        "bos_token_id": ids.bos_token_id,
        "eos_token_id": ids.eos_token_id,
        "pad_token_id": ids.pad_token_id,
    }
    dtype_name = str(dtype).removeprefix("torch.")
    config = spec_to_hf_config(spec)
    config.update(token_ids, dtype=dtype_name)
    config["moelens"] = {**config["moelens"], "random_seed": seed}
    if quant is not None:
        config["quantization_config"] = quant
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {"_from_model_config": True, **token_ids})


def write_random_checkpoint(
    spec: ModelSpec,
    out: str | Path,
    dtype: str | torch.dtype = "bf16",
    seed: int = 0,
    max_shard_bytes: int = 2 * 10**9,
    on_tensor: Callable[[ExpectedTensor], None] | None = None,
    quant: str | None = None,
) -> WrittenCheckpoint:
    """Write the checkpoint; `on_tensor` is called after each tensor (progress reporting)."""
    start = time.perf_counter()
    out = Path(out)
    torch_dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    if max_shard_bytes <= 0:
        raise UserError(f"max shard size {max_shard_bytes} bytes must be positive", "pass --max-shard-gb > 0")
    spec = replace(spec, dtype=str(torch_dtype).removeprefix("torch."))
    tensors = expected_tensors(spec)
    # `quant` stores weights in that format; else as the spec's weight_formats say (its quantization_config)
    quant_dict = (
        make_quant_config(quant, tensors) if quant else spec_to_hf_config(spec).get("quantization_config")
    )
    quant_config = QuantConfig.from_hf({"quantization_config": quant_dict}) if quant_dict else None
    if quant:  # the spec as the checkpoint will read back
        spec = spec.with_weight_formats(
            weight_formats_from_hf({"quantization_config": quant_dict}, spec.family)
        )
    prepare_output_dir(out)
    _write_configs(spec, out, torch_dtype, seed, quant_dict)
    nbytes_of = partial(_stored_bytes, dtype=torch_dtype, quant=quant_config)
    shards = plan_shards(tensors, nbytes_of, max_shard_bytes)
    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map = {}
    for shard_name, shard in zip(names, shards):
        forms = {t.disk_name: stored_forms(t, torch_dtype, quant_config) for t in shard}
        writer = ShardWriter(out / shard_name, [form for t in shard for form in forms[t.disk_name]])
        for tensor in shard:
            rule = init_rule(spec, tensor.canonical, tensor.shape)
            chunks = generate_chunks(tensor, rule, seed, torch_dtype)
            if len(forms[tensor.disk_name]) == 1:
                for chunk in chunks:
                    writer.write(tensor.disk_name, chunk)
            else:
                for (name, _, _), data in zip(
                    forms[tensor.disk_name], _stored_data(tensor, list(chunks), quant_config)
                ):
                    writer.write(name, data)
            weight_map.update((name, shard_name) for name, _, _ in forms[tensor.disk_name])
            if on_tensor:
                on_tensor(tensor)
        writer.close()
    num_parameters = sum(prod(t.shape) for t in tensors)
    total_bytes = sum(nbytes_of(t) for t in tensors)
    if len(shards) > 1:
        _write_json(
            out / INDEX_FILE,
            {
                "metadata": {"total_size": total_bytes, "total_parameters": num_parameters},
                "weight_map": dict(sorted(weight_map.items())),
            },
        )
    return WrittenCheckpoint(
        dir=out,
        spec=spec,
        num_shards=len(shards),
        total_bytes=total_bytes,
        num_parameters=num_parameters,
        seconds=time.perf_counter() - start,
    )

"""Safetensors shards: validated headers, the shard list of a checkpoint, and a streaming shard writer.

How it works: docs/design.md, `runtime/checkpoint/safetensors_io.py`.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

import torch

from planner.errors import UserError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit

FLOAT_CODES = ("F32", "F16", "BF16")  # what an unquantized weight may be
DTYPE_CODES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,  # fp8 codes (runtime.quant)
    "U8": torch.uint8,  # mxfp4 blocks and E8M0 scales
}
CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "U8": 1}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a shard header describes it (nothing read yet)."""

    name: str
    shard: Path
    dtype: str  # safetensors dtype code: a key of DTYPE_CODES
    shape: tuple[int, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPE_CODES[self.dtype]

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * ITEMSIZE[self.dtype]


def _corrupt(path: Path, what: str) -> UserError:
    return UserError(
        f"safetensors shard {path} is corrupt: {what}",
        "re-download or regenerate the checkpoint (runtime make-checkpoint)",
    )


def read_shard_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and validate one shard's header; raises UserError on any inconsistency."""
    if not path.is_file():
        raise UserError(
            f"checkpoint shard {path} does not exist",
            "re-download the checkpoint; every shard named in the index must be present",
        )
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _corrupt(path, f"the file has {file_size} bytes, fewer than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
            raise _corrupt(path, f"header length {header_len} does not fit in a file of {file_size} bytes")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # ValueError: not UTF-8 or not JSON
        raise _corrupt(path, f"the header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise _corrupt(path, "the header is not a JSON object")
    data_size = file_size - 8 - header_len
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _parse_entry(path, name, info, data_size)
    return entries


def _parse_entry(path: Path, name: str, info: object, data_size: int) -> TensorEntry:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise _corrupt(path, f"tensor {name!r} lacks dtype, shape or data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_CODES:
        raise UserError(
            f"tensor {name!r} in {path} has dtype {dtype}; supported: {sorted(DTYPE_CODES)}",
            "convert the checkpoint to bf16, fp16 or fp32, or to a supported quantized format (runtime.quant)",
        )
    valid_shape = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
    valid_offsets = (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    )
    if not (valid_shape and valid_offsets):
        raise _corrupt(path, f"tensor {name!r} has a malformed shape {shape!r} or data_offsets {offsets!r}")
    begin, end = offsets
    if end > data_size:
        raise UserError(
            f"safetensors shard {path} is truncated: tensor {name!r} ends at data byte {end} "
            f"but the file holds only {data_size} data bytes",
            "the file was cut short (interrupted download or copy); fetch or regenerate it",
        )
    entry = TensorEntry(name=name, shard=path, dtype=dtype, shape=tuple(shape))
    if end - begin != entry.nbytes:
        raise _corrupt(
            path,
            f"tensor {name!r} spans {end - begin} bytes, but shape {shape} of {dtype} needs {entry.nbytes}",
        )
    return entry


def _shard_path(directory: Path, shard_name: object) -> Path:
    """A shard named by the index, refusing names that leave the checkpoint directory.

    The check is on the name, not on the resolved path: hub caches keep shards as symlinks into a blob
    store, which is legitimate.
    """
    if not isinstance(shard_name, str) or not shard_name:
        raise UserError(
            f"{directory / INDEX_FILE} names a shard {shard_name!r} that is not a file name",
            "fix the index: weight_map values are shard file names",
        )
    parts = Path(shard_name).parts
    if Path(shard_name).is_absolute() or ".." in parts or os.path.normpath(shard_name).startswith(".."):
        raise UserError(
            f"{directory / INDEX_FILE} names shard {shard_name!r} outside the checkpoint directory",
            "shard names in weight_map must be files inside the checkpoint directory",
        )
    return directory / shard_name


def locate_tensors(directory: Path) -> dict[str, Path]:
    """Map every on-disk tensor name to the shard holding it (index or single file)."""
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON
            raise UserError(
                f"cannot read {index_path}: {err}", "re-download or regenerate the checkpoint"
            ) from err
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index_path} has no weight_map", "re-download or regenerate the checkpoint")
        return {name: _shard_path(directory, shard) for name, shard in weight_map.items()}
    single = directory / SINGLE_FILE
    if single.is_file():
        return {name: single for name in read_shard_header(single)}
    raise UserError(
        f"{directory} has no {SINGLE_FILE} and no {INDEX_FILE}",
        "pass a HF checkpoint directory with safetensors weights (pytorch .bin files are not read)",
    )


def read_entries(directory: Path) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint, each shard's header validated, checked against the index."""
    locations = locate_tensors(directory)
    headers: dict[Path, dict[str, TensorEntry]] = {}
    entries = {}
    for name, shard in locations.items():
        if shard not in headers:
            headers[shard] = read_shard_header(shard)
        if name not in headers[shard]:
            raise UserError(
                f"{directory / INDEX_FILE} puts {name!r} in {shard.name}, which does not contain it",
                "re-download or regenerate the checkpoint (index and shards disagree)",
            )
        entries[name] = headers[shard][name]
    return entries


class ShardWriter:
    """Write one safetensors file whose tensors are declared up front and then streamed in order."""

    def __init__(self, path: Path, tensors: list[tuple[str, str, tuple[int, ...]]]):
        """`tensors`: (name, dtype code, shape) in the order their data will be written."""
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        self._expected: list[tuple[str, int]] = []
        for name, dtype, shape in tensors:
            nbytes = prod(shape) * ITEMSIZE[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._expected.append((name, nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned
        self.path = path
        self.nbytes = 8 + len(raw) + offset
        self._file = open(path, "wb")
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)
        self._position = 0
        self._written = 0

    def write(self, name: str, chunk: torch.Tensor) -> None:
        """Append `chunk` (all or the next rows of tensor `name`) in its declared dtype."""
        expected_name, nbytes = self._expected[self._position]
        if name != expected_name:
            raise ValueError(f"{self.path}: expected data for {expected_name!r}, got {name!r}")
        data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
        self._file.write(data)
        self._written += data.nbytes
        if self._written > nbytes:
            raise ValueError(f"{self.path}: {name!r} got {self._written} bytes, declared {nbytes}")
        if self._written == nbytes:
            self._position += 1
            self._written = 0

    def close(self) -> None:
        if self._position != len(self._expected):
            raise ValueError(f"{self.path}: closed after {self._position} of {len(self._expected)} tensors")
        self._file.close()

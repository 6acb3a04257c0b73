"""Open a HF checkpoint directory: spec, lazily read weights under canonical names, tokenizer.
Every mismatch with the spec is reported together in one UserError; no tensor data is read at open time
and nothing is cached (the weight store holds the only resident copy).

How it works: docs/design.md, `runtime/checkpoint/loader.py`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from planner.errors import UserError
from planner.specs.hf_config import read_config_json, spec_from_config_json
from planner.specs.hf_hub import is_hub_id, require_snapshot
from planner.specs.model_spec import ModelSpec
from runtime.checkpoint.names import expected_tensors, is_ignored
from runtime.checkpoint.safetensors_io import FLOAT_CODES, TensorEntry, read_entries
from runtime.checkpoint.tokenizer import CheckpointTokenizer, load_tokenizer
from runtime.quant.config import SCALES, QuantConfig, QuantLayout
from runtime.quant.tensor import QuantView

LISTED = 5  # names quoted per kind of mismatch in the error message


class LazyWeights(Mapping):
    """Canonical name -> tensor, read from disk on each access."""

    def __init__(
        self,
        entries: dict[str, TensorEntry],
        aliases: dict[str, str],
        quant: dict[str, QuantLayout] | None = None,
    ):
        self._entries = entries
        self.aliases = dict(aliases)
        self.quant = dict(quant or {})
        self._handles: dict[Path, object] = {}
        self._lock = threading.Lock()

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self._entries[self.aliases.get(name, name)]
        except KeyError:
            raise KeyError(name) from None

    def _handle(self, shard: Path):
        with self._lock:
            if shard not in self._handles:
                self._handles[shard] = safe_open(str(shard), framework="pt")
            return self._handles[shard]

    def __getitem__(self, name: str) -> torch.Tensor:
        entry = self._entry(name)
        return self._handle(entry.shard).get_tensor(entry.name)

    def rows(self, name: str, lo: int, hi: int) -> torch.Tensor:
        """Rows lo..hi-1 (first dimension) of a tensor, reading only those."""
        entry = self._entry(name)
        return self._handle(entry.shard).get_slice(entry.name)[lo:hi]

    def __iter__(self) -> Iterator[str]:
        yield from self._entries
        yield from self.aliases

    def __len__(self) -> int:
        return len(self._entries) + len(self.aliases)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self.aliases

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self._entry(name).torch_dtype

    def nbytes(self, name: str) -> int:
        return self._entry(name).nbytes

    def disk_name(self, name: str) -> str:
        return self._entry(name).name

    def total_nbytes(self) -> int:
        """Bytes stored on disk (aliases counted once)."""
        return sum(entry.nbytes for entry in self._entries.values())

    def dequantized(self, dtype: torch.dtype | None = None) -> Mapping[str, torch.Tensor]:
        """Every tensor in a float dtype (quantized ones dequantized on access to `dtype`, default embed's)."""
        return QuantView(self, self.quant, dtype or self.dtype("embed")) if self.quant else self

    def close(self) -> None:
        with self._lock:
            self._handles.clear()


@dataclass
class Checkpoint:
    dir: Path
    spec: ModelSpec
    weights: LazyWeights
    tokenizer: CheckpointTokenizer | None  # None when the directory has no tokenizer.json
    config: dict  # config.json as read

    def close(self) -> None:
        self.weights.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_config(directory: Path) -> dict:
    if not directory.is_dir():
        raise UserError(
            f"checkpoint directory {directory} does not exist", "pass an existing checkpoint directory"
        )
    if not (directory / "config.json").is_file():
        raise UserError(
            f"{directory} has no config.json",
            "pass a HF checkpoint directory, or write one with `runtime make-checkpoint`",
        )
    return read_config_json(directory / "config.json")


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return f"{len(items)} ({shown}{', ...' if len(items) > LISTED else ''})"


def _mistyped_matrices(matched: dict[str, TensorEntry]) -> list[str]:
    """Matrices whose dtype differs from the checkpoint's usual one (vectors such as norms may be fp32)."""
    quantized = {name for name in matched if name.endswith(SCALES) or name + SCALES in matched}
    matched = {name: entry for name, entry in matched.items() if name not in quantized}
    counts = Counter(entry.dtype for entry in matched.values() if len(entry.shape) >= 2)
    if len(counts) < 2:
        return []
    usual = counts.most_common(1)[0][0]
    return [
        f"{entry.name} is {entry.dtype}, the other matrices {usual}"
        for entry in matched.values()
        if len(entry.shape) >= 2 and entry.dtype != usual
    ]


def _stored_forms(
    tensor, quant: QuantConfig | None
) -> list[tuple[str, str, tuple[str, ...], tuple[int, ...]]]:
    """(canonical name, disk name, allowed dtype codes, shape) of each stored part of an expected tensor."""
    if quant is None or not quant.quantizes(tensor.canonical, tensor.disk_name):
        return [(tensor.canonical, tensor.disk_name, FLOAT_CODES, tensor.shape)]
    return [
        (tensor.canonical + part.suffix, part.disk_name, (part.dtype,), part.shape)
        for part in quant.stored_parts(tensor.disk_name, tensor.shape, tensor.canonical)
    ]


def match_tensors(
    spec: ModelSpec,
    stored: dict[str, TensorEntry],
    num_extra_layers: int = 0,
    where: str = "checkpoint",
    quant: QuantConfig | None = None,
) -> dict[str, TensorEntry]:
    """Canonical name (quantized: and `name@scales`) -> stored entry, or one UserError listing every mismatch."""
    expected = expected_tensors(spec)
    matched, missing, misshaped, mistyped, known = {}, [], [], [], set()
    for tensor in expected:
        for canonical, disk_name, dtypes, shape in _stored_forms(tensor, quant):
            known.add(disk_name)
            entry = stored.get(disk_name)
            if entry is None:
                missing.append(disk_name)
            elif entry.shape != shape:
                misshaped.append(f"{disk_name} is {list(entry.shape)}, expected {list(shape)}")
            elif entry.dtype not in dtypes:
                mistyped.append(f"{disk_name} is {entry.dtype}, expected {' or '.join(dtypes)}")
            else:
                matched[canonical] = entry
    unexpected = sorted(n for n in stored if n not in known and not is_ignored(spec, n, num_extra_layers))
    problems = [
        f"{kind} {_listing(items)}"
        for kind, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
            ("of another dtype", mistyped + _mistyped_matrices(matched)),
        )
        if items
    ]
    if problems:
        raise UserError(
            f"{where} does not match its config.json ({spec.family}, {spec.num_layers} layers): "
            + "; ".join(problems),
            "use the config.json that belongs to these weights, or regenerate the checkpoint",
        )
    return matched


def open_checkpoint(directory: str | Path) -> Checkpoint:
    """Validate a checkpoint directory (or a Hugging Face id in the local cache) and return it with lazily
    read weights."""
    name = None
    if is_hub_id(directory):
        name, directory = str(directory).split("/")[-1].lower(), require_snapshot(str(directory))
    directory = Path(directory)
    config = read_config(directory)
    spec = spec_from_config_json(directory / "config.json", name, config)
    stored = read_entries(directory)
    extra_layers = config.get("num_nextn_predict_layers") or 0
    quant = QuantConfig.from_hf(config)
    matched = match_tensors(
        spec, stored, extra_layers if isinstance(extra_layers, int) else 0, str(directory), quant
    )
    layouts = {
        t.canonical: quant.layout(t.shape, t.canonical)
        for t in expected_tensors(spec)
        if t.canonical + SCALES in matched
    }
    aliases = {"lm_head": "embed"} if spec.tie_word_embeddings else {}
    return Checkpoint(
        dir=directory,
        spec=spec,
        weights=LazyWeights(matched, aliases, layouts),
        tokenizer=load_tokenizer(directory),
        config=config,
    )

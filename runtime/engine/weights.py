"""Host weight store and device placement: which tensors live where, decided once from the EngineConfig.

- `module_of(name)` maps a canonical weight name (docs/contracts.md) to its planner module
  (`embed`, `qkv_proj`, `o_proj`, `router`, `experts`, `shared_experts`, `dense_mlp`, `lm_head`); norms ride
  with the module that reads them.
- `WeightStore(weights, spec, config)` reads every canonical tensor once from the checkpoint's lazy mapping
  (safetensors, dtype as on disk, no conversion). Without streaming (CPU-only mode) every tensor is used in
  place. With streaming, resident modules are copied to the device once, and each layer's other tensors are
  packed into one contiguous host buffer (pinned when CUDA is present) that the streamer copies in a
  single transfer; `PackedLayer.views(buffer)` rebuilds the named tensors over a device slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from planner.spec import ModelSpec
from runtime.engine.config import EngineConfig

_ALIGN = 256  # bytes; keeps every packed tensor aligned for vector loads and any dtype view


def expert_of(name: str) -> int | None:
    """The routed-expert index of `layers.{l}.moe.experts.{e}.*`, else None."""
    parts = name.split(".")
    return int(parts[4]) if len(parts) > 4 and parts[2:4] == ["moe", "experts"] else None


def module_of(name: str) -> str:
    if name == "embed":
        return "embed"
    if name in ("lm_head", "final_norm"):
        return "lm_head"
    local = name.split(".", 2)[2] if name.startswith("layers.") else name
    if local == "attn_norm" or (local.startswith("attn.") and local != "attn.o_proj" and local != "attn.o_bias"):
        return "qkv_proj"
    if local in ("attn.o_proj", "attn.o_bias"):
        return "o_proj"
    if local in ("mlp_norm", "moe.router", "moe.router_bias"):
        return "router"
    if local.startswith("moe.experts."):
        return "experts"
    if local.startswith("moe.shared"):
        return "shared_experts"
    if local.startswith("mlp."):
        return "dense_mlp"
    raise KeyError(f"weight {name!r} belongs to no engine module")


@dataclass(frozen=True)
class PackedEntry:
    name: str               # canonical name without the `layers.{l}.` prefix
    offset: int             # bytes
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * torch.tensor([], dtype=self.dtype).element_size()


@dataclass
class PackedLayer:
    """One layer's streamed tensors in one contiguous uint8 host buffer."""

    entries: tuple[PackedEntry, ...]
    host: torch.Tensor      # uint8 [nbytes]

    @property
    def nbytes(self) -> int:
        return self.host.numel()

    def views(self, buffer: torch.Tensor) -> dict[str, torch.Tensor]:
        return {e.name: buffer[e.offset:e.offset + e.nbytes].view(e.dtype).view(e.shape) for e in self.entries}

    @classmethod
    def pack(cls, tensors: Mapping[str, torch.Tensor], pin: bool) -> PackedLayer:
        entries, offset = [], 0
        for name, tensor in tensors.items():
            entries.append(PackedEntry(name, offset, tensor.dtype, tuple(tensor.shape)))
            offset += -(-tensor.numel() * tensor.element_size() // _ALIGN) * _ALIGN
        host = torch.empty(offset, dtype=torch.uint8, pin_memory=pin)
        layer = cls(tuple(entries), host)
        for view, tensor in zip(layer.views(host).values(), tensors.values()):
            view.copy_(tensor)
        return layer


class WeightStore:
    """Global tensors, per-layer resident tensors, and per-layer packed streamed tensors."""

    def __init__(self, weights: Mapping[str, torch.Tensor], spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self.device = torch.device(config.device)
        self.streams = config.streams
        pin = self.streams and self.device.type == "cuda"
        self.resident_bytes = 0
        self.streamed_bytes = 0
        self.globals: dict[str, torch.Tensor] = {}
        embed_on_device = config.is_resident("embed")
        head_on_device = config.is_resident("lm_head")
        self.globals["embed"] = self._place(weights["embed"], embed_on_device)
        self.globals["final_norm"] = self._place(weights["final_norm"], True)
        if spec.tie_word_embeddings and head_on_device == embed_on_device:
            self.globals["lm_head"] = self.globals["embed"]  # tied: one copy
        else:
            self.globals["lm_head"] = self._place(weights["lm_head"], head_on_device)
        names_by_layer: list[list[str]] = [[] for _ in range(spec.num_layers)]
        for name in weights:
            if name.startswith("layers."):
                names_by_layer[int(name.split(".", 2)[1])].append(name)
        self.layers: list[dict[str, torch.Tensor]] = [{} for _ in range(spec.num_layers)]
        self.packed: list[PackedLayer] | None = [] if self.streams else None
        for layer, names in enumerate(names_by_layer):  # one layer at a time: host memory holds one extra layer
            streamed = {}
            for name in names:
                local = name.split(".", 2)[2]
                if config.is_resident(module_of(name), expert_of(name)):
                    self.layers[layer][local] = self._place(weights[name], True)
                else:
                    streamed[local] = weights[name]
                    self.streamed_bytes += streamed[local].numel() * streamed[local].element_size()
            if self.packed is not None:
                self.packed.append(PackedLayer.pack(streamed, pin))

    def _place(self, tensor: torch.Tensor, on_device: bool) -> torch.Tensor:
        """Resident tensors go to the device once; with no device they are used in place."""
        if on_device:
            self.resident_bytes += tensor.numel() * tensor.element_size()
            return tensor if self.device.type == "cpu" else tensor.to(self.device)
        if self.device.type == "cuda" and not tensor.is_pinned():
            return tensor.pin_memory()
        return tensor

    @property
    def dtype(self) -> torch.dtype:
        return self.globals["embed"].dtype

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows [T, h] on the device; a host table is gathered on the host first."""
        table = self.globals["embed"]
        rows = F.embedding(token_ids.to(table.device), table)
        return rows if rows.device == self.device else rows.to(self.device, non_blocking=True)

    def global_on_device(self, name: str) -> torch.Tensor:
        """A global tensor on the device: resident ones as they are, host ones copied for this use."""
        tensor = self.globals[name]
        return tensor if tensor.device == self.device else tensor.to(self.device, non_blocking=True)

    @property
    def max_packed_bytes(self) -> int:
        return max((layer.nbytes for layer in self.packed or ()), default=0)

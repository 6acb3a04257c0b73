"""Host weight store and device placement: which tensors live where, decided once from the EngineConfig.
Each tensor is read from the checkpoint once; what it holds is what the planner's memory model counts.

How it works: docs/design.md, `runtime/engine/weights.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F

from planner.errors import UserError
from planner.perf.gemm_dtype import is_upcast
from planner.specs.spec import ModelSpec
from runtime.engine.config import EngineConfig
from runtime.engine.expert_stacks import FUSED_NAMES, is_stack_name
from runtime.engine.host_arena import HostArena, aligned, default_pinner, packing_threads
from runtime.engine.stack_sources import Source, stack_sources, tensor_meta
from runtime.model.reference import HEAD_NAMES
from runtime.quant.config import SCALES, QuantLayout
from runtime.quant.tensor import QuantView


def stream_part_ranges(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """Experts lo..hi-1 in `parts` contiguous ranges of near-equal size (the larger ones first)."""
    parts = max(min(parts, hi - lo), 1)
    bounds = [lo + -(-(i * (hi - lo)) // parts) for i in range(parts)] + [hi]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def expert_of(name: str) -> int | None:
    """The routed-expert index of `layers.{l}.moe.experts.{e}.*`, else None."""
    parts = name.split(".")
    return (
        int(parts[4]) if len(parts) > 5 and parts[2:4] == ["moe", "experts"] and parts[4].isdigit() else None
    )


def module_of(name: str) -> str:
    name = name.removesuffix(SCALES)
    if name == "embed":
        return "embed"
    if name in HEAD_NAMES:
        return "lm_head"
    local = name.split(".", 2)[2] if name.startswith("layers.") else name
    if local in ("attn_norm", "attn_norm_bias") or (
        local.startswith("attn.") and local != "attn.o_proj" and local != "attn.o_bias"
    ):
        return "qkv_proj"
    if local in ("attn.o_proj", "attn.o_bias"):
        return "o_proj"
    if local in ("mlp_norm", "mlp_norm_bias", "moe.router", "moe.router_bias", "moe.router_linear_bias"):
        return "router"
    if local.startswith("moe.experts."):
        return "experts"
    if local.startswith("moe.shared"):
        return "shared_experts"
    if local.startswith("mlp."):
        return "dense_mlp"
    raise KeyError(f"weight {name!r} belongs to no engine module")


def _source(weights: Mapping[str, torch.Tensor], name: str, local: str) -> Source:
    shape, dtype = tensor_meta(weights, name)
    return Source(
        local,
        shape,
        dtype,
        fill=lambda dst: dst.copy_(weights[name]),
        read=partial(weights.__getitem__, name),
    )


@dataclass(frozen=True)
class PackedEntry:
    name: str  # the store's name without the `layers.{l}.` prefix
    offset: int  # bytes
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class PackedLayer:
    """One layer's streamed tensors in one contiguous uint8 host region."""

    entries: tuple[PackedEntry, ...]
    host: torch.Tensor  # uint8 [nbytes]

    @property
    def nbytes(self) -> int:
        return self.host.numel()

    def views(self, buffer: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            e.name: buffer[e.offset : e.offset + e.nbytes].view(e.dtype).view(e.shape) for e in self.entries
        }

    @staticmethod
    def layout(sources: list[Source]) -> tuple[tuple[PackedEntry, ...], int]:
        entries, offset = [], 0
        for source in sources:
            entries.append(PackedEntry(source.name, offset, source.dtype, source.shape))
            offset += aligned(source.nbytes)
        return tuple(entries), offset

    @classmethod
    def pack(cls, tensors: Mapping[str, torch.Tensor]) -> PackedLayer:
        """Pack named tensors into a new ordinary host region (tests and tools; the store packs into its arena)."""
        sources = [
            Source(name, tuple(t.shape), t.dtype, fill=lambda dst, t=t: dst.copy_(t))
            for name, t in tensors.items()
        ]
        entries, nbytes = cls.layout(sources)
        layer = cls(entries, torch.empty(nbytes, dtype=torch.uint8))
        for view, source in zip(layer.views(layer.host).values(), sources):
            source.fill(view)
        return layer


class WeightStore:
    """Global tensors, per-layer resident tensors, and per-layer packed streamed tensors in one host arena."""

    def __init__(
        self, weights: Mapping[str, torch.Tensor], spec: ModelSpec, config: EngineConfig, pinner=None
    ):
        self.spec = spec
        self.config = config
        self.device = torch.device(config.device)
        self.streams = config.streams
        self.resident_bytes = 0
        self.streamed_bytes = 0
        names_by_layer: list[list[str]] = [[] for _ in range(spec.num_layers)]
        for name in weights:
            if name.startswith("layers."):
                names_by_layer[int(name.split(".", 2)[1])].append(name)
        self.stream_parts = config.decisions.stream_parts if config.streams else 1
        streamed_units, streamed_globals = [], []
        self.expert_ranges: list[
            tuple[int, int]
        ] = []  # the (lo, hi) experts of each stack, same in every MoE layer
        self.layers: list[dict[str, torch.Tensor]] = []
        self.part_of: list[dict[str, int]] = []  # per layer: streamed tensor name -> its stream part
        quant = getattr(weights, "quant", {})
        self.quant_layouts: list[dict[str, QuantLayout]] = [
            {n.split(".", 2)[2]: layout for n in names if (layout := quant.get(n)) is not None}
            for names in names_by_layer
        ]
        for layer, names in enumerate(names_by_layer):
            resident, units = self._layer_sources(weights, layer, names)
            self.layers.append({source.name: self._place(source) for source in resident})
            streamed_units.extend(units)
            self.part_of.append({source.name: part for part, unit in enumerate(units) for source in unit})
        self.globals: dict[str, torch.Tensor] = {
            name: self._place(_source(weights, name, name))
            for name in ("final_norm", "final_norm_bias", "lm_head_bias")
            if name in weights
        }
        embed_on_device, head_on_device = config.is_resident("embed"), config.is_resident("lm_head")
        for name, on_device in (("embed", embed_on_device), ("lm_head", head_on_device)):
            if name == "lm_head" and spec.tie_word_embeddings and head_on_device == embed_on_device:
                self.globals["lm_head"] = self.globals["embed"]  # tied: one copy
            elif on_device:
                self.globals[name] = self._place(_source(weights, name, name))
            else:
                streamed_globals.append(_source(weights, name, name))
        self.arena: HostArena | None = None
        self.packed: list[PackedLayer] | None = None
        if self.streams:
            self._pack(streamed_units, streamed_globals, pinner or default_pinner(self.device))

    # ----- building -----
    def _layer_sources(
        self, weights, layer: int, names: list[str]
    ) -> tuple[list[Source], list[list[Source]]]:
        """(resident sources, streamed sources per stream part) of one layer: plain tensors by module, routed
        experts as stacks; with `stream_parts` p > 1 the streamed experts form p stacks, one per part."""
        resident, streamed, has_experts = [], [], False
        for name in names:
            if expert_of(name) is not None or name.split(".", 2)[2].removesuffix(SCALES) in FUSED_NAMES:
                has_experts = True
                continue
            source = _source(weights, name, name.split(".", 2)[2])
            (resident if self.config.is_resident(module_of(name)) else streamed).append(source)
        if has_experts:
            num_experts = self.spec.num_experts
            kept = (
                num_experts
                if self.config.is_resident("experts")
                else min(self.config.decisions.resident_experts_per_layer, num_experts)
            )
            self.expert_ranges = [(0, kept)] if kept else []
            self.expert_ranges += stream_part_ranges(kept, num_experts, self.stream_parts)
            units: list[list[Source]] = [streamed] + [[] for _ in range(self.stream_parts - 1)]
            if self.stream_parts > 1 and streamed:
                raise UserError(
                    f"streaming layers in {self.stream_parts} parts needs every module but the routed "
                    f"experts resident; layer {layer} streams {[s.name for s in streamed]}",
                    "re-solve the plan with `planner solve` (it streams in parts only then)",
                )
            for i, (lo, hi) in enumerate(self.expert_ranges):
                sources = resident if lo < kept else units[i - (1 if kept else 0)]
                if hi > lo:
                    sources.extend(self._stack_sources(weights, layer, lo, hi))
            return resident, units
        return resident, [streamed] + [[] for _ in range(self.stream_parts - 1)]

    def _stack_sources(self, weights, layer: int, lo: int, hi: int) -> list[Source]:
        sources, layouts = stack_sources(weights, layer, lo, hi)
        self.quant_layouts[layer].update(layouts)
        return sources

    def _place(self, source: Source) -> torch.Tensor:
        """A resident tensor: on the device, filled once; with no device a checkpoint tensor is used in place
        (a GEMM weight the plan holds wider, `EngineConfig.upcast_dtype`, is a converted copy)."""
        wide = self.config.upcast_dtype
        if wide is not None and is_upcast(source.name) and source.dtype in (torch.bfloat16, torch.float16):
            source = replace(source, dtype=getattr(torch, wide), read=None)
        self.resident_bytes += source.nbytes
        if self.device.type == "cpu" and source.read is not None:
            return source.read()
        tensor = torch.empty(source.shape, dtype=source.dtype, device=self.device)
        source.fill(tensor)
        return tensor

    def _pack(self, layers: list[list[Source]], globals_: list[Source], pinner) -> None:
        """Lay every streamed unit (a layer, or one part of a layer: `stream_parts`) out in one arena, fill it
        with several threads, then page-lock it."""
        layouts = [PackedLayer.layout(sources) for sources in layers]
        self.arena = HostArena([nbytes for _, nbytes in layouts] + [s.nbytes for s in globals_], pinner)
        self.packed = [PackedLayer(entries, self.arena.region(i)) for i, (entries, _) in enumerate(layouts)]
        jobs = [
            (list(packed.views(packed.host).values()), sources)
            for packed, sources in zip(self.packed, layers)
        ]
        for i, source in enumerate(globals_, start=len(layers)):
            view = self.arena.region(i).view(source.dtype).view(source.shape)
            self.globals[source.name] = view
            jobs.append(([view], [source]))
        self.streamed_bytes = sum(s.nbytes for sources in layers for s in sources)  # per pass over the layers

        def fill(job) -> None:
            for view, source in zip(*job):
                source.fill(view)

        with ThreadPoolExecutor(packing_threads(), thread_name_prefix="weight-pack") as pool:
            list(pool.map(fill, jobs))
        self.arena.pin()

    # ----- use -----
    @property
    def pinned_bytes(self) -> int:
        return self.arena.nbytes if self.arena is not None and self.arena.is_pinned else 0

    @property
    def dtype(self) -> torch.dtype:
        return self.globals["embed"].dtype

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows [T, h] on the device; a host table is gathered on the host first."""
        table = self.globals["embed"]
        rows = F.embedding(token_ids.to(table.device), table)
        return rows if rows.device == self.device else rows.to(self.device, non_blocking=True)

    def head_on_device(self) -> dict[str, torch.Tensor]:
        """The final norm and lm_head (with their biases where the model has them) on the device."""
        return {name: self.global_on_device(name) for name in HEAD_NAMES if name in self.globals}

    def global_on_device(self, name: str) -> torch.Tensor:
        """A global tensor on the device: resident ones as they are, host ones copied for this use."""
        tensor = self.globals[name]
        return tensor if tensor.device == self.device else tensor.to(self.device, non_blocking=True)

    def layer_view(self, layer: int, w: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Layer `layer`'s tensors `w` as the model reads them (see the module docstring)."""
        layouts = self.quant_layouts[layer]
        return QuantView(w, layouts, self.dtype, keep=is_stack_name) if layouts else w

    @property
    def max_packed_bytes(self) -> int:
        return max((layer.nbytes for layer in self.packed or ()), default=0)

    def close(self) -> None:
        if self.arena is not None:
            self.arena.release()

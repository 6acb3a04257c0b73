"""Attention as the engine runs it: device projections, CPU paged decode attention, device prefill attention.
`AttentionBackend` is the interface every backend (`GQABackend` here, `MLABackend`) implements.

How it works: docs/design.md, `runtime/engine/attention_backend.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import partial
from typing import Protocol

import torch

from planner.specs.spec import ModelSpec
from runtime.engine.kv_cache import HostKVCache, blocks_for
from runtime.engine.prefill_attention import causal_attention, fits_one_call, prompts_causal_attention
from runtime.engine.staging import HostTensors, Staging
from runtime.model.attention import o_projection, qkv_projection
from runtime.model.reference import ROPE_BUILDERS
from runtime.model.rope import Rope


def rope_on(rope: Rope, device: torch.device) -> Rope:
    """The rope with its inverse frequencies on the device once (never copied per call)."""
    return dataclasses.replace(rope, inv_freq=rope.inv_freq.to(device))


def tables_rows(tables: tuple[torch.Tensor, ...], rows: slice) -> tuple[torch.Tensor, ...]:
    return tuple(t[rows] for t in tables)


class PrefillKVWriter:
    """Prefill K/V (or latent rows) on their way to the host cache, written once their copies land."""

    def __init__(self, kv: HostKVCache, staging: Staging):
        self.kv, self.staging = kv, staging
        self._pending: list[tuple[int, Callable[..., None], HostTensors]] = []

    def send(self, layer: int, blocks: torch.Tensor, start: int, *values: torch.Tensor) -> None:
        write = partial(self.kv.write_tokens, layer, blocks, start)
        self._pending.append((layer, write, self.staging.to_host(*values)))

    def send_prompts(self, layer: int, blocks: torch.Tensor, *values: torch.Tensor) -> None:
        """Prompts from position 0, rows stacked (`HostKVCache.write_prompts`): one write for all of them."""
        self._pending.append(
            (layer, partial(self.kv.write_prompts, layer, blocks), self.staging.to_host(*values))
        )

    def read_prefix(
        self, layer: int, blocks: torch.Tensor, count: int, like: torch.Tensor
    ) -> list[torch.Tensor]:
        return [self.staging.to_device(t).to(like.dtype) for t in self.kv.read_tokens(layer, blocks, count)]

    def store(self, through_layer: int) -> None:
        """Write the pending K/V of layers up to `through_layer` (their copies were queued earliest)."""
        kept = []
        for entry in self._pending:
            layer, write, host = entry
            if layer <= through_layer:
                write(*host.ready())
            else:
                kept.append(entry)
        self._pending = kept


def prefill_each(backend, layer: int, proj, blocks: list[torch.Tensor], length: int) -> torch.Tensor:
    """`AttentionBackend.prefill_prompts` as one `prefill` per prompt (rows stacked, `length` each)."""
    return torch.cat(
        [
            backend.prefill(layer, tuple(t[i * length : (i + 1) * length] for t in proj), prompt_blocks, 0)
            for i, prompt_blocks in enumerate(blocks)
        ]
    )


Projections = tuple[torch.Tensor, ...]  # a backend's per-token projections (q, k, v, ... or latents)


class AttentionBackend(Protocol):
    """What `LayerStack` calls; built as `cls(spec, kv, device, attention_threads, staging)`."""

    def __init__(
        self,
        spec: ModelSpec,
        kv: HostKVCache,
        device: torch.device,
        attention_threads: int | None,
        staging: Staging,
    ) -> None: ...

    def rope_tables(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def project(
        self, x: torch.Tensor, w: Mapping[str, torch.Tensor], tables: tuple[torch.Tensor, ...]
    ) -> Projections: ...

    def to_host(self, proj: Projections) -> HostTensors: ...

    def decode(
        self, layer: int, host_proj: HostTensors, block_tables: torch.Tensor, context_lens: torch.Tensor
    ) -> torch.Tensor: ...

    def prefill(self, layer: int, proj: Projections, blocks: torch.Tensor, start: int) -> torch.Tensor: ...

    def prefill_prompts(
        self, layer: int, proj: Projections, blocks: list[torch.Tensor], length: int
    ) -> torch.Tensor: ...

    def store_prefill_kv(self, through_layer: int) -> None: ...

    def output(self, o: torch.Tensor, w: Mapping[str, torch.Tensor]) -> torch.Tensor: ...


class GQABackend:
    def __init__(
        self,
        spec: ModelSpec,
        kv: HostKVCache,
        device: torch.device,
        attention_threads: int | None,
        staging: Staging,
    ):
        from runtime.attention import decode_attention

        self.spec = spec
        self.kv = kv
        self.device = device
        self.threads = attention_threads
        self.staging = staging
        self.writer = PrefillKVWriter(kv, staging)
        self.rope = rope_on(ROPE_BUILDERS[spec.attention](spec), device)
        self.scale = spec.head_dim**-0.5
        self._decode_attention = decode_attention

    def _window(self, layer: int) -> int | None:
        return self.spec.sliding_window if self.spec.is_sliding_layer(layer) else None

    def rope_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rope.cos_sin(positions, dtype)  # cos, sin [T, D]

    def project(
        self, x: torch.Tensor, w: Mapping[str, torch.Tensor], tables: tuple[torch.Tensor, ...]
    ) -> Projections:
        cos, sin = tables
        q, k, v = qkv_projection(x, w, self.spec, cos, sin)  # q [T,Hq,D], k, v [T,Hkv,D]
        if self.spec.attention_sinks:
            return q, k, v, w["attn.sinks"].float().expand(q.shape[0], -1)  # [T, Hq]
        return q, k, v

    def to_host(self, proj: Projections) -> HostTensors:
        return self.staging.to_host(*proj)

    def decode(
        self, layer: int, host_proj: HostTensors, block_tables: torch.Tensor, context_lens: torch.Tensor
    ) -> torch.Tensor:
        q, k, v, *sinks = host_proj.ready()
        cache_dtype = self.kv.layout.dtype
        o = self._decode_attention(
            q.to(cache_dtype),
            k.to(cache_dtype),
            v.to(cache_dtype),
            self.kv.k[layer],
            self.kv.v[layer],
            block_tables,
            context_lens,
            self.scale,
            sliding_window=self._window(layer),
            num_threads=self.threads,
            sinks=sinks[0][0].contiguous() if sinks and q.shape[0] else None,
        )
        return o.to(q.dtype)  # [B, Hq, D]

    def prefill(self, layer: int, proj: Projections, blocks: torch.Tensor, start: int) -> torch.Tensor:
        q, k, v, *sinks = proj
        keys, values = k, v
        if start > 0:
            prior_k, prior_v = self.writer.read_prefix(layer, blocks, start, k)
            keys, values = torch.cat((prior_k, k)), torch.cat((prior_v, v))
        self.writer.send(layer, blocks, start, k, v)
        sink = sinks[0][0] if sinks else None
        return causal_attention(q, keys, values, self.scale, self._window(layer), sink)  # [T, Hq, D]

    def prefill_prompts(
        self, layer: int, proj: Projections, blocks: list[torch.Tensor], length: int
    ) -> torch.Tensor:
        """Prompts from position 0, `length` tokens each, rows stacked: one attention call and one K/V write for
        all of them where `prefill` makes one each (windowed layers and attention sinks: one `prefill` each)."""
        q, k, v, *sinks = proj
        if sinks or self._window(layer) is not None or not fits_one_call(length, q.shape[1]):
            return prefill_each(self, layer, proj, blocks, length)
        first = blocks_for(length, self.kv.block_size)
        self.writer.send_prompts(layer, torch.stack([b[:first] for b in blocks]), k, v)
        return prompts_causal_attention(q, k, v, self.scale, len(blocks))  # [P*T, Hq, D]

    def store_prefill_kv(self, through_layer: int) -> None:
        self.writer.store(through_layer)

    def output(self, o: torch.Tensor, w: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return o_projection(o, w)

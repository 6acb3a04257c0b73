"""The engine's MLA attention backend (DeepSeek-V2/V3): latent KV cache, absorbed attention everywhere.

How it works: docs/design.md, `runtime/engine/mla_layer.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from planner.specs.spec import ModelSpec
from runtime.engine.attention_backend import PrefillKVWriter, Projections, prefill_each, rope_on
from runtime.engine.kv_cache import HostKVCache
from runtime.engine.prefill_attention import causal_attention
from runtime.engine.staging import HostTensors, Staging
from runtime.model.attention import o_projection
from runtime.model.mla import (
    mla_absorb_query,
    mla_output_from_latent,
    mla_project,
    mla_rope,
    mla_softmax_scale,
)


class MLABackend:
    def __init__(
        self,
        spec: ModelSpec,
        kv: HostKVCache,
        device: torch.device,
        attention_threads: int | None,
        staging: Staging,
    ):
        from runtime.attention import mla_decode_attention

        self.spec = spec
        self.kv = kv
        self.device = device
        self.threads = attention_threads
        self.staging = staging
        self.writer = PrefillKVWriter(kv, staging)
        self.rope = rope_on(mla_rope(spec), device)
        self.scale = mla_softmax_scale(spec)
        self._decode_attention = mla_decode_attention

    def rope_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rope.cos_sin(positions, torch.float32)  # the reference's MLA path rotates in fp32

    def project(
        self, x: torch.Tensor, w: Mapping[str, torch.Tensor], tables: tuple[torch.Tensor, ...]
    ) -> Projections:
        cos, sin = tables
        q_nope, q_rope, latent = mla_project(x, w, self.spec, cos, sin)
        return mla_absorb_query(q_nope, w, self.spec).contiguous(), q_rope.contiguous(), latent

    def to_host(self, proj: Projections) -> HostTensors:
        return self.staging.to_host(*proj)

    def decode(
        self, layer: int, host_proj: HostTensors, block_tables: torch.Tensor, context_lens: torch.Tensor
    ) -> torch.Tensor:
        q_latent, q_rope, latent = host_proj.ready()
        o = self._decode_attention(
            q_latent,
            q_rope,
            latent.to(self.kv.layout.dtype),
            self.kv.latent[layer],
            block_tables,
            context_lens,
            self.scale,
            num_threads=self.threads,
        )
        return o.to(q_latent.dtype)  # [B, H, R]

    def prefill(self, layer: int, proj: Projections, blocks: torch.Tensor, start: int) -> torch.Tensor:
        q_latent, q_rope, latent = proj
        rows = latent
        if start > 0:
            (prior,) = self.writer.read_prefix(layer, blocks, start, latent)
            rows = torch.cat((prior, latent))  # [start+T, R+P]
        self.writer.send(layer, blocks, start, latent)
        query = torch.cat((q_latent, q_rope), dim=-1)  # [T, H, R+P]
        return causal_attention(
            query, rows[:, None, :], rows[:, None, : q_latent.shape[-1]], self.scale
        )  # [T,H,R]

    def prefill_prompts(
        self, layer: int, proj: Projections, blocks: list[torch.Tensor], length: int
    ) -> torch.Tensor:
        return prefill_each(self, layer, proj, blocks, length)

    def store_prefill_kv(self, through_layer: int) -> None:
        self.writer.store(through_layer)

    def output(self, o: torch.Tensor, w: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return o_projection(mla_output_from_latent(o, w, self.spec), w)

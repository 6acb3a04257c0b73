"""The engine's MLA attention backend (DeepSeek-V2/V3): latent KV cache, absorbed attention everywhere.

Same interface as `attention_backend.GQABackend` (registered as `ATTENTION_BACKENDS["mla"]`):
- `rope_tables(positions, dtype)`: fp32 cos/sin of the rope dims, once per step;
- `project(x, w, tables) -> (q_latent [T,H,R], q_rope [T,H,P], latent [T,R+P])` on the device:
  `runtime.model.mla.mla_project`, then W_UK folded into the query (`mla_absorb_query`);
- `decode(...)` on the host: `runtime.attention.mla_decode_attention` appends the latent row at
  context_lens-1 and attends over the cached rows [R+P] (R + P values read per cached token) -> [B,H,R];
- `prefill(...)` on the device: the same absorbed attention over the cached prefix plus the chunk (one-KV-head
  MQA through `prefill_attention.causal_attention`), with the chunk's latent rows sent to the cache; no K/V is
  expanded, so prefill costs what the planner counts (planner.perf.costs: MLA attention in absorbed form);
- `output(o_latent, w) -> [T,h]`: W_UV (`mla_output_from_latent`) then o_proj, on the device.
The cache holds exactly the rows the reference forward caches (normed latent + rotated rope key).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from planner.specs.spec import ModelSpec
from runtime.engine.attention_backend import PrefillKVWriter, rope_on
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

    def project(self, x: torch.Tensor, w: Mapping[str, torch.Tensor], tables):
        cos, sin = tables
        q_nope, q_rope, latent = mla_project(x, w, self.spec, cos, sin)
        return mla_absorb_query(q_nope, w, self.spec).contiguous(), q_rope.contiguous(), latent

    def to_host(self, proj) -> HostTensors:
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

    def prefill(self, layer: int, proj, blocks: torch.Tensor, start: int) -> torch.Tensor:
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

    def store_prefill_kv(self, through_layer: int) -> None:
        self.writer.store(through_layer)

    def output(self, o: torch.Tensor, w: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return o_projection(mla_output_from_latent(o, w, self.spec), w)

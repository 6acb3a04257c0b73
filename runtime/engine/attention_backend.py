"""Attention as the engine runs it: device projections, CPU paged decode attention, device prefill attention.

`ATTENTION_BACKENDS` maps `spec.attention` to a backend class built as `cls(spec, kv_cache, device,
attention_threads)`. A backend has:
- `project(x [T,h], w, positions [T]) -> proj`: projections on the device (opaque per backend);
- `to_host(proj) -> host_proj`: start the device-to-host copy of what decode attention reads;
- `decode(layer, host_proj, block_tables [B,M] int32, context_lens [B] int32) -> o` on the host: appends
  the new K/V (or latent) at position context_lens-1 and attends (the paged CPU kernel);
- `prefill(layer, proj, blocks [n] int32, start) -> o` on the device: causal attention of T prompt tokens at
  positions start..start+T-1 over the cached prefix plus themselves, and stores their K/V in the cache;
- `output(o, w) -> [T,h]`: the output projection on the device.
The GQA backend composes the model's own functions (`qkv_projection`, `attention_core`, `o_projection`);
the MLA backend (DeepSeek, `runtime.engine.mla_layer`) has the same interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from planner.spec import ModelSpec
from runtime.engine.kv_cache import HostKVCache
from runtime.model.attention import attention_core, o_projection, qkv_projection
from runtime.model.reference import ROPE_BUILDERS


@dataclass
class HostTensors:
    """Tensors on their way to the host; `ready()` waits for the copy (a CUDA event, not the device)."""

    tensors: tuple[torch.Tensor, ...]
    event: torch.cuda.Event | None = None

    def ready(self) -> tuple[torch.Tensor, ...]:
        if self.event is not None:
            self.event.synchronize()
        return self.tensors


def copy_to_host(*tensors: torch.Tensor) -> HostTensors:
    if tensors[0].device.type == "cpu":
        return HostTensors(tensors)
    host = tuple(t.to("cpu", non_blocking=True) for t in tensors)
    event = torch.cuda.Event()
    event.record()
    return HostTensors(host, event)


class GQABackend:
    def __init__(self, spec: ModelSpec, kv: HostKVCache, device: torch.device, attention_threads: int | None):
        from runtime.attention import decode_attention

        self.spec = spec
        self.kv = kv
        self.device = device
        self.threads = attention_threads
        self.rope = ROPE_BUILDERS[spec.attention](spec)
        self.scale = spec.head_dim ** -0.5
        self._decode_attention = decode_attention

    def _window(self, layer: int) -> int | None:
        return self.spec.sliding_window if self.spec.is_sliding_layer(layer) else None

    def project(self, x: torch.Tensor, w: Mapping[str, torch.Tensor], positions: torch.Tensor):
        cos, sin = self.rope.cos_sin(positions.to(x.device), x.dtype)
        return qkv_projection(x, w, self.spec, cos, sin)  # q [T,Hq,D], k, v [T,Hkv,D]

    def to_host(self, proj) -> HostTensors:
        return copy_to_host(*proj)

    def decode(self, layer: int, host_proj: HostTensors, block_tables: torch.Tensor,
               context_lens: torch.Tensor) -> torch.Tensor:
        q, k, v = host_proj.ready()
        cache_dtype = self.kv.layout.dtype
        o = self._decode_attention(q.to(cache_dtype), k.to(cache_dtype), v.to(cache_dtype), self.kv.k[layer],
                                   self.kv.v[layer], block_tables, context_lens, self.scale,
                                   sliding_window=self._window(layer), num_threads=self.threads)
        return o.to(q.dtype)  # [B, Hq, D]

    def prefill(self, layer: int, proj, blocks: torch.Tensor, start: int) -> torch.Tensor:
        q, k, v = proj
        if start > 0:
            prior_k, prior_v = self.kv.read_tokens(layer, blocks, start)
            keys = torch.cat((prior_k.to(k.device, k.dtype), k))
            values = torch.cat((prior_v.to(v.device, v.dtype), v))
        else:
            keys, values = k, v
        self.kv.write_tokens(layer, blocks, start, k.cpu(), v.cpu())
        return attention_core(q, keys, values, self.scale, self._window(layer))  # [T, Hq, D]

    def output(self, o: torch.Tensor, w: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return o_projection(o, w)


from runtime.engine.mla_layer import MLABackend  # noqa: E402  (it builds on copy_to_host above)

ATTENTION_BACKENDS: dict[str, type] = {
    "gqa": GQABackend,
    "mla": MLABackend,
}

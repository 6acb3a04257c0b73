"""Layer-by-layer forward passes over a whole batch: one decode step for all sequences in flight, and a
packed prefill of prompt chunks. Model math comes from `runtime.model`; this module only orders it.

Decode (module-based batching): per layer, attention in micro-batches of `attn_batch` sequences (norm + QKV
on the device, the new K/V appended and attended by the CPU kernel, O projection back on the device), then
the router over every token and each expert over all tokens routed to it (chunks of `expert_batch`).
With `overlap`, the batch is split into two token groups and the layer loop is software-pipelined so the
CPU attends one group (worker thread) while the device runs the other's projections and experts:
  A(g, l): norm + QKV of group g at layer l;  C(g, l): CPU attention;  B(g, l): O projection + FFN.
  order: A(0,0) C(0,0)* | per l: A(1,l), C(1,l)*, B(0,l), A(0,l+1), C(0,l+1)*, B(1,l)   (* = worker)
Layer weights are acquired from the streamer in layer order and released when both groups are done, so
at most two layers' streamed weights are held. Prefill runs chunks of several prompts packed into one
token batch; its attention runs per prompt on the device (causal over the cached prefix plus the chunk).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from planner.spec import ModelSpec
from runtime.engine.config import EngineConfig
from runtime.engine.ffn import ffn_block
from runtime.engine.instrumentation import ModuleTimer
from runtime.engine.streamer import LayerStreamer
from runtime.engine.weights import WeightStore
from runtime.model.layers import rms_norm


@dataclass
class DecodeBatch:
    token_ids: torch.Tensor       # [B] int64, host
    positions: torch.Tensor       # [B] int64, host: position of the token being appended
    block_tables: torch.Tensor    # [B, M] int32, host
    context_lens: torch.Tensor    # [B] int32, host: cached tokens including this one


@dataclass
class PrefillSegment:
    rows: slice                   # rows of the packed batch
    blocks: torch.Tensor          # [n] int32: the sequence's KV blocks
    start: int                    # position of its first token


@dataclass
class PrefillBatch:
    token_ids: torch.Tensor       # [T] int64, host
    positions: torch.Tensor       # [T] int64, host
    segments: list[PrefillSegment]
    logit_rows: list[int]         # rows whose next-token logits are needed


class LayerStack:
    def __init__(self, spec: ModelSpec, store: WeightStore, streamer: LayerStreamer | None, backend,
                 timer: ModuleTimer, config: EngineConfig):
        self.spec = spec
        self.store = store
        self.streamer = streamer
        self.backend = backend
        self.timer = timer
        self.device = store.device
        self.attn_batch = config.effective_attn_batch
        self.expert_batch = config.effective_expert_batch
        self.overlap = config.uses_overlap
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="cpu-attention") if self.overlap else None
        self.eps = spec.rms_norm_eps

    # ----- weights -----
    def _acquire(self, layer: int):
        if self.streamer is None:
            return self.store.layers[layer]
        return {**self.store.layers[layer], **self.streamer.acquire(layer)}

    def _release(self, layer: int) -> None:
        if self.streamer is not None:
            self.streamer.release(layer)

    # ----- pieces -----
    def _embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        with self.timer.device_work("embed"):
            return self.store.embed_tokens(token_ids)  # [T, h]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with self.timer.device_work("lm_head"):
            normed = rms_norm(x, self.store.global_on_device("final_norm"), self.eps)
            return F.linear(normed, self.store.global_on_device("lm_head"))  # [rows, V]

    def _project(self, x: torch.Tensor, rows: slice, w, positions: torch.Tensor):
        with self.timer.device_work("qkv_proj"):
            proj = self.backend.project(rms_norm(x[rows], w["attn_norm"], self.eps), w, positions[rows])
            return self.backend.to_host(proj)

    def _attend(self, layer: int, pending: list, batch: DecodeBatch) -> list:
        with torch.inference_mode(), self.timer.host("attention"):
            return [(rows, self.backend.decode(layer, host, batch.block_tables[rows], batch.context_lens[rows]))
                    for rows, host in pending]

    def _attention_out(self, x: torch.Tensor, w, attended: list) -> None:
        with self.timer.device_work("o_proj"):
            for rows, o in attended:
                x[rows] += self.backend.output(o.to(self.device, non_blocking=True), w)

    def _ffn(self, x: torch.Tensor, rows: slice, w, layer: int) -> list[int]:
        with self.timer.device_work("router"):
            normed = rms_norm(x[rows], w["mlp_norm"], self.eps)
        out, activated = ffn_block(normed, w, self.spec, layer, self.expert_batch, self.timer)
        x[rows] += out
        return activated

    def _micro_batches(self, rows: slice) -> list[slice]:
        return [slice(s, min(s + self.attn_batch, rows.stop)) for s in range(rows.start, rows.stop, self.attn_batch)]

    # ----- decode -----
    def decode(self, batch: DecodeBatch) -> tuple[torch.Tensor, list[int]]:
        """Final hidden states [B, h] and the number of activated experts per layer (0 for dense layers)."""
        x = self._embed(batch.token_ids)
        num_seqs = x.shape[0]
        if self.overlap and num_seqs >= 2:
            return x, self._decode_pipelined(x, batch)
        activated = []
        for layer in range(self.spec.num_layers):
            w = self._acquire(layer)
            for rows in self._micro_batches(slice(0, num_seqs)):
                pending = [(rows, self._project(x, rows, w, batch.positions))]
                self._attention_out(x, w, self._attend(layer, pending, batch))
            activated.append(len(self._ffn(x, slice(0, num_seqs), w, layer)))
            self._release(layer)
        return x, activated

    def _decode_pipelined(self, x: torch.Tensor, batch: DecodeBatch) -> list[int]:
        half = x.shape[0] // 2
        groups = (slice(0, half), slice(half, x.shape[0]))

        def stage_a(group: int, w) -> list:
            return [(rows, self._project(x, rows, w, batch.positions)) for rows in self._micro_batches(groups[group])]

        def stage_c(layer: int, pending: list):
            return self._worker.submit(self._attend, layer, pending, batch)

        activated = []
        w = self._acquire(0)
        future_a = stage_c(0, stage_a(0, w))
        for layer in range(self.spec.num_layers):
            pending_b = stage_a(1, w)
            attended_a = future_a.result()
            future_b = stage_c(layer, pending_b)
            self._attention_out(x, w, attended_a)
            hit = set(self._ffn(x, groups[0], w, layer))
            w_next = None
            if layer + 1 < self.spec.num_layers:
                w_next = self._acquire(layer + 1)
                future_a = stage_c(layer + 1, stage_a(0, w_next))
            self._attention_out(x, w, future_b.result())
            hit.update(self._ffn(x, groups[1], w, layer))
            activated.append(len(hit))
            self._release(layer)
            w = w_next
        return activated

    # ----- prefill -----
    def prefill(self, batch: PrefillBatch) -> tuple[torch.Tensor, list[int]]:
        """Hidden states [T, h] of the packed chunk batch, with KV of every token written to the cache."""
        x = self._embed(batch.token_ids)
        everything = slice(0, x.shape[0])
        activated = []
        for layer in range(self.spec.num_layers):
            w = self._acquire(layer)
            with self.timer.device_work("qkv_proj"):
                proj = self.backend.project(rms_norm(x, w["attn_norm"], self.eps), w, batch.positions)
            with self.timer.device_work("attention"):
                o = torch.cat([self.backend.prefill(layer, tuple(t[seg.rows] for t in proj), seg.blocks, seg.start)
                               for seg in batch.segments])
            with self.timer.device_work("o_proj"):
                x += self.backend.output(o, w)
            activated.append(len(self._ffn(x, everything, w, layer)))
            self._release(layer)
        return x, activated

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()

"""One pass over the layers per engine step: a packed prefill chunk and every decode token share each layer.

How it works: docs/design.md, `runtime/engine/forward.py`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from planner.modules import Module
from planner.specs.spec import ModelSpec
from runtime.engine.attention_backend import AttentionBackend, tables_rows
from runtime.engine.config import EngineConfig
from runtime.engine.ffn import stacked_ffn_block, use_grouped
from runtime.engine.instrumentation import ModuleTimer
from runtime.engine.staging import Staging
from runtime.engine.streamer import LayerStreamer, StreamParts
from runtime.engine.weights import WeightStore
from runtime.model.layers import linear, norm


@dataclass
class PrefillSegment:
    rows: slice  # rows of the packed batch
    blocks: torch.Tensor  # [n] int32: the sequence's KV blocks
    start: int  # position of its first token
    ring: torch.Tensor  # [n] int32: its slot's ring row (windowed layers, `HostKVCache.ring_rows`)


@dataclass
class StepBatch:
    token_ids: torch.Tensor  # [P+D] int64, host: prefill rows first, then decode rows
    positions: torch.Tensor  # [P+D] int64, host
    segments: list[PrefillSegment]
    num_prefill: int  # P
    block_tables: torch.Tensor  # [D, M] int32, host: the decode rows' block tables
    context_lens: torch.Tensor  # [D] int32, host: cached tokens including the one appended
    ring_tables: torch.Tensor  # [D, M] int32, host: the decode rows' ring rows (windowed layers)

    @property
    def num_rows(self) -> int:
        return self.token_ids.shape[0]


class LayerStack:
    def __init__(
        self,
        spec: ModelSpec,
        store: WeightStore,
        streamer: LayerStreamer | None,
        backend: AttentionBackend,
        timer: ModuleTimer,
        config: EngineConfig,
        staging: Staging,
    ):
        self.spec = spec
        self.store = store
        self.streamer = streamer
        self.backend = backend
        self.timer = timer
        self.staging = staging
        self.device = store.device
        self.attn_batch = config.effective_attn_batch
        self.expert_batch = config.effective_expert_batch
        self.overlap = config.uses_overlap
        self.grouped = use_grouped(
            config.grouped_experts, self.device, store.dtype, spec, config.upcast_dtype
        )
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="cpu-attention") if self.overlap else None
        self._parts_held: dict[int, StreamParts] = {}  # layers streamed in parts, acquired and not released

    # ----- weights -----
    def _acquire(self, layer: int):
        if self.streamer is None:
            return self.store.layer_view(layer, self.store.layers[layer])
        parts = self.store.stream_parts
        if parts == 1:
            streamed = self.streamer.acquire(layer)
        else:
            streamed = StreamParts(self.streamer, layer, parts, self.store.part_of[layer])
            self._parts_held[layer] = streamed
        return self.store.layer_view(layer, LayerWeights(self.store.layers[layer], streamed))

    def _release(self, layer: int) -> None:
        self.backend.store_prefill_kv(layer)
        if self.streamer is None:
            return
        if self.store.stream_parts == 1:
            self.streamer.release(layer)
        else:
            self._parts_held.pop(layer).finish()

    # ----- pieces -----
    def _embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        with self.timer.device_work(Module.EMBED, "shared"):
            return self.store.embed_tokens(self.staging.to_device(token_ids))  # [T, h]

    def logits(self, x: torch.Tensor, phase: str) -> torch.Tensor:
        with self.timer.device_work(Module.LM_HEAD, phase):
            head = self.store.head_on_device()
            normed = norm(x, head, "final_norm", self.spec)
            return linear(normed, head["lm_head"], head.get("lm_head_bias"))  # [rows, V]

    def _project(self, x: torch.Tensor, rows: slice, w, tables):
        with self.timer.device_work(Module.QKV_PROJ, "decode"):
            proj = self.backend.project(
                norm(x[rows], w, "attn_norm", self.spec), w, tables_rows(tables, rows)
            )
            return self.backend.to_host(proj)

    def _attend(self, layer: int, pending: list, batch: StepBatch) -> list:
        """Decode attention of each micro-batch, timed per call (`planner.modules.DECODE_CALLS`)."""
        out = []
        for rows, host in pending:
            seqs = slice(rows.start - batch.num_prefill, rows.stop - batch.num_prefill)
            tables = batch.ring_tables if self.spec.keeps_window_only(layer) else batch.block_tables
            with torch.inference_mode(), self.timer.host(Module.ATTENTION, "decode"):
                o = self.backend.decode(layer, host, tables[seqs], batch.context_lens[seqs])
            out.append((rows, o))
        return out

    def _attention_out(self, x: torch.Tensor, w, attended: list) -> None:
        for rows, o in attended:
            with self.timer.device_work(Module.O_PROJ, "decode"):
                x[rows] += self.backend.output(self.staging.to_device(o), w)

    def _prefill_attention(self, x: torch.Tensor, layer: int, w, batch: StepBatch, tables) -> None:
        rows = slice(0, batch.num_prefill)
        if not batch.num_prefill:
            return
        with self.timer.device_work(Module.QKV_PROJ, "prefill"):
            proj = self.backend.project(
                norm(x[rows], w, "attn_norm", self.spec), w, tables_rows(tables, rows)
            )
        windowed = self.spec.keeps_window_only(layer)
        with self.timer.device_work(Module.ATTENTION, "prefill"):
            pieces = []
            for run in prompt_runs(batch.segments, windowed):
                first, length = run[0], run[0].rows.stop - run[0].rows.start
                own = tuple(t[first.rows.start : run[-1].rows.stop] for t in proj)
                if len(run) > 1:
                    pieces.append(self.backend.prefill_prompts(layer, own, [s.blocks for s in run], length))
                else:
                    pieces.append(
                        self.backend.prefill(
                            layer, own, first.ring if windowed else first.blocks, first.start
                        )
                    )
            o = torch.cat(pieces)
        with self.timer.device_work(Module.O_PROJ, "prefill"):
            x[rows] += self.backend.output(o, w)

    def _ffn(self, x: torch.Tensor, rows: slice, w, layer: int) -> torch.Tensor | None:
        """Adds the FFN output to x[rows]; returns the activated-expert mask [E] (None for a dense layer)."""
        self.timer.phase = "shared"
        try:
            with self.timer.device_work(Module.ROUTER):
                normed = norm(x[rows], w, "mlp_norm", self.spec)
            out, hit = stacked_ffn_block(
                normed,
                w,
                self.spec,
                layer,
                self.expert_batch,
                self.timer,
                self.grouped,
                self.store.expert_ranges,
            )
        finally:
            self.timer.phase = "decode"
        x[rows] += out
        return hit

    def _micro_batches(self, rows: slice) -> list[slice]:
        return [
            slice(s, min(s + self.attn_batch, rows.stop))
            for s in range(rows.start, rows.stop, self.attn_batch)
        ]

    # ----- the step -----
    def forward(self, batch: StepBatch) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Final hidden states [P+D, h] (prefill K/V written to the cache) and the mask [E] of the experts each
        layer's FFN activated over all its tokens (None for dense layers; `activated_counts` counts them)."""
        x = self._embed(batch.token_ids)
        positions = self.staging.to_device(batch.positions)
        with self.timer.device_work(Module.QKV_PROJ, "shared"):
            tables = self.backend.rope_tables(positions, x.dtype)  # once per step, every row
        if self.overlap and batch.num_rows - batch.num_prefill >= 2:
            return x, self._forward_pipelined(x, batch, tables)
        decode = slice(batch.num_prefill, batch.num_rows)
        activated = []
        for layer in range(self.spec.num_layers):
            w = self._acquire(layer)
            self._prefill_attention(x, layer, w, batch, tables)
            for rows in self._micro_batches(decode):
                pending = [(rows, self._project(x, rows, w, tables))]
                self._attention_out(x, w, self._attend(layer, pending, batch))
            activated.append(self._ffn(x, slice(0, batch.num_rows), w, layer))
            self._release(layer)
        return x, activated

    def _forward_pipelined(self, x: torch.Tensor, batch: StepBatch, tables) -> list[torch.Tensor | None]:
        first = batch.num_prefill
        half = first + (batch.num_rows - first) // 2
        groups = (slice(first, half), slice(half, batch.num_rows))
        ffn_rows = (slice(0, half), groups[1])  # group 0's FFN takes the prefill rows too

        def stage_a(group: int, w) -> list:
            return [(rows, self._project(x, rows, w, tables)) for rows in self._micro_batches(groups[group])]

        def stage_c(layer: int, pending: list):
            return self._worker.submit(self._attend, layer, pending, batch)

        activated = []
        w = self._acquire(0)
        future_a = stage_c(0, stage_a(0, w))
        self._prefill_attention(x, 0, w, batch, tables)
        for layer in range(self.spec.num_layers):
            pending_b = stage_a(1, w)
            attended_a = future_a.result()
            future_b = stage_c(layer, pending_b)
            self._attention_out(x, w, attended_a)
            hit = self._ffn(x, ffn_rows[0], w, layer)
            w_next = None
            if layer + 1 < self.spec.num_layers:
                w_next = self._acquire(layer + 1)
                future_a = stage_c(layer + 1, stage_a(0, w_next))
                self._prefill_attention(x, layer + 1, w_next, batch, tables)
            self._attention_out(x, w, future_b.result())
            second = self._ffn(x, ffn_rows[1], w, layer)
            activated.append(None if hit is None else hit | second)
            self._release(layer)
            w = w_next
        return activated

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()


def prompt_runs(segments: list[PrefillSegment], windowed: bool) -> list[list[PrefillSegment]]:
    """The segments in runs that share one prefill attention call: consecutive prompts prefilled from position
    0 with as many tokens each (not in a windowed layer); every other segment alone."""
    runs: list[list[PrefillSegment]] = []
    for seg in segments:
        last = runs[-1][0] if runs else None
        if (
            not windowed
            and last is not None
            and seg.start == last.start == 0
            and seg.rows.stop - seg.rows.start == last.rows.stop - last.rows.start
        ):
            runs[-1].append(seg)
        else:
            runs.append([seg])
    return runs


def activated_counts(hits: list[torch.Tensor | None]) -> list[int]:
    """Activated experts per layer (0 for dense layers) from the layers' masks, with one device sync."""
    masks = [hit for hit in hits if hit is not None]
    counts = iter(torch.stack(masks).sum(dim=1).tolist() if masks else [])
    return [0 if hit is None else next(counts) for hit in hits]


class LayerWeights(dict):
    """A layer's resident tensors plus its streamed ones (read through the streamer's waiting mapping)."""

    def __init__(self, resident: dict[str, torch.Tensor], streamed):
        super().__init__(resident)
        self.streamed = streamed

    def __missing__(self, name: str) -> torch.Tensor:
        return self.streamed[name]

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or name in self.streamed

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def done_with(self, name: str) -> None:
        """The FFN is done with a streamed tensor's part (streamed in parts); resident ones stay."""
        done = getattr(self.streamed, "done_with", None)
        if done is not None and not super().__contains__(name):
            done(name)

"""The module-based batching engine: `Engine(checkpoint, config).run(requests, on_finish) -> RunStats`.
It runs the config's decisions as given (never re-derived) and receives generation states: it never
detokenizes. Logits never exist for all rows at once.

How it works: docs/design.md, `runtime/engine/engine.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from planner.errors import UserError
from planner.modules import Module
from runtime.checkpoint.support import check_engine_attention
from runtime.engine.attention_registry import ATTENTION_BACKENDS
from runtime.engine.config import EngineConfig
from runtime.engine.emulated_device import EmulatedDevice
from runtime.engine.forward import LayerStack, PrefillSegment, StepBatch, activated_counts
from runtime.engine.instrumentation import MemoryPeaks, ModuleTimer
from runtime.engine.kv_cache import HostKVCache, SlotBlockTables, blocks_for, kv_capacity_tokens, kv_dtype_for
from runtime.engine.scheduler import Request, ScheduledStep, Scheduler
from runtime.engine.scheduler import Sequence as EngineSequence
from runtime.engine.staging import Staging
from runtime.engine.stats import Completion, RunStats
from runtime.engine.streamer import LayerStreamer
from runtime.engine.weights import WeightStore
from runtime.host_allocator import keep_temporaries_in_heap
from runtime.sampler import sample_states
from runtime.sampling import GenerationState

if TYPE_CHECKING:
    from planner.plans.plan import Plan
    from runtime.checkpoint import Checkpoint


class Engine:
    def __init__(self, checkpoint: Checkpoint | str | Path, config: EngineConfig):
        from runtime.checkpoint import CheckpointGeneration, open_checkpoint

        keep_temporaries_in_heap()
        if isinstance(checkpoint, (str, Path)):
            checkpoint = open_checkpoint(checkpoint)
        self.checkpoint = checkpoint
        self.spec = checkpoint.spec
        self.config = config
        check_engine_attention(self.spec, ATTENTION_BACKENDS)
        if config.decisions.compute_threads:
            torch.set_num_threads(config.decisions.compute_threads)
        self.device = torch.device(config.device)
        self.timer = ModuleTimer(self.device)
        self.store = WeightStore(checkpoint.weights, self.spec, config)
        self.streamer = None
        self.emulated = EmulatedDevice(self.spec, config) if config.emulated else None
        if self.store.packed is not None:
            # a step's copies serve its prefill and its decode tokens alike: booked "shared" at its share
            self.streamer = LayerStreamer(
                self.store.packed,
                self.device,
                config.decisions.stream_slots,
                on_copy_seconds=lambda s, b: self.timer.add(Module.WEIGHT_COPY, s, *b),
                booking=lambda: ("shared", self.timer.prefill_share),
                link=self.emulated.link if self.emulated else None,
            )
        if self.emulated is not None:  # before the KV cache is allocated: a refused plan allocates nothing
            self.emulated.check_memory(
                self.store.resident_bytes,
                self.streamer.buffer_bytes if self.streamer else 0,
                0 if config.module_batching else config.decisions.kv_budget_bytes,
            )
        self.kv = HostKVCache(
            self.spec,
            kv_dtype_for(self.store.dtype),
            config.decisions.kv_budget_bytes,
            config.decisions.kv_block_size,
            config.decisions.num_seqs,
        )
        self.max_len = min(config.max_model_len or self.spec.max_position_embeddings, self.kv.capacity_tokens)
        self.tables = SlotBlockTables(
            config.decisions.num_seqs, blocks_for(self.max_len, config.decisions.kv_block_size)
        )
        staging = Staging(self.device)
        backend = ATTENTION_BACKENDS[self.spec.attention](
            self.spec, self.kv, self.device, config.decisions.attention_threads, staging
        )
        self.stack = LayerStack(self.spec, self.store, self.streamer, backend, self.timer, config, staging)
        self.generation = CheckpointGeneration.of(checkpoint)  # states for requests that bring none

    # ----- public API -----
    def run(
        self, requests: Iterable[Request], on_finish: Callable[[Completion], None] | None = None
    ) -> RunStats:
        stats = RunStats(
            kv_cache_bytes=self.kv.nbytes,
            kv_capacity_tokens=self.kv.capacity_tokens,
            resident_weight_bytes=self.store.resident_bytes,
            streamed_weight_bytes=self.store.streamed_bytes,
            config=self.config.to_dict(),
        )
        stats.activated_experts_sum = [0] * self.spec.num_layers
        self.timer.reset()
        memory = MemoryPeaks(self.device)
        scheduler = Scheduler(
            self._sequences(requests),
            self.config.decisions.num_seqs,
            self.kv.allocator,
            self.tables,
            self.config.decisions.kv_block_size,
            self.config.decisions.prefill_chunk,
            self.max_len,
        )
        began = time.perf_counter()
        try:
            self._loop(scheduler, stats, on_finish, memory)
        finally:
            scheduler.abort()  # a failed run leaves no blocks held for the next one
        stats.wall_seconds = time.perf_counter() - began
        stats.num_preemptions = scheduler.num_preemptions
        stats.module_seconds = self.timer.totals()
        stats.peak_host_bytes = memory.host_peak_bytes
        stats.peak_device_bytes = self.emulated.device_bytes if self.emulated else memory.device_peak_bytes
        return stats

    def close(self) -> None:
        self.stack.close()
        if self.streamer is not None:
            self.streamer.close()
        self.store.close()  # unpins the arena once no copy reads it

    # ----- internals -----
    def _loop(
        self,
        scheduler: Scheduler,
        stats: RunStats,
        on_finish: Callable[[Completion], None] | None,
        memory: MemoryPeaks,
    ) -> None:
        with torch.inference_mode():
            while not scheduler.done:
                step = scheduler.schedule()
                if step.empty:
                    raise RuntimeError("scheduler produced an empty step with requests pending")
                sampled: dict[EngineSequence, int] = {}
                self._step(step, sampled, stats)
                for seq in scheduler.commit(step, sampled):
                    self._finish(seq, stats, on_finish)
                if self.streamer is not None:
                    self.streamer.collect_copy_seconds()
                memory.sample()
        if self.streamer is not None:
            self.streamer.collect_copy_seconds(wait=True)

    def _sequences(self, requests: Iterable[Request]) -> Iterator[EngineSequence]:
        for arrival, request in enumerate(requests):
            state = request.state or self.generation.state(request.prompt_token_ids, request.params)
            if not state.prompt_token_ids:
                raise UserError(
                    f"request {request.id!r} has an empty prompt", "give every request prompt tokens"
                )
            yield EngineSequence(request=request, state=state, arrival=arrival)

    def _step(self, step: ScheduledStep, sampled: dict, stats: RunStats) -> None:
        """One pass over the layers: the step's prefill chunks (rows 0..P) and decode tokens (rows P..P+D)."""
        began = time.perf_counter()
        before = self.timer.phase_seconds()
        token_ids, positions, segments, logit_rows, completing = [], [], [], [], []
        for chunk in step.prefill:
            row, count = len(token_ids), chunk.end - chunk.start
            token_ids.extend(chunk.seq.tokens[chunk.start : chunk.end])
            positions.extend(range(chunk.start, chunk.end))
            ring = self.kv.ring_rows(
                torch.tensor([chunk.seq.slot]), blocks_for(chunk.end, self.kv.block_size)
            )
            segments.append(
                PrefillSegment(
                    slice(row, row + count),
                    torch.tensor(chunk.seq.blocks, dtype=torch.int32),
                    chunk.start,
                    ring[0],
                )
            )
            if chunk.completes_prompt:
                logit_rows.append(row + count - 1)
                completing.append(chunk.seq)
        num_prefill, seqs = len(token_ids), step.decode
        cached = [seq.num_cached for seq in seqs]
        token_ids.extend(seq.state.token_ids[-1] for seq in seqs)
        positions.extend(cached)
        width = blocks_for(max(cached, default=0) + 1, self.config.decisions.kv_block_size)
        slots = torch.tensor([seq.slot for seq in seqs], dtype=torch.long)
        batch = StepBatch(
            token_ids=torch.tensor(token_ids, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            segments=segments,
            num_prefill=num_prefill,
            block_tables=self.tables.rows(slots, width=width),
            context_lens=torch.tensor(cached, dtype=torch.int32) + 1,
            ring_tables=self.kv.ring_rows(slots, width),
        )
        self.timer.prefill_share = num_prefill / len(token_ids)
        if self.emulated is not None:
            self.emulated.step_traffic(num_prefill, len(seqs))
        hidden, hits = self.stack.forward(batch)
        self._sample_rows(hidden, logit_rows, completing, "prefill", sampled)
        self._sample_rows(hidden, list(range(num_prefill, len(token_ids))), seqs, "decode", sampled)
        self.timer.flush()
        decode_before, ended = stats.decode_seconds, time.perf_counter()
        self._book_wall(ended - began, before, stats)
        if self.emulated is not None:  # the link's busy time, split between the phases as the wall time is
            decode_share = (stats.decode_seconds - decode_before) / max(ended - began, 1e-12)
            stats.link_busy_seconds += self.emulated.link.busy_between(began, ended) * decode_share
        stats.steps += 1
        if num_prefill:
            stats.prefill_tokens += num_prefill
            stats.prefill_forwards += 1
        if seqs:
            activated = activated_counts(hits)
            moe_layers = [count for layer, count in enumerate(activated) if self.spec.is_moe_layer(layer)]
            for layer, count in enumerate(activated):
                stats.activated_experts_sum[layer] += count
            stats.activated_experts_per_step.append(sum(moe_layers) / max(len(moe_layers), 1))
            stats.decode_tokens += len(seqs)
            stats.decode_steps += 1
            stats.decode_batch_sizes_sum += len(seqs)

    def _book_wall(self, wall: float, before: dict[str, float], stats: RunStats) -> None:
        """Split the step's wall time between the phases as their timed module seconds split."""
        after = self.timer.phase_seconds()
        prefill = after["prefill"] - before["prefill"]
        decode = after["decode"] - before["decode"]
        share = prefill / (prefill + decode) if prefill + decode > 0 else self.timer.prefill_share
        stats.prefill_seconds += wall * share
        stats.decode_seconds += wall * (1.0 - share)

    def _sample_rows(
        self, hidden: torch.Tensor, rows: list[int], seqs: Sequence[EngineSequence], phase: str, sampled: dict
    ) -> None:
        """lm_head and sampling one micro-batch of rows at a time: logits never exist for all rows at once."""
        step = self.config.effective_attn_batch
        for first in range(0, len(rows), step):
            chunk = rows[first : first + step]
            if chunk[-1] - chunk[0] == len(chunk) - 1:
                states = hidden[chunk[0] : chunk[-1] + 1]
            else:
                states = hidden[self.stack.staging.to_device(torch.tensor(chunk, dtype=torch.long))]
            chunk_seqs = seqs[first : first + step]
            logits = self.stack.logits(states, phase)
            with self.timer.host(Module.SAMPLING, phase):
                for seq, token in zip(chunk_seqs, sample_states(logits, [seq.state for seq in chunk_seqs])):
                    sampled[seq] = token

    def _finish(
        self, seq: EngineSequence, stats: RunStats, on_finish: Callable[[Completion], None] | None
    ) -> None:
        state = seq.state
        stats.num_requests += 1
        stats.prompt_tokens += len(state.prompt_token_ids)
        stats.generated_tokens += len(state.token_ids)
        if on_finish is not None:
            on_finish(
                Completion(
                    id=seq.request.id,
                    prompt_token_ids=state.prompt_token_ids,
                    token_ids=list(state.token_ids),
                    finish_reason=state.finish_reason,
                    num_preemptions=seq.num_preemptions,
                    state=state,
                )
            )


def request_token_limit(checkpoint: Checkpoint, config: EngineConfig) -> int:
    spec = checkpoint.spec
    dtype = kv_dtype_for(checkpoint.weights.dtype("embed"))
    kv_tokens = kv_capacity_tokens(
        spec,
        dtype,
        config.decisions.kv_budget_bytes,
        config.decisions.kv_block_size,
        config.decisions.num_seqs,
    )
    return min(config.max_model_len or spec.max_position_embeddings, kv_tokens)


class EngineBackend:
    """`runtime.llm` backend: drives the caller's GenerationStates through the engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.last_stats: RunStats | None = None

    @property
    def token_limit(self) -> int:
        return self.engine.max_len

    def run(self, states: Sequence[GenerationState]) -> None:
        requests = (
            Request(id=i, prompt_token_ids=state.prompt_token_ids, params=state.params, state=state)
            for i, state in enumerate(states)
        )
        self.last_stats = self.engine.run(requests)


def engine_config_for(plan: Plan | EngineConfig, overrides: Mapping[str, Any] | None = None) -> EngineConfig:
    """An EngineConfig as given, or one read from a Plan (its decisions, never re-derived)."""
    if isinstance(plan, EngineConfig):
        return plan.with_(**dict(overrides or {}))
    return EngineConfig.from_plan(plan, **dict(overrides or {}))

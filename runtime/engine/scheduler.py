"""Sequence-level scheduling: which sequences decode, which prompt chunks prefill, who holds KV blocks.

How it works: docs/design.md, `runtime/engine/scheduler.py`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from planner.errors import UserError
from runtime.engine.kv_cache import BlockAllocator, SlotBlockTables, blocks_for
from runtime.sampling import GenerationState, SamplingParams

WAITING, PREFILL, RUNNING, FINISHED = "waiting", "prefill", "running", "finished"


@dataclass
class Request:
    id: Any
    prompt_token_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    state: GenerationState | None = None  # given by callers that track progress themselves (runtime.LLM)


@dataclass(eq=False)
class Sequence:
    request: Request
    state: GenerationState
    arrival: int
    status: str = WAITING
    slot: int = -1
    blocks: list[int] = field(default_factory=list)
    num_cached: int = 0  # tokens whose K/V are in the cache
    prefill_target: int = 0  # tokens to prefill in the current admission
    num_preemptions: int = 0

    @property
    def tokens(self) -> list[int]:
        return self.state.prompt_token_ids + self.state.token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.state.prompt_token_ids) + len(self.state.token_ids)


@dataclass(frozen=True)
class PrefillChunk:
    seq: Sequence
    start: int
    end: int

    @property
    def completes_prompt(self) -> bool:
        return self.end == self.seq.prefill_target


@dataclass
class ScheduledStep:
    decode: list[Sequence]
    prefill: list[PrefillChunk]

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill


class Scheduler:
    def __init__(
        self,
        requests: Iterator[Sequence],
        num_slots: int,
        allocator: BlockAllocator,
        tables: SlotBlockTables,
        block_size: int,
        prefill_chunk: int,
        max_len: int,
    ):
        self._source = requests
        self._source_done = False
        self.waiting: deque[Sequence] = deque()
        self.in_flight: list[Sequence] = []
        self._free_slots = list(range(num_slots - 1, -1, -1))
        self.allocator = allocator
        self.tables = tables
        self.block_size = block_size
        self.prefill_chunk = prefill_chunk
        self.max_len = min(max_len, allocator.num_blocks * block_size)
        self.num_preemptions = 0

    # ----- queue -----
    def _peek_waiting(self) -> Sequence | None:
        if not self.waiting and not self._source_done:
            nxt = next(self._source, None)
            if nxt is None:
                self._source_done = True
            else:
                self.waiting.append(nxt)
        return self.waiting[0] if self.waiting else None

    @property
    def done(self) -> bool:
        return not self.in_flight and self._peek_waiting() is None

    # ----- planning -----
    def schedule(self) -> ScheduledStep:
        for seq in sorted((s for s in self.in_flight if s.status == RUNNING), key=lambda s: s.arrival):
            if seq.status == RUNNING:
                self._grow(seq, seq.num_cached + 1)
        decode = sorted((s for s in self.in_flight if s.status == RUNNING), key=lambda s: s.slot)
        return ScheduledStep(decode=decode, prefill=self._prefill_chunks())

    def _grow(self, seq: Sequence, num_tokens: int) -> None:
        need = blocks_for(num_tokens, self.block_size) - len(seq.blocks)
        while need > 0 and not self.allocator.can_allocate(need):
            victim = max(self.in_flight, key=lambda s: s.arrival)
            self._preempt(victim)
            if victim is seq:
                return
        if need > 0:
            self._add_blocks(seq, self.allocator.allocate(need))

    def _add_blocks(self, seq: Sequence, blocks: list[int]) -> None:
        self.tables.set(seq.slot, len(seq.blocks), blocks)
        seq.blocks.extend(blocks)

    def _preempt(self, seq: Sequence) -> None:
        self._release(seq)
        seq.status = WAITING
        seq.num_cached = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _release(self, seq: Sequence) -> None:
        self.allocator.free(seq.blocks)
        seq.blocks = []
        self.in_flight.remove(seq)
        self._free_slots.append(seq.slot)
        seq.slot = -1

    def _prefill_chunks(self) -> list[PrefillChunk]:
        budget = self.prefill_chunk
        chunks = []
        for seq in sorted((s for s in self.in_flight if s.status == PREFILL), key=lambda s: s.arrival):
            if budget == 0:
                break
            end = min(seq.prefill_target, seq.num_cached + budget)
            chunks.append(PrefillChunk(seq, seq.num_cached, end))
            budget -= end - seq.num_cached
        while budget > 0 and self._free_slots:
            seq = self._peek_waiting()
            if seq is None or not self._admit(seq):
                break
            end = min(seq.prefill_target, budget)
            chunks.append(PrefillChunk(seq, 0, end))
            budget -= end
        return chunks

    def _admit(self, seq: Sequence) -> bool:
        num_tokens = seq.num_tokens
        if num_tokens >= self.max_len:
            raise UserError(
                f"request {seq.request.id!r}: {num_tokens} prompt tokens leave no room to generate "
                f"within {self.max_len} tokens (the model's positions or the whole KV cache)",
                "shorten the prompt or raise the KV budget",
            )
        if not self.allocator.can_allocate(blocks_for(num_tokens + 1, self.block_size)):
            return False
        self.waiting.popleft()
        seq.slot = self._free_slots.pop()
        seq.status = PREFILL
        seq.prefill_target = num_tokens
        self.in_flight.append(seq)
        self._add_blocks(seq, self.allocator.allocate(blocks_for(num_tokens, self.block_size)))
        return True

    def abort(self) -> None:
        """Free every in-flight sequence's slot and blocks (after a failed run)."""
        for seq in list(self.in_flight):
            self._release(seq)

    # ----- results -----
    def commit(self, step: ScheduledStep, sampled: dict[Sequence, int]) -> list[Sequence]:
        """Record a forward's work; `sampled` maps each sequence that produced logits to its new token."""
        for seq in step.decode:
            seq.num_cached += 1
        for chunk in step.prefill:
            chunk.seq.num_cached = chunk.end
            if chunk.completes_prompt:
                chunk.seq.status = RUNNING
        finished = []
        for seq, token in sampled.items():
            done = seq.state.append(token)
            if not done and seq.num_tokens >= self.max_len:
                seq.state.finish_reason = "length"
                done = True
            if done:
                seq.status = FINISHED
                self._release(seq)
                finished.append(seq)
        return finished

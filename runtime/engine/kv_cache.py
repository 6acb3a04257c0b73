"""Host KV cache in the CPU attention kernel's paged layout, plus its block allocator.

How it works: docs/design.md, `runtime/engine/kv_cache.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planner.errors import UserError
from planner.perf.costs import ModelCosts, kv_ring_blocks
from planner.specs.spec import ModelSpec
from runtime.attention.cache import allocate_kv_cache, allocate_latent_cache


class BlockAllocator:
    """A free list of block ids. Every id is either free or owned by exactly one caller."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._used)

    def can_allocate(self, count: int) -> bool:
        return count <= len(self._free)

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise RuntimeError(f"asked for {count} KV blocks with {len(self._free)} free")
        blocks = [self._free.pop() for _ in range(count)]
        self._used.update(blocks)
        return blocks

    def free(self, blocks: list[int]) -> None:
        for block in blocks:
            if block not in self._used:
                raise RuntimeError(f"KV block {block} freed but not allocated")
            self._used.remove(block)
            self._free.append(block)


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


@dataclass(frozen=True)
class KVLayout:
    """Shape facts of one layer's cache for a spec (GQA pair or MLA latent)."""

    kind: str  # "gqa" | "mla"
    num_kv_heads: int
    head_dim: int  # GQA head dim; MLA: kv_lora_rank + qk_rope_head_dim
    dtype: torch.dtype

    @classmethod
    def for_spec(cls, spec: ModelSpec, dtype: torch.dtype) -> KVLayout:
        if spec.attention == "mla":
            return cls("mla", 1, spec.kv_lora_rank + spec.qk_rope_head_dim, dtype)
        return cls("gqa", spec.num_kv_heads, spec.head_dim, dtype)

    def bytes_per_token_layer(self) -> int:
        per_token = self.num_kv_heads * self.head_dim * torch.tensor([], dtype=self.dtype).element_size()
        return per_token * (2 if self.kind == "gqa" else 1)


def kv_dtype_for(weight_dtype: torch.dtype) -> torch.dtype:
    """KV is kept in the weights' dtype when the attention kernel reads it (bf16, fp32), else in fp32."""
    return weight_dtype if weight_dtype in (torch.bfloat16, torch.float32) else torch.float32


def ring_blocks(spec: ModelSpec, block_size: int) -> int:
    """Blocks a windowed layer keeps per sequence (`planner.perf.costs.kv_ring_blocks`, the planner's figure)."""
    return kv_ring_blocks(spec.sliding_window, block_size)


def _windowed_layers(spec: ModelSpec) -> int:
    return ModelCosts(spec).window_only_layers()


def _bytes_per_block(spec: ModelSpec, dtype: torch.dtype, block_size: int) -> int:
    paged_layers = spec.num_layers - _windowed_layers(spec)
    return KVLayout.for_spec(spec, dtype).bytes_per_token_layer() * block_size * paged_layers


def ring_bytes(spec: ModelSpec, dtype: torch.dtype, block_size: int, num_slots: int) -> int:
    per_block = KVLayout.for_spec(spec, dtype).bytes_per_token_layer() * block_size
    return per_block * ring_blocks(spec, block_size) * num_slots * _windowed_layers(spec)


def kv_capacity_tokens(
    spec: ModelSpec, dtype: torch.dtype, budget_bytes: int, block_size: int, num_slots: int = 1
) -> int:
    paged = budget_bytes - ring_bytes(spec, dtype, block_size, num_slots)
    return max(paged, 0) // _bytes_per_block(spec, dtype, block_size) * block_size


class HostKVCache:
    """All layers' paged KV tensors in host memory, sized once from `budget_bytes`."""

    def __init__(
        self, spec: ModelSpec, dtype: torch.dtype, budget_bytes: int, block_size: int, num_slots: int = 1
    ):
        self.layout = KVLayout.for_spec(spec, dtype)
        self.block_size = block_size
        self.num_layers = spec.num_layers
        self.windowed = [spec.keeps_window_only(layer) for layer in range(spec.num_layers)]
        self.window = spec.sliding_window
        self.ring = ring_blocks(spec, block_size) if any(self.windowed) else 0
        ring_total = ring_bytes(spec, dtype, block_size, num_slots) if self.ring else 0
        bytes_per_block = _bytes_per_block(spec, dtype, block_size)
        self.num_blocks = max(budget_bytes - ring_total, 0) // bytes_per_block
        if self.num_blocks < 2:
            raise UserError(
                f"KV budget {budget_bytes / 2**20:.1f} MiB holds {self.num_blocks} blocks of {block_size} tokens "
                f"({bytes_per_block / 2**20:.2f} MiB each over {spec.num_layers} layers)",
                "raise the KV budget (planner solve --kv-gb) or lower kv_block_size",
            )
        self.capacity_tokens = self.num_blocks * block_size
        self.allocator = BlockAllocator(self.num_blocks)
        heads, dim = self.layout.num_kv_heads, self.layout.head_dim
        if self.layout.kind == "gqa":
            pairs = [
                allocate_kv_cache(
                    num_slots * self.ring if windowed else self.num_blocks, heads, block_size, dim, dtype
                )
                for windowed in self.windowed
            ]
            self.k = [k for k, _ in pairs]
            self.v = [v for _, v in pairs]
            self.latent: list[torch.Tensor] = []
        else:
            self.latent = [
                allocate_latent_cache(self.num_blocks, block_size, dim, dtype) for _ in range(spec.num_layers)
            ]
            self.k, self.v = [], []
        self.nbytes = bytes_per_block * self.num_blocks + ring_total

    def ring_rows(self, slots: torch.Tensor, width: int) -> torch.Tensor:
        """int32 [B, width] block tables of the slots' rings (windowed layers)."""
        columns = torch.arange(width, dtype=torch.int32) % max(self.ring, 1)
        return slots.to(torch.int32)[:, None] * self.ring + columns

    def _slots(self, blocks: torch.Tensor, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(start, start + count)
        return blocks[positions // self.block_size].long(), positions % self.block_size

    def write_tokens(self, layer: int, blocks: torch.Tensor, start: int, *values: torch.Tensor) -> None:
        """Store positions [start, start+T) of one sequence: GQA (k, v) [T,Hkv,D]; MLA (latent,) [T,R+P].
        A windowed layer (`blocks`: the slot's ring row) stores only the last positions its ring holds."""
        if self.windowed[layer]:
            skip = max(values[0].shape[0] - self.ring * self.block_size, 0)
            start, values = start + skip, tuple(v[skip:] for v in values)
        self._store(layer, *self._slots(blocks, start, values[0].shape[0]), values)

    def write_prompts(self, layer: int, blocks: torch.Tensor, *values: torch.Tensor) -> None:
        """Store positions [0, T) of P sequences in one write: `blocks` [P, n] (each one's first blocks), values
        as `write_tokens` takes them with the P sequences' rows stacked (T = rows / P); not windowed layers."""
        count = values[0].shape[0] // blocks.shape[0]
        positions = torch.arange(count)
        block_ids = blocks[:, positions // self.block_size].long().reshape(-1)
        offsets = (positions % self.block_size).repeat(blocks.shape[0])
        self._store(layer, block_ids, offsets, values)

    def _store(self, layer: int, block_ids: torch.Tensor, offsets: torch.Tensor, values) -> None:
        if self.layout.kind == "gqa":
            k, v = values
            self.k[layer][block_ids, :, offsets] = k.to(self.layout.dtype)
            self.v[layer][block_ids, :, offsets] = v.to(self.layout.dtype)
        else:
            self.latent[layer][block_ids, offsets] = values[0].to(self.layout.dtype)

    def read_tokens(self, layer: int, blocks: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
        """Positions [0, count) of one sequence: GQA (k, v) [count,Hkv,D]; MLA (latent,) [count,R+P]; a
        windowed layer returns only the last `window` of them (all a later query can see)."""
        first = max(count - self.window, 0) if self.windowed[layer] else 0
        block_ids, offsets = self._slots(blocks, first, count - first)
        if self.layout.kind == "gqa":
            return self.k[layer][block_ids, :, offsets], self.v[layer][block_ids, :, offsets]
        return (self.latent[layer][block_ids, offsets],)


class SlotBlockTables:
    """One int32 row of block ids per in-flight slot; rows are updated in place as sequences grow."""

    def __init__(self, num_slots: int, max_blocks_per_seq: int):
        self.table = torch.zeros(num_slots, max_blocks_per_seq, dtype=torch.int32)
        self.max_blocks_per_seq = max_blocks_per_seq

    def set(self, slot: int, first_index: int, blocks: list[int]) -> None:
        if first_index + len(blocks) > self.max_blocks_per_seq:
            raise RuntimeError("sequence outgrew its block table row")
        if blocks:
            self.table[slot, first_index : first_index + len(blocks)] = torch.tensor(
                blocks, dtype=torch.int32
            )

    def rows(self, slots: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """The slots' rows [B, width]: only the first `width` block columns (default: all)."""
        return self.table[slots, : width or self.max_blocks_per_seq]

"""gpt-oss pieces beyond the end-to-end tests: the KV the planner budgets for windowed layers is the KV the
engine allocates (a ring of window + one block per slot, paged blocks for the full-attention layers), and
device prefill attention with sinks and a window equals the reference attention.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from planner.perf.costs import ModelCosts, kv_ring_blocks
from planner.perf.layout import ModelLayout
from planner.plans.workload import Workload
from planner.specs.spec import load_spec
from runtime.engine.kv_cache import HostKVCache, kv_capacity_tokens
from runtime.engine.prefill_attention import causal_attention
from runtime.model.attention import attention_core


def test_planner_kv_budget_is_what_the_engine_allocates():
    spec = load_spec("gpt-oss-20b").with_layers(4)
    block, slots = 16, 8
    workload = Workload.fixed(500, 200, 1000)
    layout = ModelLayout.build(spec, workload, block)
    budget = int(slots * layout.kv_bytes_per_slot + layout.kv_bytes_one_sequence)
    kv = HostKVCache(spec, torch.bfloat16, budget, block, slots)
    ring = kv_ring_blocks(spec.sliding_window, block)
    assert ring == 9 and ModelCosts(spec).window_only_layers() == 2
    assert [k.shape[0] for k in kv.k] == [slots * ring, kv.num_blocks, slots * ring, kv.num_blocks]
    per_block_layer = block * 2 * spec.num_kv_heads * spec.head_dim * 2
    assert budget - per_block_layer * 2 < kv.nbytes <= budget
    # every slot holds its whole sequence in the paged layers (p + g, plus the block it may leave half used)
    assert kv.capacity_tokens >= slots * (500 + 200 + block / 2)
    assert kv.capacity_tokens == kv_capacity_tokens(spec, torch.bfloat16, budget, block, slots)
    per_token_layer = 2 * spec.num_kv_heads * spec.head_dim * 2
    assert layout.kv_bytes_per_slot == ((700 + block / 2) * 2 + ring * block * 2) * per_token_layer
    full = ModelLayout.build(dataclasses.replace(spec, sliding_window=None), workload, block)
    assert full.kv_bytes_per_slot == (700 + block / 2) * 4 * per_token_layer


@pytest.mark.parametrize("window", [None, 5, 40])
def test_prefill_attention_with_sinks_matches_the_reference(window):
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(37, 8, 64, generator=gen)
    k, v = torch.randn(50, 2, 64, generator=gen), torch.randn(50, 2, 64, generator=gen)
    sinks = 2 * torch.randn(8, generator=gen)
    ours = causal_attention(q, k, v, 0.125, window, sinks)
    reference = attention_core(q, k, v, 0.125, window, sinks)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, attention_core(q, k, v, 0.125, window), atol=1e-3)

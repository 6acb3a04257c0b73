"""Prefill of many short prompts in one call: equal-length prompts from position 0 share one causal attention
call and one K/V write, with results bitwise equal to one call per prompt (greedy tokens stay the same)."""

from __future__ import annotations

import pytest
import torch

from planner.specs.spec import load_spec
from runtime.engine.forward import PrefillSegment, prompt_runs
from runtime.engine.kv_cache import HostKVCache
from runtime.engine.prefill_attention import causal_attention, prompts_causal_attention


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("heads", "kv_heads", "value_dim"), [(8, 2, 64), (4, 4, 64), (4, 1, 32)])
def test_one_call_for_many_prompts_equals_one_call_each(dtype, heads, kv_heads, value_dim):
    prompts, length, dim = 5, 16, 64
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(prompts * length, heads, dim, generator=gen).to(dtype)
    k = torch.randn(prompts * length, kv_heads, dim, generator=gen).to(dtype)
    v = torch.randn(prompts * length, kv_heads, value_dim, generator=gen).to(dtype)
    each = torch.cat(
        [
            causal_attention(
                q[i * length : (i + 1) * length],
                k[i * length : (i + 1) * length],
                v[i * length : (i + 1) * length],
                0.125,
            )
            for i in range(prompts)
        ]
    )
    together = prompts_causal_attention(q, k, v, 0.125, prompts)
    assert together.shape == each.shape == (prompts * length, heads, value_dim)
    assert torch.equal(together, each)


def test_writing_many_prompts_at_once_stores_what_one_write_each_stores():
    spec = load_spec("qwen3-mini")
    caches = [HostKVCache(spec, torch.bfloat16, 64 << 20, 16, 4) for _ in range(2)]
    for cache in caches:  # allocated uninitialised
        cache.k[1].zero_(), cache.v[1].zero_()
    length, blocks = 20, [torch.tensor([7, 3], dtype=torch.int32), torch.tensor([0, 9], dtype=torch.int32)]
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(2 * length, spec.num_kv_heads, spec.head_dim, generator=gen).bfloat16()
    v = torch.randn(2 * length, spec.num_kv_heads, spec.head_dim, generator=gen).bfloat16()
    for i, b in enumerate(blocks):
        caches[0].write_tokens(1, b, 0, k[i * length : (i + 1) * length], v[i * length : (i + 1) * length])
    caches[1].write_prompts(1, torch.stack(blocks), k, v)
    assert torch.equal(caches[0].k[1], caches[1].k[1]) and torch.equal(caches[0].v[1], caches[1].v[1])
    assert caches[1].k[1].abs().sum() > 0


def _segment(first_row: int, count: int, start: int) -> PrefillSegment:
    return PrefillSegment(slice(first_row, first_row + count), torch.zeros(2, dtype=torch.int32), start, None)


def test_consecutive_equal_prompts_from_position_zero_share_a_run():
    # two 16-token prompts, a continued prompt, a 16 and a 16 then a cut-off 8-token piece
    segments = [
        _segment(0, 16, 0),
        _segment(16, 16, 0),
        _segment(32, 16, 16),
        _segment(48, 16, 0),
        _segment(64, 16, 0),
        _segment(80, 8, 0),
    ]
    runs = prompt_runs(segments, windowed=False)
    assert [[s.rows.start for s in run] for run in runs] == [[0, 16], [32], [48, 64], [80]]
    assert all(len(run) == 1 for run in prompt_runs(segments, windowed=True))

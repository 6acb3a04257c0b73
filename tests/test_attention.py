"""CPU decode attention against a float64 reference, for every ISA path of the extension and the fallback.

The reference gathers each sequence's tokens one position at a time from a snapshot of the cache taken
before the call, with this step's K/V placed at position context_len-1, so it shares no paging code
with the kernels.
"""

from __future__ import annotations

import types

import pytest
import torch

from runtime.attention import (
    bench_case,
    decode_attention,
    extension,
    gqa_bytes_read,
    kernel,
    mla_decode_attention,
)

EXTENSION = extension.load_extension()
ISAS = list(EXTENSION.supported_isas()) if EXTENSION is not None else []
BACKENDS = [*ISAS, "reference"]
TOLERANCE = {torch.bfloat16: 1e-2, torch.float32: 1e-5}


def random_lengths(gen: torch.Generator, count: int, block_size: int, longest: int) -> list[int]:
    """Random lengths that always include 1 and one length that is not a multiple of block_size."""
    lens = torch.randint(1, longest + 1, (count,), generator=gen).tolist()
    lens[0] = 1
    lens[-1] = 2 * block_size + 3
    return lens


def paged_tables(gen: torch.Generator, lens: list[int], block_size: int, spare_blocks: int = 3):
    """Shuffled, non-contiguous block tables over a cache with a few blocks nobody owns."""
    per_seq = [-(-n // block_size) for n in lens]
    num_blocks = sum(per_seq) + spare_blocks
    order = torch.randperm(num_blocks, generator=gen)
    tables = torch.full((len(lens), max(per_seq) + 1), -1, dtype=torch.int32)
    start = 0
    for b, count in enumerate(per_seq):
        tables[b, :count] = order[start : start + count].to(torch.int32)
        start += count
    return tables, num_blocks


def gather_tokens(cache: torch.Tensor, table: torch.Tensor, length: int, block_axis: int) -> torch.Tensor:
    """Token rows 0..length-1 of one sequence, float64: [n, Hkv, D] (GQA) or [n, R+P] (MLA)."""
    block_size = cache.shape[block_axis]
    positions = torch.arange(length)
    blocks, offsets = table[positions // block_size].long(), positions % block_size
    rows = cache[blocks, :, offsets] if block_axis == 2 else cache[blocks, offsets]
    return rows.double()


def reference_gqa(
    q, k_new, v_new, k_before, v_before, tables, lens, scale, window=None, sinks=None
) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=torch.float64)
    num_kv_heads = k_before.shape[1]
    for b, n in enumerate(lens):
        keys = gather_tokens(k_before, tables[b], n, block_axis=2)  # [n, Hkv, D]
        values = gather_tokens(v_before, tables[b], n, block_axis=2)
        keys[n - 1] = k_new[b].to(k_before.dtype).double()
        values[n - 1] = v_new[b].to(v_before.dtype).double()
        start = max(0, n - window) if window else 0
        keys, values = keys[start:], values[start:]
        queries = q[b].double().view(num_kv_heads, -1, q.shape[-1])  # [Hkv, G, D]
        scores = torch.einsum("hgd,nhd->hgn", queries, keys) * scale
        if sinks is not None:  # one more logit per head, attending to nothing
            sink = sinks.double().view(num_kv_heads, -1, 1)
            probs = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
        else:
            probs = torch.softmax(scores, dim=-1)
        out[b] = torch.einsum("hgn,nhd->hgd", probs, values).reshape(q.shape[1:])
    return out


def reference_mla(q_latent, q_rope, latent_new, latent_before, tables, lens, scale) -> torch.Tensor:
    rank = q_latent.shape[-1]
    out = torch.empty(q_latent.shape, dtype=torch.float64)
    for b, n in enumerate(lens):
        latent = gather_tokens(latent_before, tables[b], n, block_axis=1)
        latent[n - 1] = latent_new[b].to(latent_before.dtype).double()
        queries = torch.cat([q_latent[b], q_rope[b]], dim=-1).double()
        probs = torch.softmax(queries @ latent.T * scale, dim=-1)
        out[b] = probs @ latent[:, :rank]
    return out


def max_row_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (out.double() - ref).norm(dim=-1) / ref.norm(dim=-1)
    return float(diff.max())


def gqa_inputs(seed, lens, hq, hkv, dim, dtype, block_size):
    gen = torch.Generator().manual_seed(seed)
    tables, num_blocks = paged_tables(gen, lens, block_size)
    k_cache = torch.randn(num_blocks, hkv, block_size, dim, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, hkv, block_size, dim, generator=gen).to(dtype)
    q = (2 * torch.randn(len(lens), hq, dim, generator=gen)).to(dtype)
    k_new = torch.randn(len(lens), hkv, dim, generator=gen).to(dtype)
    v_new = torch.randn(len(lens), hkv, dim, generator=gen).to(dtype)
    return q, k_new, v_new, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32)


def check_gqa(
    backend, threads, lens, hq, hkv, dim, dtype, block_size=16, window=None, seed=0, sinks=None, tables=None
):
    q, k_new, v_new, k_cache, v_cache, paged, lens_t = gqa_inputs(seed, lens, hq, hkv, dim, dtype, block_size)
    tables = paged if tables is None else tables
    k_before, v_before = k_cache.clone(), v_cache.clone()
    scale = dim**-0.5
    out = decode_attention(
        q,
        k_new,
        v_new,
        k_cache,
        v_cache,
        tables,
        lens_t,
        scale,
        sliding_window=window,
        num_threads=threads,
        backend=backend,
        sinks=sinks,
    )
    assert out.shape == q.shape and out.dtype == q.dtype
    ref = reference_gqa(q, k_new, v_new, k_before, v_before, tables, lens, scale, window, sinks)
    assert max_row_error(out, ref) <= TOLERANCE[dtype]
    return k_before, v_before, k_cache, v_cache, k_new, v_new, tables


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("dim", [64, 128, 256])
@pytest.mark.parametrize("heads", [(8, 2), (8, 1), (4, 4)], ids=["gqa", "mqa", "mha"])
def test_gqa_variants_match_float64(backend, dtype, dim, heads):
    gen = torch.Generator().manual_seed(dim + heads[1])
    lens = random_lengths(gen, 6, 16, 200)
    for threads in (1, 2):
        check_gqa(backend, threads, lens, *heads, dim, dtype, seed=dim)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_odd_block_size_and_sliding_window(backend, dtype):
    lens = [1, 6, 7, 8, 36, 37, 38, 150]
    for threads in (1, 2):
        check_gqa(backend, threads, lens, 6, 2, 64, dtype, block_size=7, window=37, seed=3)
        check_gqa(backend, threads, lens, 4, 1, 128, dtype, block_size=16, window=20, seed=4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_sinks_with_and_without_a_window(backend, dtype):
    """gpt-oss: a learned logit per query head joins its softmax (large sinks take most of the mass)."""
    sinks = 3 * torch.randn(8, generator=torch.Generator().manual_seed(9))
    lens = [1, 6, 7, 8, 36, 37, 38, 150]
    for threads in (1, 2):
        check_gqa(backend, threads, lens, 8, 2, 64, dtype, block_size=7, window=37, seed=3, sinks=sinks)
        check_gqa(backend, threads, lens, 8, 1, 128, dtype, seed=4, sinks=sinks)
    check_gqa(backend, 2, [1100, 3], 8, 2, 64, dtype, window=600, seed=6, sinks=sinks)  # split and merged
    check_gqa(backend, 2, [900, 2], 8, 1, 64, dtype, seed=7, sinks=sinks)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_window_reads_only_its_blocks_through_a_ring_table(backend, dtype):
    """The engine keeps a windowed layer's KV in a ring of R blocks per sequence (column j -> ring[j % R]);
    blocks before the window are never read: poisoned with NaN, they leave the output finite and exact."""
    block_size, window, lens = 16, 40, [300, 41, 5]
    ring = -(-window // block_size) + 1
    gen = torch.Generator().manual_seed(12)
    q, k_new, v_new, k_cache, v_cache, _, lens_t = gqa_inputs(12, lens, 8, 2, 64, dtype, block_size)
    num_blocks = len(lens) * ring + 1
    k_cache = torch.randn(num_blocks, 2, block_size, 64, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, 2, block_size, 64, generator=gen).to(dtype)
    k_cache[-1], v_cache[-1] = float("nan"), float("nan")
    columns = torch.arange(-(-max(lens) // block_size), dtype=torch.int32)
    tables = torch.arange(len(lens), dtype=torch.int32)[:, None] * ring + columns % ring
    for b, n in enumerate(lens):  # columns wholly before the window point at the poisoned block
        tables[b, : max(0, n - window) // block_size] = num_blocks - 1
    k_before, v_before = k_cache.clone(), v_cache.clone()
    out = decode_attention(
        q, k_new, v_new, k_cache, v_cache, tables, lens_t, 0.125, sliding_window=window, backend=backend
    )
    assert torch.isfinite(out).all()
    ref = reference_gqa(q, k_new, v_new, k_before, v_before, tables, lens, 0.125, window)
    assert max_row_error(out, ref) <= TOLERANCE[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_long_sequences_split_across_threads(backend, dtype):
    # Few (sequence, kv head) items and long contexts: with 2 threads the driver splits and merges them.
    check_gqa(backend, 2, [1100, 700, 3], 4, 1, 128, dtype, seed=5)
    check_gqa(backend, 2, [900], 8, 2, 64, dtype, window=600, seed=6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_append_writes_exactly_one_slot_per_sequence(backend, dtype):
    lens = [1, 17, 32, 40]
    k_before, v_before, k_after, v_after, k_new, v_new, tables = check_gqa(backend, 2, lens, 4, 2, 64, dtype)
    written = torch.zeros(k_after.shape[0], k_after.shape[2], dtype=torch.bool)  # [num_blocks, block_size]
    for b, n in enumerate(lens):
        block, offset = int(tables[b, (n - 1) // 16]), (n - 1) % 16
        written[block, offset] = True
        assert torch.equal(k_after[block, :, offset], k_new[b].to(dtype))
        assert torch.equal(v_after[block, :, offset], v_new[b].to(dtype))
    untouched = ~written[:, None, :].expand(-1, k_after.shape[1], -1)  # [num_blocks, Hkv, block_size]
    assert torch.equal(k_after[untouched], k_before[untouched])
    assert torch.equal(v_after[untouched], v_before[untouched])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("heads", [16, 3])
def test_mla_latent_matches_float64(backend, dtype, heads):
    gen = torch.Generator().manual_seed(heads)
    block_size = 16
    lens = [*random_lengths(gen, 4, block_size, 120), 700]
    tables, num_blocks = paged_tables(gen, lens, block_size)
    latent_cache = torch.randn(num_blocks, block_size, 576, generator=gen).to(dtype)
    q_latent = torch.randn(len(lens), heads, 512, generator=gen).to(dtype)
    q_rope = torch.randn(len(lens), heads, 64, generator=gen).to(dtype)
    latent_new = torch.randn(len(lens), 576, generator=gen).to(dtype)
    lens_t = torch.tensor(lens, dtype=torch.int32)
    scale = 192**-0.5
    before = latent_cache.clone()
    ref = reference_mla(q_latent, q_rope, latent_new, before, tables, lens, scale)
    for threads in (1, 2):
        latent_cache.copy_(before)
        out = mla_decode_attention(
            q_latent,
            q_rope,
            latent_new,
            latent_cache,
            tables,
            lens_t,
            scale,
            num_threads=threads,
            backend=backend,
        )
        assert out.shape == q_latent.shape
        assert max_row_error(out, ref) <= TOLERANCE[dtype]
    changed = (latent_cache != before).any(dim=-1)  # [num_blocks, block_size]
    expected = torch.zeros_like(changed)
    for b, n in enumerate(lens):
        expected[int(tables[b, (n - 1) // block_size]), (n - 1) % block_size] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "q_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"]
)
def test_query_dtype_differs_from_cache(backend, q_dtype):
    """q in any float dtype against a bf16 cache; the output comes back in q's dtype."""
    q, k_new, v_new, k_cache, v_cache, tables, lens = gqa_inputs(7, [1, 30, 70], 8, 2, 128, torch.float32, 16)
    k_cache, v_cache = k_cache.to(torch.bfloat16), v_cache.to(torch.bfloat16)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    q = q.to(q_dtype)
    out = decode_attention(
        q, k_new, v_new, k_cache, v_cache, tables, lens, 0.09, num_threads=2, backend=backend
    )
    assert out.dtype == q_dtype
    ref = reference_gqa(q, k_new, v_new, k_before, v_before, tables, lens.tolist(), 0.09)
    assert max_row_error(out, ref) <= TOLERANCE[torch.bfloat16]


def test_environment_variable_forces_the_fallback(monkeypatch):
    calls = []
    original = kernel.reference.decode_attention_reference

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(kernel.reference, "decode_attention_reference", counting)
    monkeypatch.setenv("MOELENS_ATTENTION_BACKEND", "reference")
    check_gqa(None, 1, [5, 20], 4, 2, 64, torch.float32)
    assert calls == [1]


def _unusable_extension(monkeypatch, load):
    monkeypatch.setattr(extension, "_import", load)
    monkeypatch.setattr(extension, "_module", None)
    monkeypatch.setattr(extension, "_failed", None)
    monkeypatch.delenv("MOELENS_ATTENTION_BACKEND", raising=False)


def test_missing_extension_warns_once_and_falls_back(monkeypatch):
    def missing():
        raise ModuleNotFoundError(f"No module named {extension.MODULE_NAME!r}", name=extension.MODULE_NAME)

    _unusable_extension(monkeypatch, missing)
    with pytest.warns(RuntimeWarning, match="is not built; using the slower torch fallback.*make install"):
        assert extension.load_extension() is None
    assert extension.load_extension() is None  # remembered, no second import attempt, no second warning
    assert kernel.active_backend() == (None, "")
    check_gqa(None, 1, [3, 33], 4, 2, 64, torch.bfloat16)


@pytest.mark.parametrize(
    "problem, message",
    [
        ("other torch", r"compiled for torch 1\.0\.0, but torch \S+ is running"),
        ("bad binary", r"cannot be loaded \(_C\.so: undefined symbol: _ZN3c10"),
    ],
)
def test_extension_for_another_torch_is_not_used(monkeypatch, problem, message):
    def load():
        if problem == "bad binary":
            raise ImportError("_C.so: undefined symbol: _ZN3c104impl")
        return types.SimpleNamespace(torch_version="1.0.0")

    _unusable_extension(monkeypatch, load)
    with pytest.warns(RuntimeWarning, match=message + ".*--no-build-isolation"):
        assert extension.load_extension() is None
    assert kernel.active_backend() == (None, "")


def test_extension_from_older_sources_is_not_used(monkeypatch):
    import torch as torch_module

    version = torch_module.__version__.split("+")[0]
    _unusable_extension(monkeypatch, lambda: types.SimpleNamespace(torch_version=version))
    with pytest.warns(RuntimeWarning, match=r"older sources \(interface 1, this code needs 2\)"):
        assert extension.load_extension() is None


def test_head_dim_without_kernel_uses_fallback():
    if EXTENSION is None:
        pytest.skip("extension not built")
    with pytest.warns(RuntimeWarning, match="head_dim 96"):
        check_gqa("auto", 2, [9, 40], 4, 2, 96, torch.float32)


@pytest.mark.skipif(EXTENSION is None, reason="extension not built")
def test_bad_tables_are_rejected_before_anything_is_written():
    q, k_new, v_new, k_cache, v_cache, tables, lens = gqa_inputs(0, [5, 20], 4, 2, 64, torch.float32, 16)
    before = k_cache.clone()
    bad = tables.clone()
    bad[1, 0] = k_cache.shape[0]
    with pytest.raises(RuntimeError, match="not a block of the cache"):
        decode_attention(q, k_new, v_new, k_cache, v_cache, bad, lens, 0.1)
    with pytest.raises(RuntimeError, match="outside"):
        decode_attention(
            q, k_new, v_new, k_cache, v_cache, tables, torch.tensor([0, 20], dtype=torch.int32), 0.1
        )
    assert torch.equal(k_cache, before)
    with pytest.raises(ValueError, match="context_lens"):
        decode_attention(q, k_new, v_new, k_cache, v_cache, tables, lens.long(), 0.1)


def test_bench_case_reports_bytes_of_kv_read():
    seconds, nbytes = bench_case(
        "gqa",
        batch=2,
        context=40,
        heads=4,
        kv_heads=2,
        head_dim=64,
        dtype=torch.bfloat16,
        threads=1,
        repeats=1,
    )
    assert seconds > 0
    assert nbytes == 2 * 40 * 2 * 64 * 2 * 2
    assert nbytes == gqa_bytes_read(torch.tensor([40, 40]), 2, 64, torch.bfloat16)
    _, mla_bytes = bench_case(
        "mla", batch=2, context=40, heads=4, head_dim=512, dtype=torch.float32, threads=1, repeats=1
    )
    assert mla_bytes == 2 * 40 * 576 * 4

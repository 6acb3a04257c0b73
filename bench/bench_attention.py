"""CPU decode attention benchmark (`make bench-attention`, `python -m bench.bench_attention`).

For each shape prints the kernel's GB/s of KV read, its speed relative to torch SDPA run in the same
process on the same data gathered into a dense layout (the gather not timed), and the fraction of the
host read bandwidth measured in the same run (torch.sum over a 1 GiB fp32 tensor, on 4 KiB pages and on
huge pages like the KV cache; the higher of the two is the reference). All figures are
medians of repeats after warm-up; threads default to all cores (torch.get_num_threads()).
`--cpu-time` runs everything on one thread and times the calling thread's CPU time instead of wall time:
per-core figures that other processes competing for the cores do not distort (their memory traffic still
does), for noisy shared machines.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from planner.units import GiB
from runtime.attention import active_backend, make_case
from runtime.attention.cache import empty_host
from runtime.attention.timing import DecodeCase, time_call


@dataclass(frozen=True)
class Shape:
    label: str
    layout: str
    context_lens: tuple[int, ...]
    heads: int
    kv_heads: int
    head_dim: int


def default_shapes(seed: int = 0) -> list[Shape]:
    rng = random.Random(seed)
    varlen = tuple(rng.randint(16, 4096) for _ in range(64))
    return [
        Shape("gqa bf16 B=64 ctx=1024 Hq=32 Hkv=8 D=128", "gqa", (1024,) * 64, 32, 8, 128),
        Shape("mla bf16 B=64 ctx=1024 H=16 512+64 (DeepSeek-V2-Lite)", "mla", (1024,) * 64, 16, 1, 512),
        Shape("gqa bf16 B=64 varlen 16..4096 Hq=32 Hkv=8 D=128", "gqa", varlen, 32, 8, 128),
    ]


def read_bandwidth_gbps(repeats: int, huge_pages: bool, clock=time.perf_counter) -> float:
    """Host read bandwidth: a plain sum over a 1 GiB fp32 tensor (optionally on huge pages, like the cache)."""
    data = empty_host((GiB // 4,), torch.float32, huge_pages).fill_(1.0)
    seconds = time_call(lambda: data.sum(), repeats=repeats, clock=clock)
    return GiB / seconds / 1e9


def dense_sdpa(case: DecodeCase):
    """A closure running torch SDPA on the case's KV gathered into dense per-sequence tensors.

    Each kv head's query group is passed as SDPA's query length ([B, Hkv, G, D] against [B, Hkv, n, D]),
    the fastest way found to call SDPA for GQA decode on CPU (about 7x enable_gqa=True here).
    """
    lens = case.context_lens.tolist()
    dense = []
    for b, n in enumerate(lens):
        ids = case.block_tables[b, : -(-n // case.block_size)].long()
        if case.layout == "gqa":
            k_cache, v_cache = case.caches
            heads, dim = k_cache.shape[1], k_cache.shape[3]
            k = k_cache[ids].permute(1, 0, 2, 3).reshape(heads, -1, dim)[:, :n].unsqueeze(0).contiguous()
            v = v_cache[ids].permute(1, 0, 2, 3).reshape(heads, -1, dim)[:, :n].unsqueeze(0).contiguous()
            q = case.q[b : b + 1].reshape(1, heads, -1, dim)  # [1, Hkv, G, D]
        else:
            (latent_cache,) = case.caches
            rank = case.q.shape[-1]
            latent = latent_cache[ids].reshape(-1, latent_cache.shape[-1])[:n]
            k = latent.reshape(1, 1, n, -1).contiguous()
            v = latent[:, :rank].reshape(1, 1, n, rank).contiguous()
            q = torch.cat([case.q[b : b + 1], case.q_rope[b : b + 1]], dim=-1).unsqueeze(1)  # [1, 1, H, R+P]
        dense.append((q, k, v))
    uniform = len(set(lens)) == 1
    if uniform:
        q = torch.cat([d[0] for d in dense])
        k = torch.cat([d[1] for d in dense])
        v = torch.cat([d[2] for d in dense])
        dense = [(q, k, v)]

    def run() -> list[torch.Tensor]:
        return [F.scaled_dot_product_attention(q, k, v, scale=case.scale) for q, k, v in dense]

    return run


def bench_shape(shape: Shape, threads: int, block_size: int, repeats: int, clock=time.perf_counter) -> dict:
    case = make_case(
        shape.layout,
        list(shape.context_lens),
        shape.heads,
        shape.kv_heads,
        shape.head_dim,
        torch.bfloat16,
        block_size,
    )
    ours = case.run(threads).float().reshape(-1)  # appends this step's rows before the dense gather
    sdpa = dense_sdpa(case)
    theirs = torch.cat([o.float().reshape(len(o), -1) for o in sdpa()]).reshape(-1)
    rel_diff = float((ours - theirs).norm() / theirs.norm())
    kernel_s = time_call(lambda: case.run(threads), repeats=repeats, clock=clock)
    sdpa_s = time_call(sdpa, repeats=repeats, clock=clock)
    return {"kernel_s": kernel_s, "sdpa_s": sdpa_s, "bytes": case.bytes_read, "rel_diff": rel_diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cpu-time", action="store_true", help="one thread, timed by its CPU time")
    args = parser.parse_args(argv)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    threads = 1 if args.cpu_time else args.threads
    torch.set_num_threads(threads)
    module, _ = active_backend()
    isa = module.supported_isas()[0] if module is not None else "torch fallback"
    plain_gbps = read_bandwidth_gbps(args.repeats, huge_pages=False, clock=clock)
    huge_gbps = read_bandwidth_gbps(args.repeats, huge_pages=True, clock=clock)
    read_gbps = max(plain_gbps, huge_gbps)
    timing = "CPU time of the calling thread" if args.cpu_time else "wall time"
    print(
        f"CPU decode attention, {threads} threads ({timing}), block size {args.block_size}, kernel path: {isa}"
    )
    print(
        f"read bandwidth (sum over 1 GiB): {plain_gbps:.1f} GB/s on 4 KiB pages, {huge_gbps:.1f} GB/s on "
        f"huge pages (as the KV cache); percentages below are of the higher, {read_gbps:.1f} GB/s"
    )
    for shape in default_shapes():
        r = bench_shape(shape, threads, args.block_size, args.repeats, clock)
        gbps = r["bytes"] / r["kernel_s"] / 1e9
        sdpa_gbps = r["bytes"] / r["sdpa_s"] / 1e9
        print(
            f"{shape.label}: {r['kernel_s'] * 1e3:.1f} ms, {gbps:.1f} GB/s KV read, "
            f"{r['sdpa_s'] / r['kernel_s']:.1f}x SDPA ({sdpa_gbps:.1f} GB/s), "
            f"{100 * gbps / read_gbps:.0f}% of read bandwidth (output vs SDPA rel diff {r['rel_diff']:.1e})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

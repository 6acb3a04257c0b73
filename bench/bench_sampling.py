"""Sampler cost per micro-batch, before and after, and the per-logit costs the profiler stores (this issue's
demo accuracy work): the engine's `runtime.sampler.sample` against the previous version (argmax of every row,
then the draw over every row of a batch with any sampled row), both under the engine's allocator setting.

    python -m bench.bench_sampling [--rows 64] [--vocab 32000] [--repeats 15]

Prints median ms per call for each mode, old / new, and checks that both pick the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from runtime.host_allocator import keep_temporaries_in_heap
from runtime.profiler.sampling_costs import MODES, sampling_ns, sampling_rows
from runtime.sampler import draw, filtered_probs, sample, uniforms


def previous_sample(logits: torch.Tensor, rows) -> torch.Tensor:
    """`sample` before this change (no penalties, stops or logprobs)."""
    logits = logits.float()
    tokens = torch.argmax(logits, dim=-1)
    if not bool(rows.greedy.all()):
        sampled = draw(filtered_probs(logits, rows), uniforms(rows.seeds, rows.counters))
        tokens = torch.where(rows.greedy, tokens, sampled)
    return tokens


def median_ms(fn, repeats: int) -> float:
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    keep_temporaries_in_heap()
    torch.manual_seed(0)
    device = torch.device("cpu")
    logits = torch.randn(args.rows, args.vocab).to(torch.bfloat16)
    print(f"{args.rows} rows x {args.vocab} logits, {torch.get_num_threads()} threads")
    for name, (temperature, top_p) in MODES.items():
        rows = sampling_rows(args.rows, args.vocab, temperature, top_p, device)
        assert torch.equal(previous_sample(logits, rows), sample(logits, rows)[0]), name
        old = median_ms(lambda rows=rows: previous_sample(logits, rows).tolist(), args.repeats)
        new = median_ms(lambda rows=rows: sample(logits, rows)[0].tolist(), args.repeats)
        print(f"{name:22s} old {old:7.2f} ms  new {new:7.2f} ms  new/old {new / old:.2f}")
    clock = lambda fn: median_ms(fn, args.repeats) / 1e3  # noqa: E731
    per_logit = sampling_ns(device, clock, args.rows, args.vocab, floor_ns=1e-3)
    print("profiler ns per logit: " + ", ".join(f"{k} {v:.3g}" for k, v in per_logit.items()))


if __name__ == "__main__":
    main()

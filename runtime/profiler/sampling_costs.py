"""Per-logit costs of `runtime.sampler.sample` in each mode the engine runs: greedy, temperature, top-p.

How it works: docs/design.md, `runtime/profiler/sampling_costs.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from runtime.sampler import SamplingRows, sample

MODES = {  # profile field: (temperature, top_p)
    "sampling": (0.0, 1.0),
    "sampling_temperature": (1.0, 1.0),
    "sampling_top_p": (1.0, 0.9),
}


def sampling_rows(
    rows: int, vocab: int, temperature: float, top_p: float, device: torch.device
) -> SamplingRows:
    """`rows` rows that all ask for the same mode (temperature 0: greedy), seeded, no penalties or stops."""

    def full(value, dtype=torch.float32) -> torch.Tensor:
        return torch.full((rows,), value, dtype=dtype, device=device)

    return SamplingRows(
        temperature=full(1.0 if temperature == 0 else temperature),
        greedy=full(temperature == 0, torch.bool),
        top_k=full(vocab, torch.int64),
        top_p=full(top_p),
        min_p=full(0.0),
        seeds=torch.arange(rows, dtype=torch.int64, device=device),
        counters=full(0, torch.int64),
        penalties=None,
        stop_mask=None,
        logprobs=[None] * rows,
    )


def sampling_ns(
    device: torch.device,
    clock: Callable[[Callable[[], object]], float],
    rows: int,
    vocab: int,
    floor_ns: float,
) -> dict[str, float]:
    """Marginal ns per logit of each mode between one row and `rows` rows of bf16 logits `vocab` wide."""

    def seconds(count: int, temperature: float, top_p: float) -> float:
        logits = torch.randn(count, vocab, device=device).to(torch.bfloat16)
        params = sampling_rows(count, vocab, temperature, top_p, device)
        return clock(lambda: sample(logits, params)[0].tolist())

    ns = {}
    for name, (temperature, top_p) in MODES.items():
        one, many = seconds(1, temperature, top_p), seconds(rows, temperature, top_p)
        ns[name] = max((many - one) / ((rows - 1) * vocab) * 1e9, floor_ns)
    return ns

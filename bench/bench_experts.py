"""Routed experts on this machine: the looped path against the grouped-GEMM path, side by side (issue 14).

    python -m bench.bench_experts [--repeats K] [--no-markdown]

For the expert shapes of `mixtral-mini` (8 experts of h 1024, I 3584, top-2) and `qwen3-mini` (32 of h 512,
I 256, top-4), bf16 stacks in memory ([E, 2I, h], [E, h, I]) and uniform random routing, times one layer's
routed experts (`runtime.engine.ffn.looped_experts` and `grouped_experts`, expert_batch 1024) at decode batch
sizes and one prefill chunk, with torch's threads, each call with another of 4 routings (row counts change
from call to call as from step to step); the two paths alternate, `--repeats` rounds, medians.
Writes `bench/results/experts.json` and the `experts` section of BENCHMARKS.md; the CPU default of
`planner.perf.expert_kernels` follows from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.common import RESULTS_DIR, machine_line, markdown_table, update_section
from planner.specs.spec import load_spec
from runtime.engine.expert_stacks import stack_names
from runtime.engine.ffn import grouped_experts, looped_experts

MODELS = ("mixtral-mini", "qwen3-mini")
TOKENS = (16, 64, 256, 512)
EXPERT_BATCH = 1024
ROUTINGS = 4


def layer_case(model: str, tokens: int, seed: int = 0):
    """Stacks, activations and ROUTINGS different routings (so GEMM row counts change from call to call, as
    they do from step to step)."""
    spec = load_spec(model)
    generator = torch.Generator().manual_seed(seed)
    e, h, inter = spec.num_experts, spec.hidden_size, spec.moe_intermediate_size
    gate_up, down = stack_names(0, e)
    w = {
        gate_up: (torch.randn(e, 2 * inter, h, generator=generator) / h**0.5).bfloat16(),
        down: (torch.randn(e, h, inter, generator=generator) / inter**0.5).bfloat16(),
    }
    x = torch.randn(tokens, h, generator=generator).bfloat16()
    routings = []
    for _ in range(ROUTINGS):
        probs = torch.softmax(torch.randn(tokens, e, generator=generator), -1)
        weights, ids = torch.topk(probs, spec.top_k, dim=-1)
        routings.append((ids, weights))
    return spec, x, routings, w


def seconds(path, x, routings, w, num_experts: int) -> float:
    """Mean seconds per call over every routing once, after one warm call."""
    path(x, *routings[0], w, num_experts, EXPERT_BATCH)
    began = time.perf_counter()
    for ids, weights in routings:
        path(x, ids, weights, w, num_experts, EXPERT_BATCH)
    return (time.perf_counter() - began) / len(routings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-markdown", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with torch.inference_mode():
        for model in MODELS:
            for tokens in TOKENS:
                spec, x, routings, w = layer_case(model, tokens)
                paths = {"looped": looped_experts, "grouped": grouped_experts}
                times = {name: [] for name in paths}
                for _ in range(args.repeats):
                    for name, path in paths.items():
                        times[name].append(seconds(path, x, routings, w, spec.num_experts))
                looped, grouped = (statistics.median(times[n]) for n in ("looped", "grouped"))
                rows.append(
                    {
                        "model": model,
                        "tokens": tokens,
                        "looped_ms": 1e3 * looped,
                        "grouped_ms": 1e3 * grouped,
                        "grouped_over_looped": grouped / looped,
                    }
                )
                print(
                    f"{model:13s} T={tokens:4d}: looped {1e3 * looped:8.2f} ms  grouped {1e3 * grouped:8.2f} ms  "
                    f"grouped/looped {grouped / looped:.2f}",
                    flush=True,
                )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "experts.json").write_text(
        json.dumps({"rows": rows, "threads": torch.get_num_threads()}, indent=1)
    )
    if not args.no_markdown:
        table = markdown_table(
            ["model", "tokens", "looped ms", "grouped ms", "grouped / looped"],
            [
                [
                    r["model"],
                    r["tokens"],
                    f"{r['looped_ms']:.2f}",
                    f"{r['grouped_ms']:.2f}",
                    f"{r['grouped_over_looped']:.2f}",
                ]
                for r in rows
            ],
        )
        update_section(
            "experts",
            "## Routed experts: looped against grouped GEMMs (`python -m bench.bench_experts`)\n\n"
            f"{machine_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads, bf16, one "
            f"layer's routed experts, uniform random routing, medians of {args.repeats} alternating "
            f"rounds.\n\n{table}\n",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

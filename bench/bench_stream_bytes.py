"""Streamed weight bytes per generated token under forced streaming on a refill workload, counted by the streamer.

    python -m bench.bench_stream_bytes [--before DIR] [--prompts 96] [--no-markdown]

The engine streams every routed expert (forced streaming on the CPU: host slots and a copy worker, the path the
tests use) for qwen3-mini (4 layers, 32 experts of top-4, random bf16 weights), 32 slots, prompts of 16..256 tokens
and generation lengths drawn from 8..64 (seeded), so finished sequences are refilled while others decode.
Bytes are summed from the streamer's `copy_log` (each entry one layer's packed bytes), which older code has
too, and checked against its `copied_bytes` counter where it exists. `--before DIR` runs the same job against
another checkout (e.g. a worktree of the commit before the merged pass) in a fresh process with
`PYTHONPATH=DIR`, side by side, and reports the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MODEL = "qwen3-mini"
NUM_SEQS, PREFILL_CHUNK = 32, 512


def workload(count: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    import random

    rng = random.Random(seed)
    return [
        ([rng.randrange(3, vocab) for _ in range(rng.randint(16, 256))], rng.randint(8, 64))
        for _ in range(count)
    ]


def worker(checkpoint: str, count: int) -> dict:
    """One run of the engine in this process; the code is whatever `runtime` this interpreter imports."""
    import torch

    from runtime.engine import Engine, EngineConfig, Request
    from runtime.sampling import SamplingParams

    torch.manual_seed(0)
    config = EngineConfig.build(
        num_seqs=NUM_SEQS,
        attn_batch=NUM_SEQS,
        kv_budget_bytes=512 << 20,
        prefill_chunk=PREFILL_CHUNK,
        force_streaming=True,
    )
    engine = Engine(checkpoint, config)
    jobs = workload(count, engine.spec.vocab_size)
    requests = [
        Request(i, prompt, SamplingParams(max_tokens=gen, ignore_eos=True))
        for i, (prompt, gen) in enumerate(jobs)
    ]
    stats = engine.run(requests)
    engine.close()
    streamer = engine.streamer
    copied = sum(engine.store.packed[layer].nbytes for layer, _ in streamer.copy_log)
    counter = getattr(streamer, "copied_bytes", None)
    if counter is not None and counter != copied:
        raise RuntimeError(f"streamer counted {counter} bytes, its copy log says {copied}")
    return {
        "streamed_bytes": copied,
        "generated_tokens": stats.generated_tokens,
        "copies": len(streamer.copy_log),
        "layer_passes": len(streamer.copy_log) / len(engine.store.packed),
        "decode_steps": stats.decode_steps,
        "prefill_forwards": stats.prefill_forwards,
        "bytes_per_token": copied / stats.generated_tokens,
    }


def run_in(code: Path, checkpoint: Path, count: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code), OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(checkpoint), "--prompts", str(count)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"worker in {code} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(results: dict[str, dict], command: str, machine: str) -> str:
    lines = [
        f"Command: `{command}` ({machine}). Forced streaming (CPU host slots, every routed expert streamed), "
        f"{MODEL}, {NUM_SEQS} slots, prompts 16..256 tokens, generation "
        "lengths drawn from 8..64, refill.",
        "",
        "| code | streamed GB | generated tokens | layer passes | decode steps | prefill forwards | "
        "MB streamed / token |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['streamed_bytes'] / 1e9:.2f} | {r['generated_tokens']} | "
            f"{r['layer_passes']:.0f} | {r['decode_steps']} | {r['prefill_forwards']} | "
            f"{r['bytes_per_token'] / 1e6:.2f} |"
        )
    if "before" in results and "after" in results:
        ratio = results["before"]["bytes_per_token"] / results["after"]["bytes_per_token"]
        lines += ["", f"Streamed bytes per generated token: {ratio:.2f}x lower with one layer pass per step."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_stream_bytes", description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare against")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--no-markdown", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.prompts)))
        return 0
    from bench.common import REPO, ensure_checkpoint, machine_line, update_section

    checkpoint = ensure_checkpoint(MODEL)
    results = {}
    if args.before:
        results["before"] = run_in(args.before.resolve(), checkpoint, args.prompts)
    results["after"] = run_in(REPO, checkpoint, args.prompts)
    command = "python -m bench.bench_stream_bytes " + " ".join(argv if argv is not None else sys.argv[1:])
    body = markdown(results, command.strip(), machine_line())
    print(body)
    if not args.no_markdown:
        update_section(
            "stream_bytes", "## Streamed weight bytes per generated token (merged pass)\n\n" + body
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

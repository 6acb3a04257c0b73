"""Quantized weights behind the emulated link: bytes streamed per step and tok/s, bf16 against fp8 and mxfp4.

    python -m bench.bench_quant_link [--gbps 1.0] [--repeats 3] [--no-markdown]

mixtral-mini truncated to 2 layers (random weights), written by `runtime make-checkpoint` as bf16, `--quant
fp8` (every linear layer but lm_head, 128x128 block scales) and `--quant mxfp4` (routed experts). The engine
streams every layer through the emulated link (`EngineConfig.link_gbps`, the copy worker paced to GBPS) with
16 slots over 32 prompts of 32 tokens generating 32 each; the quantized weights cross quantized and are
dequantized in the expert path. Bytes per step are the streamer's `copied_bytes` over the engine's steps.
The formats run interleaved, `--repeats` times; the table gives medians. Checkpoints are written before the
timed runs (`--prepare` writes them alone, outside a cpu-exclusive hold).
"""

from __future__ import annotations

import argparse
import statistics
import sys

MODEL, LAYERS, FORMATS = "mixtral-mini", 2, ("bf16", "fp8", "mxfp4")
NUM_SEQS, PROMPTS, PROMPT_LEN, GEN_LEN = 16, 32, 32, 32


def checkpoints() -> dict[str, str]:
    from bench.common import bench_dir, ensure_checkpoint
    from planner.specs.spec import load_spec
    from runtime.checkpoint.writer import write_random_checkpoint

    paths = {"bf16": str(ensure_checkpoint(MODEL, LAYERS))}
    spec = load_spec(MODEL).with_layers(LAYERS)
    for quant in FORMATS[1:]:
        directory = bench_dir() / f"{spec.name}-{quant}"
        if not (directory / "model.safetensors").is_file():
            write_random_checkpoint(spec, directory, quant=quant)
        paths[quant] = str(directory)
    return paths


def run_once(checkpoint: str, gbps: float) -> dict:
    import torch

    from runtime.engine import Engine, EngineConfig, Request
    from runtime.sampling import SamplingParams

    torch.manual_seed(0)
    config = EngineConfig(
        num_seqs=NUM_SEQS,
        attn_batch=NUM_SEQS,
        kv_budget_bytes=256 << 20,
        prefill_chunk=256,
        force_streaming=True,
        link_gbps=gbps,
    )
    engine = Engine(checkpoint, config)
    vocab = engine.spec.vocab_size
    requests = [
        Request(
            i,
            [(7 * i + 13 * j) % (vocab - 3) + 3 for j in range(PROMPT_LEN)],
            SamplingParams(max_tokens=GEN_LEN, ignore_eos=True),
        )
        for i in range(PROMPTS)
    ]
    try:
        stats = engine.run(requests)
        copied = engine.streamer.copied_bytes
    finally:
        engine.close()
    return {
        "bytes_per_step": copied / stats.steps,
        "tok_s": stats.generated_tokens / stats.wall_seconds,
        "decode_tok_s": stats.decode_tokens / stats.decode_seconds,
        "expert_s_per_step": stats.module_seconds["decode"].get("experts", 0.0) / max(stats.decode_steps, 1),
        "link_busy_s": stats.link_busy_seconds,
        "wall_s": stats.wall_seconds,
    }


def markdown(medians: dict[str, dict], command: str, machine: str, gbps: float, repeats: int) -> str:
    base = medians["bf16"]
    lines = [
        f"Command: `{command}` ({machine}). {MODEL} {LAYERS} layers, every layer streamed through the emulated "
        f"link at {gbps:g} GB/s, {NUM_SEQS} slots, {PROMPTS} prompts x {PROMPT_LEN} tokens, {GEN_LEN} generated "
        f"each; medians of {repeats} interleaved runs.",
        "",
        "| weights | MB streamed / step | vs bf16 | tok/s (end to end) | vs bf16 | decode tok/s | "
        "experts s / decode step |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in medians.items():
        lines.append(
            f"| {name} | {r['bytes_per_step'] / 1e6:.1f} | {r['bytes_per_step'] / base['bytes_per_step']:.2f}x | "
            f"{r['tok_s']:.1f} | {r['tok_s'] / base['tok_s']:.2f}x | {r['decode_tok_s']:.1f} | "
            f"{r['expert_s_per_step']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_quant_link", description=__doc__.splitlines()[0])
    parser.add_argument("--gbps", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prepare", action="store_true", help="only write the checkpoints")
    parser.add_argument("--no-markdown", action="store_true")
    args = parser.parse_args(argv)
    from bench.common import machine_line, update_section

    paths = checkpoints()
    if args.prepare:
        return 0
    machine = machine_line()
    runs: dict[str, list[dict]] = {name: [] for name in FORMATS}
    for _ in range(args.repeats):
        for name in FORMATS:
            runs[name].append(run_once(paths[name], args.gbps))
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    command = "python -m bench.bench_quant_link " + " ".join(argv if argv is not None else sys.argv[1:])
    body = markdown(medians, command.strip(), machine, args.gbps, args.repeats)
    print(body)
    if not args.no_markdown:
        update_section(
            "quant_link", "## Quantized weights behind the emulated link (fp8, mxfp4 vs bf16)\n\n" + body
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

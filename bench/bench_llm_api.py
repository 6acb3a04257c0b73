"""`LLM(model=...)` without a plan: one `generate` of 32 prompts against 32 `generate` calls of one prompt each.

Both use the same `LLM` (planned for this machine by `runtime.auto_plan`, the batched engine), greedy,
`ignore_eos`, the same prompts and generation length; the ratio of their generated tokens per second is what
batching the prompts of one call buys. The unbatched reference forward (`LLM(..., reference=True)`, what
`LLM(path)` ran before) is timed on the same 32 prompts for context. Run under `flock /work/bench.lock` on a
shared machine; writes bench/results/llm_api.json and the `llm_api` section of BENCHMARKS.md.

    python -m bench.bench_llm_api [--model mixtral-mini] [--layers 2] [--prompts 32] [--prompt-len 32]
                                  [--gen-len 32] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time

from bench.common import (
    RESULTS_DIR,
    ensure_checkpoint,
    fixed_prompts,
    machine_line,
    markdown_table,
    update_section,
)


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mixtral-mini")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--gen-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    from runtime import LLM, SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = ensure_checkpoint(args.model, args.layers)
    llm = LLM(model=str(checkpoint))
    prompts = [{"prompt_token_ids": p} for p in fixed_prompts(llm.tokenizer, args.prompts, args.prompt_len)]
    params = SamplingParams(temperature=0, max_tokens=args.gen_len, ignore_eos=True)
    llm.generate(prompts[:2], params)  # warm-up
    tokens = args.prompts * args.gen_len
    batched = timed(lambda: llm.generate(prompts, params))
    one_by_one = timed(lambda: [llm.generate([p], params) for p in prompts])
    reference = LLM(model=str(checkpoint), reference=True)
    unbatched = timed(lambda: reference.generate(prompts, params))
    result = {
        "model": f"{args.model} ({args.layers} layers, random bf16)",
        "prompts": args.prompts,
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "threads": torch.get_num_threads(),
        "num_seqs": llm.plan.decisions.num_seqs,
        "batched_s": batched,
        "one_by_one_s": one_by_one,
        "reference_s": unbatched,
        "speedup": one_by_one / batched,
        "machine": machine_line(),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "llm_api.json").write_text(json.dumps(result, indent=1))
    rows = [
        [name, f"{seconds:.2f}", f"{tokens / seconds:.1f}"]
        for name, seconds in (
            ("LLM(model=...).generate(32 prompts)", batched),
            ("32 x LLM(model=...).generate([1 prompt])", one_by_one),
            ("LLM(model=..., reference=True).generate(32 prompts)", unbatched),
        )
    ]
    update_section(
        "llm_api",
        "\n".join(
            [
                "## The vLLM-shaped API: one call of 32 prompts against 32 calls of one (`bench/bench_llm_api.py`)",
                "",
                f"`python -m bench.bench_llm_api` ({result['model']}, {args.prompts} prompts of {args.prompt_len} tokens, "
                f"{args.gen_len} generated each, greedy, ignore_eos; `LLM(model=...)` with no plan: planned for this "
                f"machine, {result['num_seqs']} sequences in flight; {result['threads']} torch threads). "
                f"{result['machine']}",
                "",
                markdown_table(["run", "seconds", "generated tok/s"], rows),
                "",
                f"Batched over one-by-one: **{result['speedup']:.1f}x** (target: at least 3x).",
            ]
        ),
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

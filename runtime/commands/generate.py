"""`runtime generate`: generate text from a checkpoint with the Python API (`runtime.LLM`).

Flags: --checkpoint DIR (or a Hugging Face id in the local cache), --prompt TEXT (repeatable; one completion
each), --max-tokens N, --temperature T (0 = greedy), --top-p P, --top-k K, --seed S, --stop STRING (repeatable),
--ignore-eos, --json, --profile NAME (plan for that profile instead of this machine's), --reference (the
unbatched reference forward instead of the planned engine).
Prints each completion's text (prompt then completion) or, with --json, one JSON object per prompt with
`prompt`, `text`, `token_ids` and `finish_reason`.
A --max-tokens beyond what one request can hold is capped, with a warning (the rule of `runtime.llm`).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a checkpoint",
        description="Generate text from a HF checkpoint directory.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json, safetensors)")
    parser.add_argument(
        "--prompt", action="append", required=True, help="prompt text; repeat for a batch of prompts"
    )
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens to generate per prompt")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument(
        "--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)"
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument("--stop", action="append", default=None, help="stop string; repeatable")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence tokens")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    parser.add_argument("--profile", help="hardware profile to plan for (default: this machine's)")
    parser.add_argument("--reference", action="store_true", help="run the unbatched reference forward")
    return parser


def run(args: argparse.Namespace) -> int:
    from runtime import LLM, SamplingParams
    from runtime.llm import CappedMaxTokensWarning

    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        ignore_eos=args.ignore_eos,
        seed=args.seed,
        stop=args.stop,
    )
    llm = (
        LLM(args.checkpoint, reference=True) if args.reference else LLM(args.checkpoint, profile=args.profile)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CappedMaxTokensWarning)
        outputs = llm.generate(args.prompt, params)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    for output in outputs:
        completion = output.outputs[0]
        if args.json:
            print(
                json.dumps(
                    {
                        "prompt": output.prompt,
                        "text": completion.text,
                        "token_ids": completion.token_ids,
                        "finish_reason": completion.finish_reason,
                    }
                )
            )
        else:
            print(f"{output.prompt}{completion.text}")
    return 0

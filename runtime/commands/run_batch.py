"""`runtime run-batch -i IN.jsonl -o OUT.jsonl --model M`: plan for this machine and run, in one command.

vLLM's `run-batch` flags: `-i/--input-file`, `-o/--output-file`, `--model` (a checkpoint directory or a Hugging
Face id in the local cache), plus `--kv-gb`, `--profile`, `--max-num-seqs`, `--generation-config`. The plan is
solved for the input's own lengths (`planner.plans.workload.Workload.from_file`, the same parser as the job) and kept
beside the output as `OUT.plan.yaml`; a rerun reuses it, so the job resumes like `runtime execute` (which
runs it, with `--on-error record`). Every input line gets exactly one output line: an OpenAI Batch output
record with a chat.completion / text_completion body, or an error record for a line that cannot run
(`runtime.jobio.records`). Then the summary (what was written, then predicted against achieved).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MAX_TOKENS = 16  # vLLM's SamplingParams default


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run-batch",
        help="plan and run an OpenAI Batch (or native) prompts file in one command (resumable)",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    parser.add_argument(
        "-i", "--input-file", required=True, help="prompts JSONL (OpenAI Batch API or native lines)"
    )
    parser.add_argument("-o", "--output-file", required=True, help="answers JSONL, one line per input line")
    parser.add_argument(
        "--model", required=True, help="checkpoint directory or Hugging Face id (local cache)"
    )
    parser.add_argument(
        "--kv-gb", type=float, help="host memory for the KV cache, GiB (default: sized to the job)"
    )
    parser.add_argument(
        "--profile", help="hardware profile name or YAML (default: this machine's measured one)"
    )
    parser.add_argument("--max-num-seqs", type=int, help="most sequences in flight (default: the plan's)")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="max_tokens of lines without one (default: generation_config.json's, else 16)",
    )
    parser.add_argument(
        "--generation-config",
        default="auto",
        help='sampling defaults: "auto" (the checkpoint\'s generation_config.json), "vllm" (none) '
        "or a directory holding one",
    )
    parser.add_argument("--report", help="write the report JSON here as well as printing it")
    parser.add_argument(
        "--overwrite", action="store_true", help="start again: replace the output and the plan"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no printed report")
    return parser


def plan_path_for(output: Path) -> Path:
    return output.with_name(output.name + ".plan.yaml")


def run(args: argparse.Namespace) -> int:
    from runtime.checkpoint import open_checkpoint
    from runtime.checkpoint.generation import read_generation_config
    from runtime.commands.execute import ExecuteOptions, execute_job
    from runtime.jobio import check_output_writable

    output, input_file = Path(args.output_file), Path(args.input_file)
    check_output_writable(output, (input_file,))
    plan_path = plan_path_for(output)
    check_output_writable(plan_path)
    checkpoint = open_checkpoint(args.model)
    say = (lambda *_: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    defaults = read_generation_config(args.generation_config, Path(checkpoint.dir))
    default_max_tokens = args.max_tokens or defaults.get("max_tokens") or DEFAULT_MAX_TOKENS
    if plan_path.is_file() and not args.overwrite:
        say(f"reusing the plan {plan_path} (pass --overwrite to plan and run again)")
    else:
        _solve(checkpoint, args, input_file, default_max_tokens).save(plan_path)
        say(f"planned for this job: {plan_path}")
    execute_job(
        ExecuteOptions(
            plan=plan_path,
            input=input_file,
            output=output,
            checkpoint=Path(checkpoint.dir),
            report=Path(args.report) if args.report else None,
            on_error="record",
            max_tokens=default_max_tokens,
            overwrite=args.overwrite,
            quiet=args.quiet,
            generation_config=args.generation_config,
        )
    )
    return 0


def _solve(checkpoint, args: argparse.Namespace, input_file: Path, default_max_tokens: int):
    from planner.plans.workload import Workload
    from runtime.auto_plan import auto_plan

    spec = checkpoint.spec
    tokenizer = Path(checkpoint.dir) if (Path(checkpoint.dir) / "tokenizer.json").is_file() else None
    workload = Workload.from_file(
        input_file, default_max_tokens, tokenizer, on_error="skip", max_context=spec.max_position_embeddings
    )
    return auto_plan(spec, str(checkpoint.dir), workload, args.kv_gb, args.profile, args.max_num_seqs)

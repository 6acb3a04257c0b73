"""`runtime execute plan.yaml --input prompts.jsonl --output out.jsonl`: run a plan over a prompts file.

How it works: docs/design.md, `runtime/commands/execute.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from planner.errors import UserError
from runtime.commands.execute_options import ExecuteOptions

if TYPE_CHECKING:
    from planner.hardware.profile import HardwareProfile
    from planner.plans.plan import Plan
    from planner.specs.model_spec import ModelSpec
    from runtime.checkpoint import Checkpoint
    from runtime.engine.stats import RunStats
    from runtime.jobio import ParseContext
    from runtime.jobio.input_file import InputScan
    from runtime.jobio.requests import JobRequest
    from runtime.jobio.writer import JobOutput
    from runtime.report.metrics import ContextTally


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "execute",
        help="run a plan over a prompts JSONL file (resumable), report predicted vs achieved",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    parser.add_argument("plan", help="plan YAML written by `planner solve --out`")
    parser.add_argument(
        "--checkpoint", help="checkpoint directory (default: the plan's model, if a directory)"
    )
    parser.add_argument(
        "--input",
        required=True,
        help='prompts JSONL: {"id", "prompt" | "prompt_token_ids" | "messages", max_tokens, '
        "temperature, top_p, top_k, seed, stop, ignore_eos} or OpenAI Batch API lines",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="answers JSONL (appended as sequences finish; resumable); - for standard output",
    )
    parser.add_argument(
        "--report", help="write the report JSON here as well as printing it (- for standard output)"
    )
    parser.add_argument(
        "--on-error",
        choices=("fail", "skip", "record"),
        default="fail",
        help="bad input lines: fail before any work (default), skip them (listed in the report) "
        "or answer each with an error record",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="max_tokens of lines without one (default: the plan's longest generation)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="run a plan solved for another model, machine profile or more free memory",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output instead of resuming"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no printed report")
    parser.add_argument(
        "--workers",
        type=int,
        help="run on a Ray cluster: N engine actors, each planned for its machine (runtime.cluster)",
    )
    parser.add_argument(
        "--ray-address",
        default="local",
        help="with --workers: local (start Ray on this machine, default), auto, or HOST:PORT",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    execute_job(
        ExecuteOptions(
            plan=Path(args.plan),
            input=Path(args.input),
            output=Path(args.output),
            checkpoint=Path(args.checkpoint) if args.checkpoint else None,
            report=Path(args.report) if args.report is not None else None,
            on_error=args.on_error,
            max_tokens=args.max_tokens,
            force=args.force,
            overwrite=args.overwrite,
            quiet=args.quiet,
            workers=args.workers,
            ray_address=args.ray_address,
        )
    )
    return 0


def _check_outputs(options: ExecuteOptions) -> None:
    from planner.outputs import check_output_path, is_stdout
    from runtime.jobio import check_output_writable

    check_output_writable(options.output, (options.input, options.plan))
    if options.report is None:
        return
    check_output_path(options.report, "--report", (options.input, options.plan, options.output))
    if is_stdout(options.report) and is_stdout(options.output):
        raise UserError(
            "--output - and --report - would both write to standard output", "send one of them to a file"
        )
    if not is_stdout(options.report) and Path(options.report).resolve() == Path(options.output).resolve():
        raise UserError(f"--report {options.report} is the --output file", "pass --report another path")


def _token_limit(checkpoint: Checkpoint, plan: Plan) -> int:
    from runtime.engine import EngineConfig
    from runtime.engine.engine import request_token_limit

    return request_token_limit(checkpoint, EngineConfig.from_plan(plan))


def execute_job(options: ExecuteOptions) -> dict | None:
    from planner.outputs import is_stdout
    from planner.plans.plan import Plan
    from runtime.checkpoint import open_checkpoint
    from runtime.checkpoint.generation import read_generation_config
    from runtime.commands.execute_checks import (
        check_plan_fits_memory,
        check_plan_machine,
        check_plan_model,
        checkpoint_dir_of,
    )
    from runtime.jobio import ParseContext, open_job

    _check_outputs(options)
    if options.workers is not None:
        from runtime.cluster.job import execute_on_cluster

        return execute_on_cluster(options)
    plan = Plan.load(options.plan)
    if options.max_tokens is not None and options.max_tokens < 1:
        raise UserError(f"--max-tokens {options.max_tokens} must be positive", "pass --max-tokens >= 1")
    checkpoint = open_checkpoint(checkpoint_dir_of(plan, options.checkpoint))
    spec = checkpoint.spec
    report_spec = check_plan_model(plan, spec, options.force)
    profile = check_plan_machine(plan, options.force)
    check_plan_fits_memory(plan, options.force)
    default_max_tokens = options.max_tokens or max(1, round(plan.workload.gen_len_max))
    context = ParseContext(
        checkpoint.tokenizer,
        spec.max_position_embeddings,
        spec.vocab_size,
        default_max_tokens,
        read_generation_config(options.generation_config, Path(checkpoint.dir)),
        kv_capacity_tokens=_token_limit(checkpoint, plan),
    )
    with open_job(options, context, spec.name, warn_capped=True) as (job, scan):
        if job is None:
            return None
        _spot_check(plan, profile)
        try:
            stats, tally = _run_engine(checkpoint, plan, options, context, scan, job)
        except KeyboardInterrupt:
            if not is_stdout(options.output):
                print(
                    f"stopped: {job.num_done} of {job.identity.num_requests} requests are answered in "
                    f"{options.output}; rerun the same command to resume",
                    file=sys.stderr,
                )
            raise
    return _finish_report(stats, plan, profile, report_spec, tally, scan, job.resumed_count, options)


def _spot_check(plan: Plan, profile: HardwareProfile) -> None:
    """Warn, with the figures, when this machine's memory or GEMM rate is off the profile's by more than 20%."""
    from runtime.device import default_device
    from runtime.profiler.spot_check import measure_rates, spot_check_warnings

    name = (
        "the plan's profile"
        if profile.fingerprint() == plan.profile.fingerprint
        else f"profile {profile.name}"
    )
    for warning in spot_check_warnings(measure_rates(default_device()), profile, name):
        print(f"warning: {warning}", file=sys.stderr)


def _run_engine(
    checkpoint: Checkpoint,
    plan: Plan,
    options: ExecuteOptions,
    context: ParseContext,
    scan: InputScan,
    job: JobOutput,
) -> tuple[RunStats, ContextTally]:
    import torch

    from runtime.checkpoint import CheckpointGeneration
    from runtime.engine import Engine, EngineConfig
    from runtime.engine import Request as EngineRequest
    from runtime.jobio import iter_requests
    from runtime.progress import JobProgress
    from runtime.report.job_run import run_tallied
    from runtime.sampling import GenerationState

    generation = CheckpointGeneration.of(checkpoint)
    pending: dict[
        str, tuple[JobRequest, list[GenerationState]]
    ] = {}  # pulled by the engine, not answered yet
    unanswered: dict[str, int] = {}  # completions of a request still running

    def requests():
        for request in iter_requests(options.input, context, scan, skip_keys=job.done_keys):
            states = [
                generation.state(request.prompt_token_ids, request.sampling, seed=request.sampling.seed + i)
                for i in range(request.sampling.n)
            ]
            pending[request.key] = (request, states)
            for i, state in enumerate(states):  # n completions: n sequences, one answer
                yield EngineRequest(
                    id=(request.key, i),
                    prompt_token_ids=request.prompt_token_ids,
                    params=request.sampling,
                    state=state,
                )

    remaining = scan.num_requests - (job.num_done - job.num_errors)
    progress = JobProgress(
        job.identity.num_requests,
        plan.predicted.generated_tok_s,
        already_done=job.num_done,
        token_budget=scan.requested_output_tokens * remaining // max(scan.num_requests, 1),
        in_flight_tokens=lambda: sum(
            len(s.token_ids) for _, states in list(pending.values()) for s in states if not s.finished
        ),
        enabled=False if options.quiet else None,
        desc="execute"
        if plan.decisions.emulated_link_gbps is None
        else f"execute (emulated link, {plan.decisions.emulated_link_gbps:g} GB/s)",
    )

    def on_finish(completion) -> None:
        key, _ = completion.id
        request, states = pending[key]
        progress.tokens_done(len(completion.token_ids))
        unanswered[key] = unanswered.get(key, len(states)) - 1
        if unanswered[key] == 0:  # the last of the request's n completions
            del pending[key], unanswered[key]
            job.write(request, states)
            progress.answer_written()

    engine = None
    try:
        engine = Engine(checkpoint, EngineConfig.from_plan(plan))
        stats, tally = run_tallied(engine, requests(), on_finish)
    except torch.cuda.OutOfMemoryError as err:
        raise UserError(
            f"the device ran out of memory running the plan: {str(err).splitlines()[0]}",
            "re-solve the plan with a smaller --device-gb (planner solve), then rerun to resume",
        ) from None
    except (RuntimeError, MemoryError) as err:
        if not _is_host_allocation_failure(err):
            raise
        raise UserError(
            f"this machine could not allocate the host memory the plan needs ({_allocation_detail(err)})",
            "free memory, or re-solve the plan with a smaller --kv-gb / --host-gb for this machine "
            "(planner solve); then rerun the same command to resume",
        ) from None
    finally:
        progress.close()
        if engine is not None:
            engine.close()
    return stats, tally


def _is_host_allocation_failure(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "can't allocate memory" in str(err)


def _allocation_detail(err: BaseException) -> str:
    text = str(err)
    start = text.find("you tried to allocate")
    return text[start:].split(". ")[0].rstrip(".") if start >= 0 else "out of memory"


def _finish_report(
    stats: RunStats,
    plan: Plan,
    profile: HardwareProfile,
    spec: ModelSpec,
    tally: ContextTally,
    scan: InputScan,
    resumed: int,
    options: ExecuteOptions,
) -> dict:
    from planner.outputs import is_stdout, say_to
    from runtime.report import build_report, format_report, write_report

    report = build_report(stats, plan, profile, spec, tally, scan.skipped, resumed)
    report["output"] = str(options.output)
    report["finish_reasons"] = dict(tally.finish_reasons)
    report["capped_requests"] = scan.capped_requests
    if options.report is not None:
        write_report(options.report, report)
    if not options.quiet:
        say = say_to("-" if is_stdout(options.output) or is_stdout(options.report) else None)
        print(written_summary(stats.num_requests, tally.finish_reasons, scan.skipped, options), file=say)
        print(format_report(report), file=say)
    return report


def written_summary(
    completions: int, finish_reasons: dict[str, int], skipped: list, options: ExecuteOptions
) -> str:
    """The first line of the printed summary: what was written where."""
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(finish_reasons.items())) or "none"
    bad = "answered with error records" if options.on_error == "record" else "skipped"
    return (
        f"wrote {completions} completions to {options.output} (finish reasons: {reasons}); "
        f"{len(skipped)} bad input lines {bad}"
    )

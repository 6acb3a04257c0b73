"""`runtime execute ... --workers N`: the job as a Ray Data pipeline of N engine actors, written exactly once.
This process is the only writer; an answer already in the output is dropped, so each is written exactly once.

How it works: docs/design.md, `runtime/cluster/job.py`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from planner.errors import UserError

if TYPE_CHECKING:
    from planner.plans.plan import Plan
    from runtime.cluster.report import WorkerTally
    from runtime.cluster.worker import WorkerOptions
    from runtime.commands.execute_options import ExecuteOptions
    from runtime.jobio.input_file import InputScan
    from runtime.jobio.requests import JobRequest
    from runtime.jobio.writer import JobOutput

BATCHES_PER_WORKER = 4  # at least this many batches per worker: balance, and little lost to a crash
MAX_BATCH_IN_FLIGHTS = 4  # a batch holds at most this many times the plan's sequences in flight


def _request_rows(path: Path, pending: dict[str, JobRequest]) -> list[dict]:
    """The input lines of the pending requests, as they are in the file (workers parse them as we did)."""
    from runtime.jobio.input_file import _raw_lines

    wanted = {r.line_number for r in pending.values()}
    return [{"request": raw.decode("utf-8"), "line_number": n} for n, raw in _raw_lines(path) if n in wanted]


def batch_size_for(num_pending: int, num_workers: int, num_seqs: int) -> int:
    return max(
        1, min(MAX_BATCH_IN_FLIGHTS * num_seqs, math.ceil(num_pending / (BATCHES_PER_WORKER * num_workers)))
    )


def user_error_in(err: BaseException) -> UserError | None:
    """The UserError a worker raised, unwrapped from Ray's exception chain (None if there is none)."""
    seen = err
    while seen is not None:
        inner = getattr(seen, "cause", None)
        if isinstance(inner, UserError):
            return inner
        if isinstance(seen, UserError) and isinstance(seen.cause, str):
            return UserError(seen.cause, seen.fix)
        seen = seen.__cause__ or seen.__context__
    return None


def execute_on_cluster(options: ExecuteOptions) -> dict | None:
    from planner.plans.plan import Plan
    from runtime.checkpoint import open_checkpoint
    from runtime.checkpoint.generation import read_generation_config
    from runtime.cluster.worker import WorkerOptions
    from runtime.commands.execute_checks import check_plan_model, checkpoint_dir_of
    from runtime.jobio import ParseContext, check_output_writable, iter_requests, open_job

    if options.workers < 1:
        raise UserError(f"--workers {options.workers} must be positive", "pass --workers >= 1")
    plan = Plan.load(options.plan)
    check_output_writable(options.output)
    if options.report is not None:
        check_output_writable(options.report)
    if options.max_tokens is not None and options.max_tokens < 1:
        raise UserError(f"--max-tokens {options.max_tokens} must be positive", "pass --max-tokens >= 1")
    checkpoint_dir = checkpoint_dir_of(plan, options.checkpoint).resolve()
    checkpoint = open_checkpoint(checkpoint_dir)
    spec = checkpoint.spec
    check_plan_model(plan, spec, options.force)
    default_max_tokens = options.max_tokens or max(1, round(plan.workload.gen_len_max))
    context = ParseContext(
        checkpoint.tokenizer,
        spec.max_position_embeddings,
        spec.vocab_size,
        default_max_tokens,
        read_generation_config(options.generation_config, checkpoint_dir),
    )
    with open_job(options, context, spec.name) as (job, scan):
        if job is None:
            return None
        pending = {r.key: r for r in iter_requests(options.input, context, scan, skip_keys=job.done_keys)}
        worker = WorkerOptions(
            str(checkpoint_dir),
            options.plan.read_text(),
            default_max_tokens,
            options.force,
            options.generation_config,
        )
        began = time.perf_counter()
        tally, duplicates = _run_pipeline(options, plan, worker, pending, job)
        wall_s = time.perf_counter() - began
    return _finish_cluster_report(
        tally, wall_s, len(pending), scan, duplicates, job.resumed_count, spec.name, options
    )


def _run_pipeline(
    options: ExecuteOptions, plan: Plan, worker: WorkerOptions, pending: dict[str, JobRequest], job: JobOutput
) -> tuple[WorkerTally, int]:
    from runtime.cluster.report import WorkerTally
    from runtime.cluster.session import ray_session
    from runtime.progress import JobProgress

    tally, duplicates = WorkerTally(), 0
    progress = JobProgress(
        len(pending) + job.num_done,
        plan.predicted.generated_tok_s * options.workers,
        already_done=job.num_done,
        enabled=False if options.quiet else None,
    )
    try:
        with ray_session(options.ray_address or "local") as ray:
            for batch in _answers(ray, options, plan, worker, pending):
                for stats in batch["stats"]:
                    if stats:
                        tally.add(json.loads(stats))
                        progress.tokens_done(json.loads(stats)["generated_tokens"])
                for key, record in zip(batch["key"], batch["record"]):
                    key = str(key)
                    if key in job.done_keys:
                        duplicates += 1
                        continue
                    job.write_record(key, json.loads(record))
                    progress.answer_written()
    except Exception as err:
        found = user_error_in(err)
        if found is not None:
            raise found from None
        raise
    finally:
        progress.close()
    missing = [key for key in pending if key not in job.done_keys]
    if missing:
        raise UserError(
            f"the cluster returned no answer for {len(missing)} requests (first: {missing[0]})",
            "rerun the same command to resume; it sends only the requests still missing",
        )
    return tally, duplicates


def _answers(
    ray: ModuleType,
    options: ExecuteOptions,
    plan: Plan,
    worker: WorkerOptions,
    pending: dict[str, JobRequest],
) -> Iterator[dict]:
    """Output batches of the pipeline as they finish (numpy columns key, id, record, stats)."""
    from ray.data import ActorPoolStrategy, DataContext

    from runtime.cluster.worker import EngineWorker

    total_cpus = int(ray.cluster_resources().get("CPU", 0))
    if options.workers > total_cpus:
        raise UserError(
            f"--workers {options.workers} needs at least that many CPUs, the Ray cluster has {total_cpus}",
            f"pass --workers {max(1, total_cpus)} or fewer, or add nodes",
        )
    cpus_per_worker = total_cpus // options.workers
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    batch_size = batch_size_for(len(pending), options.workers, plan.decisions.num_seqs)
    rows = _request_rows(options.input, pending)
    if len(rows) != len(pending):
        raise UserError(
            f"{options.input} changed while the job ran", "do not edit the input during a job; rerun"
        )
    dataset = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / batch_size))
    answered = dataset.map_batches(
        EngineWorker,
        fn_constructor_kwargs={"options": worker},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=options.workers),
        num_cpus=cpus_per_worker,
    )
    yield from answered.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)


def _finish_cluster_report(
    tally: WorkerTally,
    wall_s: float,
    num_answered: int,
    scan: InputScan,
    duplicates: int,
    resumed: int,
    model: str,
    options: ExecuteOptions,
) -> dict:
    from runtime.cluster.report import cluster_report, format_cluster_report
    from runtime.report import write_report

    report = cluster_report(tally, wall_s, num_answered, duplicates, resumed, scan.skipped, model)
    report["output"] = str(options.output)
    if not options.quiet:
        print(format_cluster_report(report))
    if options.report is not None:
        write_report(options.report, report)
    return report

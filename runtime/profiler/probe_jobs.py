"""Fit a measured profile's efficiency constants to short jobs of the real engine: the last step of `runtime profile`.

How it works: docs/design.md, `runtime/profiler/probe_jobs.py`.
"""

from __future__ import annotations

import datetime
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from planner.calibration.calibrate import Calibration, fit
from planner.calibration.runs import MeasuredRun, load_run
from planner.hardware.profile import HardwareProfile
from planner.perf.memory import Budgets, kv_budget_gib
from planner.plans.build import make_plan
from planner.plans.plan import Plan
from planner.plans.workload import Workload
from planner.specs.spec import ModelSpec
from runtime.profiler.spot_check import machine_speed

# What the probes fit: GEMMs in the engine against the curves' GEMMs timed alone, the engine's costs per step
# and CPU attention in place. Not an extra fixed cost per call, nor a multiplier on the measured per-call
# costs: fitted to these short, small-batch jobs, both priced the accuracy matrix's tiny-expert models'
# calls too high (BENCHMARKS.md, accuracy notes: over four profiles, mean error before calibration 13.2%
# with the multiplier fitted, 10.5% without).
# `gemm` and `gemm_small_m` apart: the probes' decode multiplies a row or two per expert, where the engine beat the
# curves by ~28% on the Xeon VM (its weights stream from memory as the curves' rotated weights do, yet faster),
# while at hundreds of rows it matched them; one constant for both priced a 256 x (128 + 64) mixtral-mini job
# 9% faster than with two (BENCHMARKS.md, "Issue 14's last must-show").
PROBE_FITTED = ("gemm", "gemm_small_m", "attention", "step_overhead_s")
IMPLAUSIBLE_GEMM = 1.5  # a fitted gemm above this: the stages were measured under different loads
FIRST_TOKEN_ID = 3  # prompts stay clear of ids 0-2 (pad / bos / eos of the random checkpoints)

PROBE_GQA = ModelSpec(  # 0.8 GB of float32 expert weights: well beyond a last-level cache, as real models are
    name="probe-gqa",
    family="mixtral",
    num_layers=4,
    hidden_size=1024,
    num_heads=16,
    num_kv_heads=4,
    head_dim=64,
    vocab_size=8192,
    num_experts=16,
    top_k=2,
    moe_intermediate_size=1024,
    max_position_embeddings=4096,
)
PROBE_MLA = ModelSpec(
    name="probe-mla",
    family="deepseek_v2",
    num_layers=3,
    hidden_size=768,
    num_heads=8,
    num_kv_heads=8,
    head_dim=128,
    vocab_size=8192,
    num_experts=16,
    top_k=4,
    moe_intermediate_size=384,
    num_shared_experts=1,
    shared_intermediate_size=384,
    first_dense_layers=1,
    dense_intermediate_size=1536,
    norm_topk_prob=False,
    attention="mla",
    q_lora_rank=0,
    kv_lora_rank=512,
    qk_rope_head_dim=64,
    qk_nope_head_dim=64,
    v_head_dim=64,
    max_position_embeddings=4096,
)
PROBE_TINY = ModelSpec(
    name="probe-tiny",
    family="mixtral",
    num_layers=2,
    hidden_size=128,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    vocab_size=512,
    num_experts=4,
    top_k=2,
    moe_intermediate_size=128,
    max_position_embeddings=1024,
)


@dataclass(frozen=True)
class ProbeJob:
    spec: ModelSpec
    num_seqs: int  # sequences in flight (the plan's N)
    prompt_len: int
    gen_len: int

    @property
    def num_prompts(self) -> int:
        return 2 * self.num_seqs  # every slot is refilled once

    @property
    def label(self) -> str:
        return f"{self.spec.name} N={self.num_seqs}"

    def workload(self) -> Workload:
        return Workload.fixed(self.prompt_len, self.gen_len, self.num_prompts)


@dataclass(frozen=True)
class ProbeBudget:
    name: str
    jobs: tuple[ProbeJob, ...]
    repeats: int  # measured runs per job after its warm-up; the median one is fitted
    seconds: float  # no job starts that would likely end beyond this (the first always runs)


FOUR_JOBS = (
    ProbeJob(PROBE_GQA, 8, 48, 16),
    ProbeJob(PROBE_MLA, 8, 48, 16),
    ProbeJob(PROBE_GQA, 32, 48, 16),
    ProbeJob(PROBE_MLA, 32, 48, 16),
)
FULL_PROBES = ProbeBudget("full", FOUR_JOBS, repeats=3, seconds=60.0)
QUICK_PROBES = ProbeBudget("quick", FOUR_JOBS, repeats=1, seconds=FULL_PROBES.seconds)
TINY_PROBES = ProbeBudget("tiny", (ProbeJob(PROBE_TINY, 4, 16, 8),), repeats=1, seconds=10.0)
PROBE_BUDGETS = {b.name: b for b in (FULL_PROBES, QUICK_PROBES, TINY_PROBES)}


def plan_probe(job: ProbeJob, spec: ModelSpec, profile: HardwareProfile, checkpoint_dir: str | Path) -> Plan:
    """The plan of `job` for `spec`, the checkpoint's own (the writer records its dtype and token ids)."""
    workload = job.workload()
    budgets = Budgets.from_args(profile, kv_budget_gib(spec, workload, job.num_seqs))
    return make_plan(
        spec, profile, workload, budgets, model_ref=str(checkpoint_dir), profile_ref=profile.name
    )


def _prompts(job: ProbeJob, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [
        [rng.randrange(FIRST_TOKEN_ID, job.spec.vocab_size) for _ in range(job.prompt_len)]
        for _ in range(job.num_prompts)
    ]


def run_probe(
    job: ProbeJob,
    profile: HardwareProfile,
    checkpoint_dir: Path,
    device: torch.device,
    report_path: Path,
    seed: int,
    repeats: int = 1,
) -> MeasuredRun:
    """Plan one probe job, warm its engine up, run it `repeats` times on distinct prompts; write the report of
    the median run (by generated tok/s) to `report_path` and read it back."""
    from runtime.checkpoint import open_checkpoint
    from runtime.engine import Engine, EngineConfig
    from runtime.report import build_report, write_report
    from runtime.report.job_run import fixed_length_requests, run_tallied

    spec = open_checkpoint(checkpoint_dir).spec
    plan = plan_probe(job, spec, profile, checkpoint_dir)
    measured = []
    engine = Engine(str(checkpoint_dir), EngineConfig.from_plan(plan, device=str(device)))
    try:
        engine.run(fixed_length_requests(_prompts(job, seed), job.gen_len))
        for repeat in range(1, repeats + 1):
            stats, tally = run_tallied(
                engine, fixed_length_requests(_prompts(job, seed + repeat), job.gen_len)
            )
            measured.append((stats.generated_tokens / stats.wall_seconds, stats, tally))
    finally:
        engine.close()
    _, stats, tally = sorted(measured, key=lambda m: m[0])[len(measured) // 2]
    write_report(report_path, build_report(stats, plan, profile, spec, tally))
    return load_run(report_path)


def _fitted_sentence(
    calibration: Calibration, jobs: list[ProbeJob], budget: ProbeBudget, once: list[str]
) -> str:
    fitted = ", ".join(f"{name} {calibration.after[name]:.4g}" for name in calibration.fitted) or "nothing"
    errors = [
        [abs(e.end_to_end) for e in errs] for errs in (calibration.errors_before, calibration.errors_after)
    ]
    sizes = sorted({(j.prompt_len, j.gen_len) for j in jobs})
    cut = f" (one run for {', '.join(once)}: time budget)" if once else ""
    return (
        f"Efficiency constants fitted by `planner.calibration.calibrate.fit` on {datetime.date.today().isoformat()} to "
        f"{len(jobs)} probe jobs of the engine on random-weight checkpoints ({budget.name} probes: "
        f"{', '.join(j.label for j in jobs)}; 2N prompts of "
        f"{' / '.join(f'{p}+{g}' for p, g in sizes)} tokens, ignore_eos, after a warm-up job each, the median of "
        f"{budget.repeats} runs{cut}): {fitted}; "
        f"mean |error| of end-to-end tok/s on those jobs {100 * sum(errors[0]) / len(jobs):.1f}% before, "
        f"{100 * sum(errors[1]) / len(jobs):.1f}% after."
    )


def calibrate_on_probes(
    profile: HardwareProfile,
    device: torch.device,
    budget: ProbeBudget = FULL_PROBES,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> HardwareProfile:
    """`profile` with its efficiency constants fitted to the budget's probe jobs run on `device`."""
    from runtime.checkpoint.writer import write_random_checkpoint

    began, longest = time.perf_counter(), 0.0
    runs: list[MeasuredRun] = []
    done: list[ProbeJob] = []
    once: list[str] = []  # jobs cut to one run by the time budget
    threads = torch.get_num_threads()  # the engine sets the plan's compute threads; put them back after
    with tempfile.TemporaryDirectory(prefix="moelens-probes-") as tmp:
        root = Path(tmp)
        for i, job in enumerate(budget.jobs):
            elapsed = time.perf_counter() - began
            repeats = budget.repeats
            if runs and elapsed + longest > budget.seconds and repeats > 1:
                repeats = 1
                once.append(job.label)
                log(
                    f"  probe {job.label}: one run, not {budget.repeats}, past the {budget.seconds:.0f} s budget"
                )
            checkpoint_dir = root / job.spec.name
            if not (checkpoint_dir / "config.json").is_file():
                write_random_checkpoint(job.spec, checkpoint_dir, dtype="bf16", seed=i)
            speed_before = machine_speed(profile, device)
            try:
                run = run_probe(
                    job,
                    profile,
                    checkpoint_dir,
                    device,
                    root / f"{job.spec.name}-n{job.num_seqs}.json",
                    seed=1000 * i,
                    repeats=repeats,
                )
            finally:
                torch.set_num_threads(threads)
            speed = (speed_before + machine_speed(profile, device)) / 2
            runs.append(run.at_machine_speed(speed))
            done.append(job)
            job_s = time.perf_counter() - began - elapsed
            longest = max(longest, job_s)
            log(
                f"  probe {job.label}: {run.measured.generated_tok_s:.4g} tok/s achieved, "
                f"{run.plan.predicted.generated_tok_s:.4g} planned ({job_s:.1f} s; machine at {speed:.2f}x "
                "its fingerprint's GEMM speed, achieved scaled by its inverse for the fit)"
            )
        calibration = fit(runs, profile, only=PROBE_FITTED)
    note = _fitted_sentence(calibration, done, budget, once)
    if calibration.after["gemm"] > IMPLAUSIBLE_GEMM:
        warning = (
            f"The fitted gemm {calibration.after['gemm']:.3g} says the engine's GEMMs ran faster than the same "
            "GEMMs timed alone: the machine's load changed during profiling; re-profile on a quiet machine."
        )
        log(f"  warning: {warning}")
        note = f"{note} {warning}"
    notes = f"{profile.notes}\n{note}" if profile.notes else note
    return replace(calibration.profile, notes=notes)

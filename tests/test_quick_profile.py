"""`runtime profile --quick` measures every section the planner reads, at the points the planner reads them, so
that it trades time for noise and not for bias (structural: no timing, no measurement)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from planner.hardware.profile import Efficiency, HardwareProfile, load_profile
from planner.perf.memory import Budgets
from planner.plans.build import make_plan
from planner.plans.workload import Workload
from planner.specs.spec import load_spec

pytest.importorskip("torch")
from runtime.profiler.grids import planner_read_points  # noqa: E402
from runtime.profiler.measure import FULL, QUICK  # noqa: E402


def test_quick_sizing_measures_what_the_planner_reads():
    assert set(QUICK.attention_points) == set(planner_read_points(FULL.attention_points))
    assert {p.layout for p in QUICK.attention_points} == {p.layout for p in FULL.attention_points}
    assert {s.kind for s in QUICK.gemm_shapes} == {"expert_ffn", "linear"}
    assert set(QUICK.gemm_shapes) <= set(FULL.gemm_shapes) and set(QUICK.gemm_rows) <= set(FULL.gemm_rows)
    assert max(QUICK.gemm_rows) >= 1024  # where the full curves level off
    assert QUICK.probe_jobs.jobs == FULL.probe_jobs.jobs  # the efficiency fit sees the same jobs (all run)
    assert QUICK.overhead_rounds >= 1 and QUICK.probe_runs >= 3  # overheads measured, a median of 3 runs


def _quick_subset(full: HardwareProfile) -> HardwareProfile:
    """The full profile's measurements restricted to what the quick sizing measures."""
    labels, rows = {s.label for s in QUICK.gemm_shapes}, set(QUICK.gemm_rows)
    gemm = tuple(
        replace(
            c,
            rows=tuple(r for r in c.rows if r in rows),
            tflops=tuple(t for r, t in zip(c.rows, c.tflops) if r in rows),
        )
        for c in full.gemm_curves
        if c.shape in labels
    )
    points = {(p.layout, p.batch, p.context, p.group) for p in QUICK.attention_points}
    attention = tuple(c for c in full.attention_curves if (c.layout, c.batch, c.context, c.group) in points)
    return replace(full, gemm_curves=gemm, attention_curves=attention)


def test_quick_grids_of_a_full_profile_plan_the_demo_alike():
    full = load_profile("cpu-amd-epyc-2c")  # measured with the full sizing
    quick = _quick_subset(full)
    assert len(quick.gemm_curves) == len(QUICK.gemm_shapes)
    assert len(quick.attention_curves) == len(QUICK.attention_points)
    for layout in ("gqa", "mla"):
        assert quick.attention_gbps(2, layout) == full.attention_gbps(2, layout)
    spec, rng = load_spec("mixtral-mini"), random.Random(0)
    lengths = [rng.randint(32, 128) for _ in range(256)]  # the demo's workload
    workload = Workload.from_lengths(lengths, [64] * len(lengths), source="demo")
    predicted = [
        make_plan(
            spec, p, workload, Budgets.from_args(p, 2.0), model_ref="m", profile_ref=p.name
        ).predicted.generated_tok_s
        for p in (quick, full)
    ]
    assert predicted[0] == pytest.approx(predicted[1], rel=0.03)


def test_quick_grids_of_a_full_profile_plan_the_probe_jobs_alike():
    """The probe jobs set the profile's efficiency constants: priced lower on the quick grids than on the full
    ones, their fit lifts `efficiency.gemm` by as much, and every plan on the quick profile with it (the
    quick grid without the probes' small shapes priced them 7-10% low on this profile, 24-32% on a Xeon's)."""
    from runtime.profiler.probe_jobs import FOUR_JOBS, plan_probe

    full = replace(load_profile("cpu-amd-epyc-2c"), efficiency=Efficiency())
    quick = _quick_subset(full)
    for job in FOUR_JOBS:
        predicted = [plan_probe(job, job.spec, p, "m").predicted.generated_tok_s for p in (quick, full)]
        assert predicted[0] == pytest.approx(predicted[1], rel=0.05), job.label

"""Streaming in parts behind the emulated link, as the planner prices and chooses it: whole layers wherever a
whole-layer plan fits; parts only where none does, their link waiting for a slot while compute outlasts the
copies the streamer runs ahead."""

from __future__ import annotations

import numpy as np
import pytest

from planner.hardware.emulated_link import emulate_link
from planner.hardware.profile import load_profile
from planner.perf.memory import Budgets
from planner.perf.model import STREAM_AHEAD, Candidates, PerfModel
from planner.plans.build import make_plan
from planner.plans.workload import Workload
from planner.specs.spec import load_spec

WORKLOAD = Workload.fixed(64, 32, 256)


def _model(device_gib: float) -> PerfModel:
    profile = emulate_link(load_profile("cpu-amd-epyc-2c"), 1.0, device_gib)
    spec = load_spec("mixtral-mini").with_layers(4)
    return PerfModel(spec, profile, WORKLOAD, Budgets.from_args(profile, 4.0))


def _at(model: PerfModel, residency: int) -> Candidates:
    return Candidates.of(
        residency=residency, attn_batch=4, expert_batch=64, prefill_chunk=64, attention_threads=2
    )


def test_where_a_whole_layer_plan_fits_no_plan_streams_in_parts():
    model = _model(0.6)
    assert model.whole_layers_fit
    lo, hi = model.residency_range
    parts = [int(model.memory.stream_parts(_at(model, rho))) for rho in range(lo, hi + 1)]
    assert parts[0] == 1 and max(parts) > 1  # more resident experts leave room only for parts
    feasible = [bool(model.evaluate(_at(model, rho)).feasible) for rho in range(lo, hi + 1)]
    assert not any(f for f, p in zip(feasible, parts) if p > 1) and any(feasible)
    plan = make_plan(model.spec, model.profile, WORKLOAD, model.budgets)
    assert plan.decisions.stream_parts == 1 and plan.bottleneck == "link"


def test_where_no_whole_layer_plan_fits_parts_are_planned():
    model = _model(0.4)
    assert not model.whole_layers_fit
    plan = make_plan(model.spec, model.profile, WORKLOAD, model.budgets)
    assert plan.decisions.stream_parts > 1


@pytest.mark.parametrize(
    ("before", "experts", "parts", "stall"),
    [
        (3.0, 4.0, 1, 0.0),  # whole layers: the streamer is a whole layer ahead
        (1.0, 2.0, 4, 0.0),  # attention block and two parts' experts inside two parts' copies
        (5.0, 4.0, 4, 5.0 + 2.0 - STREAM_AHEAD * 2.0),
        (2.0, 8.0, 8, 2.0 + 2.0 - STREAM_AHEAD * 1.0),
    ],
)
def test_a_parts_link_waits_once_compute_outlasts_the_parts_copied_ahead(before, experts, parts, stall):
    got = _model(0.4)._part_stall(np.array(8.0), np.array(before), np.array(experts), np.array(parts))
    assert float(got) == pytest.approx(stall)


def test_the_stall_lengthens_the_link_of_a_parts_plan_but_not_its_busy_time():
    model = _model(0.4)
    c = _at(model, model.residency_range[0])
    parts = int(model.memory.stream_parts(c))
    assert parts > 1
    step = model.decode_step(c, np.array(4.0))
    moe = step["layer"]["resources"]["moe"]
    copies = step["weight_copy"] / model.layout.num_moe_layers
    experts = step["experts"] / model.layout.num_moe_layers
    expected = model._part_stall(copies, moe["cpu"] - experts, experts, parts)
    assert float(moe["link"] - copies) == pytest.approx(float(expected), abs=1e-12)
    assert float(step["busy_link"]) == pytest.approx(float(step["weight_copy"]))

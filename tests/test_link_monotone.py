"""A faster link never predicts lower throughput: shipped device profiles with their links scaled, and a CPU
profile behind an emulated link swept as `planner sweep --vary link-gbps` sweeps it."""

from __future__ import annotations

import pytest

from planner.errors import UserError
from planner.hardware.emulated_link import emulate_link
from planner.hardware.profile import load_profile
from planner.perf.memory import Budgets
from planner.perf.model import PerfModel
from planner.perf.rates import RateScale
from planner.plans.solver import solve
from planner.plans.workload import Workload
from planner.specs.spec import load_spec

TOLERANCE = 1e-9
DEVICE_PROFILES = ("h100-pcie-lambda", "a5000-epyc7453", "l4-aws-g6-16xlarge")


def _throughputs(models: list[PerfModel]) -> list[float]:
    out = []
    for model in models:
        try:
            out.append(solve(model).generated_tok_s)
        except UserError:  # does not fit: nothing to compare
            out.append(0.0)
    return out


def _assert_non_decreasing(values: list[float], where: str) -> None:
    for slower, faster in zip(values, values[1:]):
        assert faster >= slower * (1 - TOLERANCE), f"{where}: {values}"


@pytest.mark.parametrize("profile_name", DEVICE_PROFILES)
def test_a_faster_link_never_predicts_less_on_shipped_profiles(profile_name):
    profile = load_profile(profile_name)
    workload = Workload.fixed(128, 64, 10_000)
    budgets = Budgets.from_args(profile, min(128.0, 0.5 * profile.machine.host_memory_gib))
    for name in ("deepseek-v2-lite", "qwen3-30b-a3b"):
        spec = load_spec(name)
        models = [PerfModel(spec, profile, workload, budgets, RateScale(link=s)) for s in (1.0, 2.0, 4.0)]
        _assert_non_decreasing(_throughputs(models), f"{name} on {profile_name}")


@pytest.mark.parametrize("model_name", ["mixtral-mini", "qwen3-mini"])
def test_a_faster_emulated_link_never_predicts_less(model_name):
    base, spec = load_profile("cpu-amd-epyc-2c"), load_spec(model_name)
    for workload in (Workload.fixed(96, 48, 128), Workload.fixed(32, 8, 256)):
        for device_gib in (0.3, 2.0):
            models = []
            for gbps in (0.25, 0.4, 0.63, 1.0, 1.6, 2.5, 4.0):
                profile = emulate_link(base, gbps, device_gib)
                models.append(PerfModel(spec, profile, workload, Budgets.from_args(profile, 2.0)))
            _assert_non_decreasing(
                _throughputs(models), f"{model_name}, {device_gib} GiB, {workload.describe()}"
            )

"""The solver: within 2% of an exhaustive lattice search, deterministic, thread choice, budget errors."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from planner.errors import UserError
from planner.hardware.profile import load_profile
from planner.perf.memory import Budgets
from planner.perf.model import PerfModel
from planner.plans.solver import Solver, choose_threads, grid_search, solve
from planner.plans.workload import Workload
from planner.specs.spec import load_spec
from tests.planner_support import make_profile, small_spec

CASES = [
    ("mixtral-8x7b", "a5000-epyc7453", 128, Workload.fixed(512, 256, 10_000)),
    ("qwen3-30b-a3b", "h100-pcie-lambda", 256, Workload.fixed(1024, 512, 20_000)),
    (
        "deepseek-v2-lite",
        "l4-aws-g6-16xlarge",
        64,
        Workload.from_lengths([100, 900, 3000], [50, 400, 1000], num_prompts=30_000),
    ),
    ("mixtral-mini", "cpu-only", 8, Workload.fixed(128, 64, 256)),
    ("small-mixtral", "small-gpu", 16, Workload.fixed(256, 128, 2000)),
]


def _model(model_name: str, profile_name: str, kv_gb: float, workload: Workload) -> PerfModel:
    if profile_name == "cpu-only":
        profile = make_profile(
            device=False, cores=2, host_gib=24, read_gbps=20, peak_tflops=1.5, attention_gbps_per_core=6
        )
    elif profile_name == "small-gpu":
        profile = make_profile(device=True, device_gib=2.0, host_gib=64, link_gbps=12)
    else:
        profile = load_profile(profile_name)
    spec = (
        small_spec(num_layers=8, hidden_size=2048) if model_name == "small-mixtral" else load_spec(model_name)
    )
    return PerfModel(spec, profile, workload, Budgets.from_args(profile, kv_gb))


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}@{c[1]}" for c in CASES])
def test_solver_is_within_two_percent_of_the_exhaustive_lattice(case, capsys):
    model = _model(*case)
    began = time.perf_counter()
    solution = solve(model)
    seconds = time.perf_counter() - began
    best, where = grid_search(model)
    with capsys.disabled():  # solve time is reported, never asserted
        print(
            f"\n{case[0]} on {case[1]}: solver {solution.generated_tok_s:.2f} tok/s in {seconds:.3f} s "
            f"({solution.evaluations} evaluations); lattice best {best:.2f} at {where}"
        )
    assert solution.generated_tok_s >= 0.98 * best
    assert solution.generated_tok_s <= best * (1 + 1e-9)  # the solver searches the same lattice


def test_solve_is_deterministic():
    model = _model(*CASES[0])
    first, second = solve(model), Solver(model).solve()
    assert replace(first, solve_seconds=0.0, evaluations=0) == replace(
        second, solve_seconds=0.0, evaluations=0
    )


def test_threads_leave_a_core_for_the_driver_with_a_device_and_use_all_without():
    gpu = _model(*CASES[4])
    attention, compute = choose_threads(gpu)
    assert 1 <= attention <= gpu.rates.cores - 1 and attention + compute == gpu.rates.cores
    best = gpu.rates.attention_bps[1 : gpu.rates.cores].max()
    assert gpu.rates.attention_bps[attention] >= 0.995 * best
    assert gpu.rates.attention_bps[attention - 1] < 0.995 * best
    cpu = _model(*CASES[3])
    assert choose_threads(cpu) == (cpu.rates.cores, cpu.rates.cores)


def test_cpu_only_solutions_keep_everything_in_place():
    model = _model(*CASES[3])
    solution = solve(model)
    assert solution.residency == model.layout.max_residency
    assert model.layout.streamed_moe_layer[solution.residency] == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kv_gb=64, host_gb=40), "exceed host memory"),
        (dict(kv_gb=0.01), "cannot hold one sequence"),
        (dict(kv_gb=64, device_gb=0.5), "device memory"),
    ],
)
def test_impossible_budgets_name_the_binding_limit(kwargs, message):
    profile = load_profile("a5000-epyc7453")
    kv_gb = kwargs.pop("kv_gb")
    model = PerfModel(
        load_spec("mixtral"),
        profile,
        Workload.fixed(512, 256, 100),
        Budgets.from_args(profile, kv_gb, **kwargs),
    )
    with pytest.raises(UserError, match=message):
        solve(model)

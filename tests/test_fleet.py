"""`planner solve` over a fleet (`--profile NAME:COUNT`, repeated): per-profile plans, the summed throughput,
and the prompts split in proportion to throughput (torch-free)."""

from __future__ import annotations

import pytest

from planner.cli import main
from planner.errors import UserError
from planner.hardware.profile import load_profile
from planner.perf.memory import Budgets
from planner.plans.build import make_plan
from planner.plans.fleet import parse_member, solve_fleet
from planner.plans.plan import Plan
from planner.plans.workload import Workload
from planner.specs.spec import load_spec

GPU, CPU = "h100-sxm-lambda", "cpu-amd-epyc-2c"


def test_member_counts_parse():
    assert parse_member("h100-sxm-lambda:4") == ("h100-sxm-lambda", 4)
    assert parse_member("profiles/x.yaml") == ("profiles/x.yaml", 1)
    with pytest.raises(UserError, match="at least 1"):
        parse_member("h100-sxm-lambda:0")


def test_fleet_throughput_is_the_sum_of_its_machines_and_the_split_follows_it():
    spec, workload = load_spec("olmoe-1b-7b"), Workload.fixed(256, 64, 1001)
    members = [(load_profile(GPU), GPU, 4), (load_profile(CPU), CPU, 10)]
    fleet = solve_fleet(spec, members, workload, 8, None, None, "olmoe-1b-7b")
    alone = [
        make_plan(spec, p, workload, Budgets.from_args(p, 8)).predicted.generated_tok_s for p, _, _ in members
    ]
    assert fleet.tok_s == pytest.approx(4 * alone[0] + 10 * alone[1])
    split = fleet.prompts_per_member()
    assert sum(split) == 1001
    for member, prompts in zip(fleet.members, split):
        assert prompts == pytest.approx(1001 * member.tok_s / fleet.tok_s, abs=1)
    assert fleet.wall_time_s == pytest.approx(1001 * 64 / fleet.tok_s)


def test_solve_with_a_fleet_prints_it_and_writes_a_plan_per_profile(capsys, tmp_path):
    code = main(
        [
            "solve",
            "--model",
            "olmoe-1b-7b",
            "--kv-gb",
            "8",
            "--num-prompts",
            "5000",
            "--profile",
            f"{GPU}:4",
            "--profile",
            f"{CPU}:10",
            "--out",
            str(tmp_path / "plan.yaml"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "fleet of 14 machines" in out and GPU in out and CPU in out
    assert Plan.load(tmp_path / f"plan-{GPU}.yaml").profile.name == GPU
    assert Plan.load(tmp_path / f"plan-{CPU}.yaml").profile.name == CPU


def test_a_fleet_member_that_cannot_hold_the_model_is_named(capsys):
    code = main(
        ["solve", "--model", "mixtral", "--kv-gb", "128", "--profile", f"{GPU}:4", "--profile", f"{CPU}:10"]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"fleet member {CPU}" in err and "Traceback" not in err

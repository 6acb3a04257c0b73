"""The plan a cluster worker runs (`runtime.cluster.worker_plan`, torch-free): the given plan where the worker's
machine has the plan's profile and the plan's threads fit its CPUs, else one solved there with the same budgets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner.errors import UserError
from planner.hardware.profile import find_profile_for_this_machine, load_profile
from planner.perf.memory import Budgets
from planner.plans.build import make_plan
from planner.plans.workload import Workload
from planner.specs.spec import load_spec
from runtime.cluster.worker_plan import plan_for_worker
from tests.conftest import REPO_ROOT, relabelled_profile_for_this_machine

SPEC = load_spec("qwen3-mini").with_layers(2)
WORKLOAD = Workload.fixed(16, 8, 100)


@pytest.fixture
def here(tmp_path, monkeypatch):
    relabelled_profile_for_this_machine(tmp_path)
    monkeypatch.setenv("MOELENS_PROFILES_DIR", str(tmp_path))
    return find_profile_for_this_machine()


def solved_for(profile, cores: int | None = None, kv_gb: float = 0.01):
    if cores is not None:
        profile = replace(profile, machine=replace(profile.machine, cores=cores))
    return make_plan(SPEC, profile, WORKLOAD, Budgets.from_args(profile, kv_gb), profile_ref=profile.name)


def test_the_given_plan_runs_where_the_machine_and_its_cpus_match(here):
    plan = solved_for(here, cores=1)
    chosen = plan_for_worker(plan, SPEC, cpus=1)
    assert chosen.source == "given" and chosen.plan is plan and chosen.reason == ""


def test_a_plan_for_another_profile_is_solved_again_with_the_same_kv_budget(here):
    other = load_profile(REPO_ROOT / "profiles" / "h100-sxm-lambda.yaml")
    plan = solved_for(other, kv_gb=0.02)
    chosen = plan_for_worker(plan, SPEC, cpus=1)
    assert chosen.source == "re-solved" and "h100-sxm-lambda" in chosen.reason
    assert chosen.plan.profile.fingerprint == here.fingerprint()
    assert chosen.plan.budgets.kv_gib == pytest.approx(0.02) and chosen.plan.decisions.compute_threads == 1
    assert chosen.plan.budgets.host_gib <= here.machine.host_memory_gib


def test_a_plan_with_more_threads_than_the_worker_has_cpus_is_solved_for_those_cpus(here):
    solved = solved_for(here)
    plan = replace(solved, decisions=replace(solved.decisions, attention_threads=4, compute_threads=4))
    chosen = plan_for_worker(plan, SPEC, cpus=1)
    assert (
        chosen.source == "re-solved"
        and "4 threads" in chosen.reason
        and chosen.plan.decisions.compute_threads == 1
    )


def test_a_worker_machine_without_a_profile_is_a_user_error_unless_forced(monkeypatch):
    import runtime.cluster.worker_plan as worker_plan

    def unprofiled():
        raise UserError("no hardware profile for this machine", "run `runtime profile`")

    monkeypatch.setattr(worker_plan, "find_profile_for_this_machine", unprofiled)
    plan = solved_for(load_profile(REPO_ROOT / "profiles" / "cpu-amd-epyc-2c.yaml"))
    with pytest.raises(UserError, match="runtime profile"):
        plan_for_worker(plan, SPEC, cpus=1)
    assert plan_for_worker(plan, SPEC, cpus=1, force=True).source == "given"


def test_a_workers_user_error_is_found_inside_rays_exception_chain():
    from runtime.cluster.job import user_error_in

    class RayTaskError(Exception):  # Ray keeps the worker's exception as `.cause`
        def __init__(self, cause):
            super().__init__("task failed")
            self.cause = cause

    original = UserError("worker on node-3: no hardware profile", "run `runtime profile` there")
    try:
        try:
            raise RayTaskError(original)
        except RayTaskError as inner:
            raise RuntimeError("dataset execution failed") from inner
    except RuntimeError as err:
        assert user_error_in(err) is original
    assert user_error_in(RuntimeError("a bug")) is None

"""The plan a cluster worker runs: the job's plan where it fits the worker's hardware, else one solved there.

A worker's hardware is its machine's measured profile (`find_profile_for_this_machine`) with `machine.cores`
cut to the CPUs Ray gave the worker (two workers on one 8-core node each plan for 4). The given plan is kept
when the profile's fingerprint is the plan's and the plan's threads fit in those CPUs; otherwise the worker
solves a plan for its own profile with the plan's model, workload and budgets (KV the same; host and device
budgets the plan's, capped at what the worker's machine has). Torch-free.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace

from planner.errors import UserError
from planner.hardware.profile import HardwareProfile, find_profile_for_this_machine
from planner.perf.memory import Budgets
from planner.plans.build import make_plan
from planner.plans.plan import Plan
from planner.specs.spec import ModelSpec


@dataclass(frozen=True)
class WorkerPlan:
    plan: Plan
    source: str  # "given" | "re-solved"
    reason: str  # why re-solved (empty when given)
    machine: str  # "host: cpu, N cores[, device]" as this worker sees it


def _describe(profile: HardwareProfile) -> str:
    m = profile.machine
    device = f", {m.device}" if m.device else ""
    return f"{socket.gethostname()}: {m.cpu}, {m.cores} cores{device}"


def _budgets_for(plan: Plan, profile: HardwareProfile) -> Budgets:
    b, m = plan.budgets, profile.machine
    host = min(b.host_gib, m.host_memory_gib)
    device = None
    if profile.has_device:
        device = m.device_free_gib or m.device_memory_gib
        device = min(b.device_gib, device) if b.device_gib > 0 else device
    return Budgets.from_args(profile, b.kv_gib, host, device)


def plan_for_worker(plan: Plan, spec: ModelSpec, cpus: int, force: bool = False) -> WorkerPlan:
    """The plan this worker runs with `cpus` CPUs of its machine; UserError when its machine has no profile
    (with `force`: the given plan, said in the reason)."""
    try:
        here = find_profile_for_this_machine()
    except UserError as err:
        if force:
            return WorkerPlan(plan, "given", f"--force: {err.cause}", f"{socket.gethostname()}: unprofiled")
        raise UserError(
            f"worker on {socket.gethostname()}: {err.cause}",
            "run `runtime profile` on every node of the cluster (or pass --force to run the given "
            "plan everywhere)",
        ) from None
    cpus = max(1, min(int(cpus), here.machine.cores))
    profile = replace(here, machine=replace(here.machine, cores=cpus))
    machine = _describe(profile)
    threads = max(plan.decisions.attention_threads, plan.decisions.compute_threads)
    if here.fingerprint() == plan.profile.fingerprint and threads <= cpus:
        return WorkerPlan(plan, "given", "", machine)
    if here.fingerprint() != plan.profile.fingerprint:
        reason = f"the plan's profile is {plan.profile.name}, this machine's is {here.name}"
    else:
        reason = f"the plan uses {threads} threads, this worker has {cpus} CPU{'s' * (cpus > 1)}"
    solved = make_plan(
        spec,
        profile,
        plan.workload,
        _budgets_for(plan, profile),
        model_ref=plan.model.ref,
        profile_ref=here.name,
        batching=plan.decisions.batching,
    )
    return WorkerPlan(solved, "re-solved", reason, machine)

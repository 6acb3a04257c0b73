"""A fleet: several hardware profiles, each with a machine count, sharing one job (torch-free).

How it works: docs/design.md, `planner/plans/fleet.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.errors import UserError
from planner.hardware.profile import HardwareProfile
from planner.perf.memory import Budgets
from planner.plans.build import make_plan
from planner.plans.plan import Plan
from planner.plans.workload import Workload
from planner.specs.spec import ModelSpec


@dataclass(frozen=True)
class FleetMember:
    profile_ref: str
    count: int
    plan: Plan

    @property
    def tok_s_per_machine(self) -> float:
        return self.plan.predicted.generated_tok_s

    @property
    def tok_s(self) -> float:
        return self.count * self.tok_s_per_machine


@dataclass(frozen=True)
class Fleet:
    members: tuple[FleetMember, ...]
    num_prompts: int
    gen_len_mean: float

    @property
    def tok_s(self) -> float:
        return sum(m.tok_s for m in self.members)

    @property
    def num_machines(self) -> int:
        return sum(m.count for m in self.members)

    def prompts_per_member(self) -> list[int]:
        """Prompts for all machines of each member, in proportion to its throughput (sums to num_prompts)."""
        exact = [self.num_prompts * m.tok_s / self.tok_s for m in self.members]
        given = [math.floor(x) for x in exact]
        for j in sorted(range(len(exact)), key=lambda j: given[j] - exact[j])[
            : self.num_prompts - sum(given)
        ]:
            given[j] += 1
        return given

    @property
    def wall_time_s(self) -> float:
        return self.num_prompts * self.gen_len_mean / self.tok_s


def parse_member(text: str) -> tuple[str, int]:
    ref, sep, count = text.rpartition(":")
    if not sep or not count.isdigit():
        return text, 1
    if int(count) < 1:
        raise UserError(
            f"--profile {text}: the machine count must be at least 1", "write NAME:COUNT with COUNT >= 1"
        )
    return ref, int(count)


def solve_fleet(
    spec: ModelSpec,
    members: list[tuple[HardwareProfile, str, int]],
    workload: Workload,
    kv_gb: float,
    host_gb: float | None,
    device_gb: float | None,
    model_ref: str,
    batching: str = "module",
) -> Fleet:
    solved = []
    for profile, ref, count in members:
        try:
            budgets = Budgets.from_args(profile, kv_gb, host_gb, device_gb if profile.has_device else None)
            plan = make_plan(spec, profile, workload, budgets, model_ref, ref, batching=batching)
        except UserError as err:
            raise UserError(
                f"fleet member {profile.name}: {err.cause}",
                f"{err.fix}; or leave {profile.name} out of the fleet",
            ) from None
        solved.append(FleetMember(ref, count, plan))
    return Fleet(tuple(solved), workload.num_prompts, workload.gen_len_mean)


def fleet_summary(fleet: Fleet) -> str:
    split = fleet.prompts_per_member()
    lines = [
        f"fleet of {fleet.num_machines} machines: {fleet.tok_s:,.1f} generated tok/s in total; "
        f"{fleet.num_prompts:,} prompts in about {fleet.wall_time_s / 3600:.2f} h",
        f"  {'profile':<26} {'machines':>8} {'tok/s each':>11} {'tok/s all':>10} {'share':>6} "
        f"{'prompts':>10} {'each':>8}  plan",
    ]
    for member, prompts in zip(fleet.members, split):
        plan = member.plan
        lines.append(
            f"  {plan.profile.name:<26} {member.count:>8} {member.tok_s_per_machine:>11,.1f} "
            f"{member.tok_s:>10,.1f} {member.tok_s / fleet.tok_s:>6.1%} {prompts:>10,} "
            f"{prompts / member.count:>8,.0f}  {plan.decisions.num_seqs} seqs, bottleneck {plan.bottleneck}"
        )
    return "\n".join(lines)

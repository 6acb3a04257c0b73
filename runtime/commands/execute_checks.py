"""Checks `runtime execute` makes on a plan before any work: right model, right machine, memory free (torch-free).

How it works: docs/design.md, `runtime/commands/execute_checks.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from planner.errors import UserError
from planner.hardware.profile import (
    HardwareProfile,
    find_profile_for_this_machine,
    load_profile,
)
from planner.hardware.this_machine import MachineIdentity, this_machine
from planner.plans.build import spec_hash
from planner.plans.plan import Plan
from planner.specs.spec import ModelSpec, load_spec
from planner.units import GiB


def checkpoint_dir_of(plan: Plan, given: Path | None) -> Path:
    """The checkpoint to run: `given`, else the plan's model reference when it is a checkpoint directory."""
    if given is not None:
        return given
    ref = Path(plan.model.ref)
    if (ref / "config.json").is_file():
        return ref
    raise UserError(
        f"the plan's model {plan.model.ref!r} is not a checkpoint directory", "pass --checkpoint DIR"
    )


def _warn_or_raise(force: bool, err: UserError) -> None:
    if not force:
        raise err
    print(f"warning (--force): {err.cause}", file=sys.stderr)


def architecture_differences(planned: ModelSpec, actual: ModelSpec) -> list[str]:
    theirs = actual.architecture()
    return [f"{k} {v!r} != {theirs[k]!r}" for k, v in planned.architecture().items() if v != theirs[k]]


def _planned_spec(plan: Plan) -> ModelSpec | None:
    try:
        spec = load_spec(plan.model.ref)
    except UserError:
        return None
    return spec if spec_hash(spec) == plan.model.hash else None


def check_plan_model(plan: Plan, spec: ModelSpec, force: bool = False) -> ModelSpec:
    planned = _planned_spec(plan)
    if spec_hash(spec) == plan.model.hash:
        return planned or spec
    if planned is not None:
        differences = architecture_differences(planned, spec)
        cause = (
            f"the plan was solved for model {plan.model.name}, whose architecture differs from the "
            f"checkpoint's {spec.name}: {'; '.join(differences[:4])}"
        )
    else:
        cause = (
            f"the plan was solved for model {plan.model.name} (spec hash {plan.model.hash}), not for the "
            f"checkpoint's {spec.name} (spec hash {spec_hash(spec)})"
        )
    _warn_or_raise(
        force,
        UserError(
            cause,
            "re-solve the plan for this checkpoint (planner solve --checkpoint DIR), "
            "or pass --force to run it anyway",
        ),
    )
    return spec


def _describes_this_machine(profile: HardwareProfile) -> bool:
    m = profile.machine
    device = None if profile.emulated_link is not None else m.device  # emulated: this CPU is the device
    return MachineIdentity(m.cpu, m.cores, device) == this_machine()


def _plan_profile(plan: Plan) -> HardwareProfile | None:
    try:
        profile = load_profile(plan.profile.ref)
    except UserError:
        return None
    return profile if profile.fingerprint() == plan.profile.fingerprint else None


def check_plan_machine(plan: Plan, force: bool = False) -> HardwareProfile:
    try:
        here = find_profile_for_this_machine()
    except UserError:
        here = None
    if here is not None and here.fingerprint() == plan.profile.fingerprint:
        return here
    planned = _plan_profile(plan)
    if planned is not None and _describes_this_machine(planned):
        return planned
    fix = "re-solve the plan with this machine's profile (planner solve), or pass --force to run it anyway"
    if here is None:
        err = UserError(
            f"cannot check the plan's hardware profile {plan.profile.name} "
            f"(fingerprint {plan.profile.fingerprint}) against this machine: it has no measured profile",
            "run `runtime profile` and re-solve the plan, or pass --force to run it anyway",
        )
    else:
        err = UserError(
            f"the plan was solved for hardware profile {plan.profile.name} (fingerprint "
            f"{plan.profile.fingerprint}), not this machine's {here.name} ({here.fingerprint()})",
            fix,
        )
    _warn_or_raise(force, err)
    profile = here or planned
    if profile is None:
        raise UserError(
            f"no hardware profile to report against: {plan.profile.ref} does not load with the plan's "
            "fingerprint and this machine has none",
            "run `runtime profile` to measure this machine",
        )
    return profile


def check_plan_fits_memory(plan: Plan, force: bool = False) -> None:
    import psutil

    host = plan.memory.get("host", {})
    needed = max(host.get("total", 0.0) - host.get("reserve", 0.0), float(plan.decisions.kv_budget_bytes))
    memory = psutil.virtual_memory()
    if needed > memory.total:
        raise UserError(
            f"the plan needs {needed / GiB:.1f} GiB of host memory (weights, KV cache, buffers) but this "
            f"machine has {memory.total / GiB:.1f} GiB in all, so it cannot run here even with --force",
            "re-solve the plan for this machine (planner solve with its profile, or a smaller --kv-gb / "
            "--host-gb)",
        )
    available = float(memory.available)
    if needed > available:
        _warn_or_raise(
            force,
            UserError(
                f"the plan needs {needed / GiB:.1f} GiB of host memory (weights, KV cache, buffers) but only "
                f"{available / GiB:.1f} GiB is free",
                "re-solve with a smaller --kv-gb / --host-gb, free memory, or pass --force",
            ),
        )

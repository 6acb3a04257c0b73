"""A plan for this machine when the caller gives none (`LLM(model=...)`, `runtime run-batch`).

`auto_plan(spec, model_ref, workload, kv_gb=None, profile=None, max_num_seqs=None) -> Plan` solves with the
planner, in-process: the hardware profile `profile` (name or path), else this machine's measured profile;
the KV budget `kv_gb`, else what `DEFAULT_SLOTS` sequences of the workload's longest length could hold,
capped at a quarter of the host's free memory. `max_num_seqs` (vLLM's name) caps the sequences in flight.
The plan never asks for more threads than torch is set to use (`torch.set_num_threads` limits a process).
`guess_workload(max_len)` is the workload a Python caller's plan is solved for before its prompts are known.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from planner.errors import UserError

if TYPE_CHECKING:
    from planner.hardware.profile import HardwareProfile
    from planner.plans.plan import Plan
    from planner.plans.workload import Workload
    from planner.specs.model_spec import ModelSpec

DEFAULT_SLOTS = 256
GUESS_PROMPT_LEN, GUESS_GEN_LEN, GUESS_NUM_PROMPTS = 512, 256, 1024
HOST_KV_FRACTION = 0.25
MIN_KV_GB = 0.001


def guess_workload(max_len: int) -> Workload:
    from planner.plans.workload import Workload

    prompt_len = max(1, min(GUESS_PROMPT_LEN, max_len // 2))
    return Workload.fixed(prompt_len, max(1, min(GUESS_GEN_LEN, max_len - prompt_len)), GUESS_NUM_PROMPTS)


def default_kv_gb(spec: ModelSpec, workload: Workload, profile: HardwareProfile) -> float:
    from planner.perf.costs import ModelCosts
    from planner.perf.memory import GiB

    wanted = DEFAULT_SLOTS * workload.max_sequence_len * ModelCosts(spec).kv_bytes_per_token() / GiB
    host = profile.machine.host_free_gib or profile.machine.host_memory_gib
    return max(MIN_KV_GB, min(wanted, HOST_KV_FRACTION * host))


def load_machine_profile(profile: str | None) -> tuple[HardwareProfile, str]:
    from planner.hardware.profile import find_profile_for_this_machine, list_profiles, load_profile

    if profile:
        return load_profile(profile), str(profile)
    try:
        found = find_profile_for_this_machine()
    except UserError as err:
        raise UserError(
            f"{err.cause}; shipped profiles: {', '.join(list_profiles()) or 'none'}",
            "run `runtime profile` once to measure this machine, or pass profile=NAME "
            "(--profile NAME) for a shipped one",
        ) from None
    return found, found.name


def auto_plan(
    spec: ModelSpec,
    model_ref: str,
    workload: Workload,
    kv_gb: float | None = None,
    profile: str | None = None,
    max_num_seqs: int | None = None,
) -> Plan:
    import torch

    from planner.perf.memory import Budgets
    from planner.plans.build import make_plan

    hardware, profile_ref = load_machine_profile(profile)
    kv = kv_gb if kv_gb is not None else default_kv_gb(spec, workload, hardware)
    plan = make_plan(
        spec,
        hardware,
        workload,
        Budgets.from_args(hardware, kv),
        model_ref=model_ref,
        profile_ref=profile_ref,
    )
    threads = torch.get_num_threads()
    changes = {
        name: min(getattr(plan.decisions, name) or threads, threads)
        for name in ("attention_threads", "compute_threads")
    }
    if max_num_seqs is not None:
        if max_num_seqs < 1:
            raise UserError(f"max_num_seqs={max_num_seqs} must be positive", "pass max_num_seqs >= 1")
        changes["num_seqs"] = min(plan.decisions.num_seqs, max_num_seqs)
        changes["attn_batch"] = min(plan.decisions.attn_batch, changes["num_seqs"])
    return replace(plan, decisions=replace(plan.decisions, **changes))

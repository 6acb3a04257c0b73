"""`planner sweep`: predictions over a range of one input, as a pandas DataFrame (written as CSV for plots).

`parse_vary("kv-gb=16:512")` -> ("kv-gb", 16, 512); `sweep_values(lo, hi, steps)` spaces values
geometrically (integers for integer inputs). `run_sweep(problem, name, values)` re-solves the plan at each
value; a value that no plan fits gives a row with `error` set and NaN figures rather than stopping the sweep.
Inputs that can vary: budgets (`kv-gb`, `host-gb`, `device-gb`), workload (`prompt-len`, `gen-len`,
`num-prompts`), resource speeds for what-ifs (`link-scale`, `cpu-scale`, `device-compute-scale`,
`host-memory-scale`) and, on an emulated-link profile, the link itself (`link-gbps`: where the link stops binding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from planner.errors import UserError
from planner.hardware.emulated_link import emulate_link
from planner.hardware.profile import HardwareProfile
from planner.perf.memory import Budgets, GiB
from planner.perf.model import PerfModel
from planner.perf.rates import RateScale
from planner.plans.build import model_ref_of, plan_from_solution, profile_ref_of
from planner.plans.solver import solve
from planner.plans.workload import Workload
from planner.specs.spec import ModelSpec

BUDGET_INPUTS = {"kv-gb": "kv_bytes", "host-gb": "host_bytes", "device-gb": "device_bytes"}
WORKLOAD_INPUTS = ("prompt-len", "gen-len", "num-prompts")
SCALE_INPUTS = {
    "link-scale": "link",
    "cpu-scale": "cpu",
    "device-compute-scale": "device_compute",
    "host-memory-scale": "host_memory",
}
LINK_INPUT = "link-gbps"
VARIABLE_INPUTS = tuple(BUDGET_INPUTS) + WORKLOAD_INPUTS + tuple(SCALE_INPUTS) + (LINK_INPUT,)


@dataclass(frozen=True)
class Problem:
    spec: ModelSpec
    profile: HardwareProfile
    workload: Workload
    budgets: Budgets
    scale: RateScale = RateScale()
    model_ref: str = ""
    profile_ref: str = ""
    batching: str = "module"  # module | model (`planner.perf.model.BATCHING_MODES`)


def parse_vary(text: str) -> tuple[str, float, float]:
    fix = f"write --vary NAME=LOW:HIGH with NAME one of {', '.join(VARIABLE_INPUTS)}, e.g. kv-gb=16:512"
    name, _, span = text.partition("=")
    low, _, high = span.partition(":")
    if name not in VARIABLE_INPUTS:
        raise UserError(f"cannot vary {name!r}", fix)
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        raise UserError(f"--vary {text!r}: LOW and HIGH must be numbers", fix) from None
    if not (0 < lo <= hi < 1e15) or not (math.isfinite(lo) and math.isfinite(hi)):
        raise UserError(f"--vary {text!r}: need 0 < LOW <= HIGH", fix)
    return name, lo, hi


def sweep_values(name: str, lo: float, hi: float, steps: int) -> list[float]:
    if not 1 <= steps <= 1000:
        raise UserError(f"--steps {steps} must be between 1 and 1000", "pass a smaller --steps")
    values = np.geomspace(lo, hi, steps) if steps > 1 else np.array([lo])
    if name in WORKLOAD_INPUTS:
        values = np.unique(np.maximum(np.round(values), 1))
    return [float(v) for v in values]


def vary(problem: Problem, name: str, value: float) -> Problem:
    if name == LINK_INPUT:
        emulated = problem.profile.emulated_link
        if emulated is None:
            raise UserError(
                f"--vary {LINK_INPUT} needs a profile of an emulated link; {problem.profile.name} has none",
                "make one with `runtime profile --emulate-link GBPS --emulate-device-gb G`, or vary "
                "link-scale",
            )
        return replace(problem, profile=emulate_link(problem.profile, value, emulated.device_memory_gib))
    if name in BUDGET_INPUTS:
        return replace(problem, budgets=replace(problem.budgets, **{BUDGET_INPUTS[name]: value * GiB}))
    if name in SCALE_INPUTS:
        return replace(problem, scale=replace(problem.scale, **{SCALE_INPUTS[name]: value}))
    w = problem.workload
    if name == "num-prompts":
        return replace(problem, workload=w.with_num_prompts(int(value)))
    prompt = int(value) if name == "prompt-len" else round(w.prompt_len_mean)
    gen = int(value) if name == "gen-len" else round(w.gen_len_mean)
    return replace(problem, workload=Workload.fixed(prompt, gen, w.num_prompts))


def solve_problem(problem: Problem):
    model = PerfModel(
        problem.spec,
        problem.profile,
        problem.workload,
        problem.budgets,
        problem.scale,
        batching=problem.batching,
    )
    return plan_from_solution(
        model,
        solve(model),
        model_ref_of(problem.spec, problem.model_ref or problem.spec.name),
        profile_ref_of(problem.profile, problem.profile_ref or problem.profile.name),
    )


def run_sweep(problem: Problem, name: str, values: list[float]) -> pd.DataFrame:
    rows = []
    if name == LINK_INPUT:
        vary(problem, name, values[0])  # a profile without an emulated link stops here, not per row
    for value in values:
        row: dict = {name: value}
        try:
            plan = solve_problem(vary(problem, name, value))
        except UserError as err:
            row["error"] = err.cause
            rows.append(row)
            continue
        p = plan.predicted
        row.update(
            generated_tok_s=p.generated_tok_s,
            decode_tok_s=p.decode_tok_s,
            prefill_tok_s=p.prefill_tok_s,
            wall_time_s=p.wall_time_s,
            num_seqs=plan.decisions.num_seqs,
            attn_batch=plan.decisions.attn_batch,
            expert_batch=plan.decisions.expert_batch,
            prefill_chunk=plan.decisions.prefill_chunk,
            resident_experts_per_layer=plan.decisions.resident_experts_per_layer,
            kv_budget_gib=plan.decisions.kv_budget_bytes / GiB,
            bottleneck=plan.bottleneck,
            bound_tok_s=plan.bound.tok_s,
            bound_binding=plan.bound.binding,
            s_mbu=p.s_mbu,
            s_mfu=p.s_mfu,
            usd_per_million_tokens=p.usd_per_million_tokens,
            link_busy=plan.utilisation.get("link"),
            batching=plan.decisions.batching,
            error="",
        )
        rows.append(row)
    return pd.DataFrame(rows)

"""The engine's modules: one vocabulary for the plan's predictions, the engine's timers, calibration and the
report (torch-free), its named groups, and the calls per decode step the planner prices, as data.

`Module` members are `str`s equal to (and hashed as) their names, so names read from YAML or JSON compare
equal to them; they are written as their plain names. `DECODE_CALLS` are the calls of a decode step the
planner prices per call (`planner.perf.overheads`); `UNPRICED_CALLS` the engine's other timed blocks.
tests/test_module_contract.py holds the engine's module timers to their sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np
import yaml


class Module(str, Enum):
    EMBED = "embed"
    QKV_PROJ = "qkv_proj"
    ATTENTION = "attention"
    O_PROJ = "o_proj"
    ROUTER = "router"
    EXPERTS = "experts"
    SHARED_EXPERTS = "shared_experts"
    DENSE_MLP = "dense_mlp"
    LM_HEAD = "lm_head"
    WEIGHT_COPY = "weight_copy"
    SAMPLING = "sampling"
    PREFILL = "prefill"  # prefill time amortised per decode step (the plan's decode_step only)

    def __str__(self) -> str:
        return self.value


yaml.SafeDumper.add_representer(Module, lambda dumper, module: dumper.represent_str(module.value))

M = Module
ALL_MODULES = tuple(Module)
# Modules that own weights (the others are pure compute or bookkeeping); on a device, its GEMM work.
WEIGHT_MODULES = (
    M.EMBED,
    M.QKV_PROJ,
    M.O_PROJ,
    M.ROUTER,
    M.EXPERTS,
    M.SHARED_EXPERTS,
    M.DENSE_MLP,
    M.LM_HEAD,
)
DEFAULT_RESIDENT = tuple(m for m in WEIGHT_MODULES if m is not M.EXPERTS)
DECODE_MODULES = tuple(m for m in ALL_MODULES if m is not M.PREFILL)  # timed per decode step
PREFILL_MODULES = tuple(m for m in DECODE_MODULES if m is not M.SAMPLING)  # timed per prefill chunk
FIT_MODULES = tuple(m for m in DECODE_MODULES if m not in (M.EMBED, M.SAMPLING))  # calibration fits these
LAYER_MODULES = (M.QKV_PROJ, M.ATTENTION, M.O_PROJ, M.ROUTER, M.EXPERTS, M.SHARED_EXPERTS, M.DENSE_MLP)


def module_names(modules) -> list[str]:
    """Plain names, for messages."""
    return [str(m) for m in modules]


@dataclass(frozen=True)
class Calls:
    """Timed calls of one module in a decode step of N sequences in `groups` token groups, attention
    micro-batches of b_a: `per` "step" (once), "row_batch" (lm_head rows, max(N / b_a, 1)),
    "extra_row_batch" (the same less one), or per layer of kind `layers` (all, moe, dense, shared: MoE layers
    of a model with shared experts) "micro_batch" (groups x max(N / groups / b_a, 1)) or "group" (groups)."""

    per: str
    layers: str = "all"


DECODE_CALLS: Mapping[Module, Calls] = {
    M.EMBED: Calls("step"),
    M.QKV_PROJ: Calls("micro_batch"),
    M.ATTENTION: Calls("micro_batch"),
    M.O_PROJ: Calls("micro_batch"),
    M.ROUTER: Calls("group", "moe"),
    M.EXPERTS: Calls("group", "moe"),
    M.SHARED_EXPERTS: Calls("group", "shared"),
    M.DENSE_MLP: Calls("group", "dense"),
    M.LM_HEAD: Calls("step"),
    M.SAMPLING: Calls("step"),
}
UNPRICED_CALLS: Mapping[Module, Calls] = {
    M.QKV_PROJ: Calls("step"),  # the step's rope tables: priced per element
    M.ROUTER: Calls("group", "all"),  # the mlp norm before every FFN: priced per element
    M.LM_HEAD: Calls("extra_row_batch"),  # lm_head and sampling run per b_a rows; the profile's
    M.SAMPLING: Calls("extra_row_batch"),  # per-call cost is measured at one sequence and priced once
}


def micro_batches(num_seqs, groups, attn_batch):
    """Attention micro-batches of a decode step: per token group, max(n / b_a, 1) (n = N / groups)."""
    n = np.asarray(num_seqs, dtype=np.float64) / groups
    return groups * np.maximum(n / np.maximum(attn_batch, 1.0), 1.0)


PER_STEP = ("step", "row_batch", "extra_row_batch")  # the other kinds count per layer


def calls_per(calls: Calls, num_seqs, groups: int, attn_batch):
    """How many calls `calls` makes per step (kinds of PER_STEP) or per layer (the others)."""
    if calls.per == "micro_batch":
        return micro_batches(num_seqs, groups, attn_batch)
    if calls.per == "group":
        return float(groups)
    row_batches = np.maximum(np.asarray(num_seqs, dtype=np.float64) / np.maximum(attn_batch, 1.0), 1.0)
    return {"step": 1.0, "row_batch": row_batches, "extra_row_batch": row_batches - 1.0}[calls.per]


def step_calls(
    table: Mapping[Module, Calls], num_seqs, groups: int, attn_batch, layers: Mapping[str, int]
) -> dict[Module, np.ndarray]:
    """Calls per decode step of each module of `table`; `layers` counts the layers of each kind."""
    return {
        module: calls_per(calls, num_seqs, groups, attn_batch)
        * (1 if calls.per in PER_STEP else layers[calls.layers])
        for module, calls in table.items()
    }

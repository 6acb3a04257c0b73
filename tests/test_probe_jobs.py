"""The profiler's probe jobs: KV budgets that give exactly N sequences, probe models apart from the test minis, and
the probe step fitting only the efficiency constants `planner.calibration.calibrate.fit` fits, on a tiny engine job."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from planner.calibration.calibrate import CONSTANTS
from planner.hardware.profile import Efficiency, load_profile
from planner.perf.memory import Budgets, kv_budget_gib
from planner.perf.model import Candidates, PerfModel
from planner.plans.build import make_plan
from planner.specs.spec import load_spec
from tests.planner_support import make_profile

torch = pytest.importorskip("torch")

from runtime.profiler.probe_jobs import (  # noqa: E402  (needs torch)
    PROBE_GQA,
    PROBE_MLA,
    PROBE_TINY,
    ProbeBudget,
    ProbeJob,
    calibrate_on_probes,
)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize("spec", [PROBE_GQA, PROBE_MLA, PROBE_TINY], ids=lambda s: s.name)
@pytest.mark.parametrize("device", [False, True], ids=["cpu-only", "with-device"])
def test_kv_budget_allows_exactly_n_sequences(spec, device):
    profile = make_profile(device=device, cores=2, host_gib=24.0)
    for num_seqs in (4, 8, 32):
        job = ProbeJob(spec, num_seqs, 48, 16)
        workload = job.workload()
        budgets = Budgets.from_args(profile, kv_budget_gib(spec, workload, num_seqs))
        model = PerfModel(spec, profile, workload, budgets)
        c = Candidates.of(
            residency=[model.layout.max_residency],
            attn_batch=[8],
            expert_batch=[64],
            prefill_chunk=[512],
            attention_threads=[2],
        )
        assert int(np.floor(model.memory.max_num_seqs(c)[0])) == num_seqs
        assert make_plan(spec, profile, workload, budgets).decisions.num_seqs == num_seqs


def test_probe_models_are_not_the_test_minis():
    minis = [load_spec(str(path)) for path in sorted(MODELS_DIR.glob("*-mini.yaml"))]
    assert minis
    for probe in (PROBE_GQA, PROBE_MLA):
        shape = (probe.hidden_size, probe.num_layers, probe.num_experts, probe.moe_intermediate_size)
        assert all(
            shape != (m.hidden_size, m.num_layers, m.num_experts, m.moe_intermediate_size) for m in minis
        )
    assert PROBE_MLA.attention == "mla" and (PROBE_MLA.kv_lora_rank, PROBE_MLA.qk_rope_head_dim) == (512, 64)


def test_probe_step_fits_only_the_fitted_constants(tmp_path):
    shipped = load_profile("cpu-amd-epyc-2c")  # measured, with an overheads section
    profile = replace(
        shipped, machine=replace(shipped.machine, cores=1), efficiency=Efficiency(), notes="measured."
    )
    budget = ProbeBudget(
        "test", (ProbeJob(PROBE_TINY, 4, 16, 8), ProbeJob(PROBE_TINY, 8, 16, 8)), repeats=2, seconds=0.0
    )  # every job runs; past the budget, once
    lines = []
    threads = torch.get_num_threads()
    fitted = calibrate_on_probes(profile, torch.device("cpu"), budget, log=lines.append)
    assert torch.get_num_threads() == threads

    before, after = profile.efficiency, fitted.efficiency
    changed = {name for name in CONSTANTS if getattr(after, name) != getattr(before, name)}
    assert changed and "copy" not in changed  # nothing streams: copy carries no information
    assert replace(fitted, efficiency=before, notes=profile.notes) == profile
    assert fitted.provenance.kind == "measured"
    note = fitted.notes.splitlines()[-1]
    assert fitted.notes.startswith("measured.\n") and "2 probe jobs" in note and "probe-tiny N=4" in note
    assert "one run for probe-tiny N=8: time budget" in note and any(
        "one run, not 2" in line for line in lines
    )

    again = load_profile(fitted.save(tmp_path / "fitted.yaml"))
    assert again == fitted and again.fingerprint() != profile.fingerprint()

"""Machine identity and fingerprint: one naming for writing and finding profiles, rates that separate machines
of the same CPU and cores, and the spot check `runtime execute` warns with (figures injected, no timing)."""

from __future__ import annotations

from dataclasses import replace

import pytest

import planner.hardware.this_machine as this_machine_module
from planner.errors import UserError
from planner.hardware.profile import (
    HardwareProfile,
    find_profile_for_this_machine,
    load_profile,
    path_for_this_machine,
)
from planner.hardware.this_machine import (
    SPOT_GEMM,
    MachineIdentity,
    MachineRates,
    rate_differences,
    this_machine,
)
from tests.planner_support import profile_dict

SLOW_MEMORY = MachineRates(memory_read_gbps=25.0, gemm_tflops=0.40)
FAST_MEMORY = MachineRates(memory_read_gbps=58.0, gemm_tflops=0.40)


def _profile_of_this_machine(rates: MachineRates | None, date: str = "2026-01-01") -> HardwareProfile:
    here = this_machine()
    profile = HardwareProfile.from_dict(
        {
            **profile_dict(device=here.device is not None),
            "name": here.profile_name,
            "provenance": {"kind": "measured", "date": date},
        }
    )
    machine = replace(profile.machine, cpu=here.cpu, cores=here.cores, device=here.device, fingerprint=rates)
    return replace(profile, machine=machine)


@pytest.fixture
def profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("MOELENS_PROFILES_DIR", str(tmp_path))
    return tmp_path


def test_fingerprint_separates_same_cpu_and_cores_by_bandwidth():
    a, b = MachineIdentity("AMD EPYC", 2, None), MachineIdentity("AMD EPYC", 2, None)
    assert a.profile_name == b.profile_name == "cpu-amd-epyc-2c"  # the identity cannot tell them apart
    [sentence] = rate_differences(FAST_MEMORY, SLOW_MEMORY)
    assert "58 GB/s" in sentence and "25 GB/s" in sentence and "+132%" in sentence
    assert (
        rate_differences(FAST_MEMORY, replace(FAST_MEMORY, memory_read_gbps=52.0)) == []
    )  # +12%: same class
    slower_gemm = replace(FAST_MEMORY, gemm_tflops=0.25)
    [sentence] = rate_differences(FAST_MEMORY, slower_gemm)
    assert "TFLOP/s" in sentence and "+60%" in sentence
    assert FAST_MEMORY.tag != SLOW_MEMORY.tag


def test_rates_round_trip_and_derive_from_older_profiles(tmp_path):
    stored = _profile_of_this_machine(FAST_MEMORY)
    assert load_profile(stored.save(tmp_path / "p.yaml")).machine_rates() == FAST_MEMORY
    older = _profile_of_this_machine(None)
    derived = load_profile(older.save(tmp_path / "q.yaml")).machine_rates()
    assert derived.memory_read_gbps == older.memory.read_gbps
    assert derived.gemm_tflops == older.gemm_tflops(
        SPOT_GEMM.rows, SPOT_GEMM.n, SPOT_GEMM.k, SPOT_GEMM.matrices
    )
    assert stored.fingerprint() == older.fingerprint()  # the plan-facing content hash ignores the machine


def test_lookup_prefers_the_profile_whose_fingerprint_matches(profiles):
    slow = _profile_of_this_machine(SLOW_MEMORY, date="2026-01-02")
    slow.save(path_for_this_machine(SLOW_MEMORY))
    fast_path = path_for_this_machine(FAST_MEMORY)  # the name is taken by other rates: a variant
    assert fast_path.stem == f"{this_machine().profile_name}-{FAST_MEMORY.tag}"
    replace(_profile_of_this_machine(FAST_MEMORY), name=fast_path.stem).save(fast_path)
    assert path_for_this_machine(SLOW_MEMORY).stem == this_machine().profile_name  # same rates: replace it

    assert find_profile_for_this_machine(FAST_MEMORY).name == fast_path.stem
    assert find_profile_for_this_machine(SLOW_MEMORY).name == this_machine().profile_name
    assert find_profile_for_this_machine().name == this_machine().profile_name  # unmeasured: the newest
    with pytest.raises(UserError, match=r"(?s)reads memory at 120 GB/s.*runtime profile"):
        find_profile_for_this_machine(replace(FAST_MEMORY, memory_read_gbps=120.0))


def test_naming_and_lookup_use_one_identity(profiles, monkeypatch):
    # nvidia-smi's name for the device; torch would say something else, and neither side asks torch
    monkeypatch.setattr(this_machine_module, "_device_name", lambda: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(this_machine_module, "_cpu_model", lambda: "Intel(R) Xeon(R) Platinum 8480+")
    path = path_for_this_machine(FAST_MEMORY)
    assert path.stem == "nvidia-h100-80gb-hbm3-intel-xeon-platinum-8480-" + f"{this_machine().cores}c"
    replace(_profile_of_this_machine(FAST_MEMORY), name=path.stem).save(path)
    assert find_profile_for_this_machine(FAST_MEMORY).name == path.stem


def test_spot_check_warns_beyond_twenty_percent():
    from runtime.profiler.spot_check import spot_check_warnings

    profile = _profile_of_this_machine(SLOW_MEMORY)
    [warning] = spot_check_warnings(FAST_MEMORY, profile)
    assert warning == (
        "this machine reads memory at 58 GB/s, the plan's profile says 25 GB/s (+132%): "
        "re-profile with `runtime profile` and re-plan"
    )
    assert spot_check_warnings(replace(SLOW_MEMORY, memory_read_gbps=29.5, gemm_tflops=0.33), profile) == []
    both = spot_check_warnings(MachineRates(memory_read_gbps=19.0, gemm_tflops=0.50), profile)
    assert len(both) == 2 and "-24%" in both[0] and "+25%" in both[1]


def test_spot_measurement_gives_positive_rates(single_torch_thread):
    import torch

    from runtime.profiler.spot_check import measure_rates

    rates = measure_rates(torch.device("cpu"))
    assert rates.memory_read_gbps > 0 and rates.gemm_tflops > 0

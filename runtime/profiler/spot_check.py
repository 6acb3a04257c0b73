"""A check of under a second that this machine is still the one a profile describes (`runtime execute` runs it).

`measure_rates(device) -> MachineRates` times, with the profiler's own functions, the host memory read rate
(`measure_host_memory` over 4x the last-level cache, at least 64 MiB) and `SPOT_GEMM` on `device`
(`measure_gemm_curve` at its one row count, one weight set: at 256 rows the GEMM is compute-bound, so caches
barely matter); `runtime profile` stores the same two figures as the profile's `machine.fingerprint`.
`spot_check_warnings(measured, profile, profile_name)` returns one sentence per figure more than 20% away from
the profile's (`HardwareProfile.machine_rates`), each naming the fix. `machine_speed(profile, device)`: the spot
GEMM's rate now over the fingerprint's (probe jobs and benchmarks scale or label their timings by it).
"""

from __future__ import annotations

import torch

from planner.hardware.profile import HardwareProfile
from planner.hardware.this_machine import SPOT_GEMM, TOLERANCE, MachineRates, rate_differences
from runtime.host_allocator import keep_temporaries_in_heap
from runtime.profiler.gemm import measure_gemm_curve
from runtime.profiler.grids import MIB, GemmShape
from runtime.profiler.links import measure_host_memory
from runtime.profiler.machine import last_level_cache_bytes

SPOT_SHAPE = GemmShape("spot expert_ffn", "expert_ffn", SPOT_GEMM.n, SPOT_GEMM.k)
FIX = "re-profile with `runtime profile` and re-plan"


def measure_rates(device: torch.device) -> MachineRates:
    keep_temporaries_in_heap()  # the regime `runtime profile` measured the fingerprint in
    nbytes = max(64 * MIB, 4 * last_level_cache_bytes(torch.device("cpu")))
    memory = measure_host_memory(nbytes, repeats=3, budget_s=0.3)
    curve = measure_gemm_curve(
        SPOT_SHAPE,
        (SPOT_GEMM.rows,),
        device,
        torch.bfloat16,
        cache_bytes=0,
        budget_s=0.3,
        max_call_s=0.3,
        repeats=3,
    )
    return MachineRates(memory_read_gbps=memory.read_gbps, gemm_tflops=curve.tflops[0])


def machine_speed(profile: HardwareProfile, device: torch.device) -> float:
    """The spot GEMM's rate now over the profile's fingerprint (1.0 where the profile has none): how much faster
    or slower than when it was profiled the machine runs now (a VM's speed drifts with its neighbours)."""
    if profile.machine.fingerprint is None:
        return 1.0
    return measure_rates(device).gemm_tflops / profile.machine.fingerprint.gemm_tflops


def spot_check_warnings(
    measured: MachineRates,
    profile: HardwareProfile,
    profile_name: str = "the plan's profile",
    tolerance: float = TOLERANCE,
) -> list[str]:
    return [
        f"{sentence}: {FIX}"
        for sentence in rate_differences(measured, profile.machine_rates(), profile_name, tolerance)
    ]

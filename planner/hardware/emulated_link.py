"""The emulated accelerator: this machine's CPU behind a link paced to a given GB/s, with a capped device memory.

How it works: docs/design.md, `planner/hardware/emulated_link.py`.
"""

from __future__ import annotations

import math
from dataclasses import replace

from planner.errors import UserError
from planner.hardware.profile import HardwareProfile, Links, RateCurve
from planner.hardware.profile_schema import EmulatedLink

DEVICE_WORDS = "emulated link"
LINK_SIZES = (1024.0, float(1 << 30))  # flat curves: the paced rate at every size
MAX_LINK_GBPS = 10_000.0


def device_name(gbps: float) -> str:
    return f"CPU behind an {DEVICE_WORDS} ({gbps:g} GB/s)"


def check_link_args(gbps: float, device_gib: float) -> None:
    if not (isinstance(gbps, (int, float)) and math.isfinite(gbps) and 0 < gbps <= MAX_LINK_GBPS):
        raise UserError(
            f"--emulate-link {gbps!r} is not a link speed in GB/s",
            f"pass a number between 0 and {MAX_LINK_GBPS:g}, e.g. --emulate-link 1.0",
        )
    if not (isinstance(device_gib, (int, float)) and math.isfinite(device_gib) and device_gib > 0):
        raise UserError(
            f"--emulate-device-gb {device_gib!r} is not a device memory size in GiB",
            "pass a positive size, e.g. --emulate-device-gb 0.4",
        )


def emulate_link(profile: HardwareProfile, gbps: float, device_gib: float) -> HardwareProfile:
    """`profile` (CPU-only, or already emulated) as the CPU behind a `gbps` link with `device_gib` of memory."""
    check_link_args(gbps, device_gib)
    if profile.has_device and profile.emulated_link is None:
        raise UserError(
            f"profile {profile.name} has a real device ({profile.machine.device}); an emulated link "
            "stands in for one on a CPU",
            "emulate on a CPU-only profile (or run on the device itself)",
        )
    flat = RateCurve(sizes=LINK_SIZES, gbps=(float(gbps), float(gbps)))
    machine = replace(
        profile.machine,
        device=device_name(gbps),
        device_memory_gib=float(device_gib),
        device_free_gib=None,
        interconnect=f"{DEVICE_WORDS}, {gbps:g} GB/s each way",
    )
    base = profile.name.split("-emulated-")[0]
    return replace(
        profile,
        name=f"{base}-emulated-{gbps:g}gbps-{device_gib:g}gib",
        machine=machine,
        links=Links(flat, flat, flat, flat),
        emulated_link=EmulatedLink(gbps=float(gbps), device_memory_gib=float(device_gib)),
        notes=(profile.notes + "\n" if profile.notes else "")
        + f"emulated link: {gbps:g} GB/s each way, {device_gib:g} GiB device memory; compute and "
        "attention are this CPU's measurements",
    )


def describe_device(profile: HardwareProfile) -> str:
    """How reports and progress name the device."""
    if profile.emulated_link is not None:
        return device_name(profile.emulated_link.gbps)
    return profile.machine.device or "CPU only"

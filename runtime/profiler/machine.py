"""What this machine is: CPU model, usable cores, CPU flags, host and device memory, software versions.

`describe_machine(device, fingerprint)` returns a `planner.hardware.profile.Machine`: CPU, cores and device name from
`planner.hardware.this_machine.this_machine()` (the identity profiles are named and found by; torch's device name only
when no NVIDIA tool names the device). `last_level_cache_bytes(device)` sizes the buffers that must not fit in
caches.
"""

from __future__ import annotations

import re
from pathlib import Path

import psutil
import torch

from planner.hardware.profile import Machine
from planner.hardware.this_machine import MachineRates, this_machine
from planner.units import GiB

INTERESTING_FLAGS = re.compile(r"^(avx2|fma|avx512\w*|amx\w*|avx_vnni|sve\w*|neon|asimd\w*)$")


def cpu_flags() -> tuple[str, ...]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].split()
                return tuple(sorted({f for f in flags if INTERESTING_FLAGS.match(f)}))
    except OSError:
        pass
    return ()


def describe_machine(device: torch.device, fingerprint: MachineRates | None = None) -> Machine:
    identity = this_machine()
    vm = psutil.virtual_memory()
    name, total, free, interconnect = None, 0.0, None, None
    if device.type == "cuda":
        name = identity.device or torch.cuda.get_device_name(device)
        free_b, total_b = torch.cuda.mem_get_info(device)
        total, free = round(total_b / GiB, 2), round(free_b / GiB, 2)
        interconnect = _pcie_link(device)
    return Machine(
        cpu=identity.cpu,
        cores=identity.cores,
        host_memory_gib=round(vm.total / GiB, 2),
        device=name,
        device_memory_gib=total,
        cpu_flags=cpu_flags(),
        host_free_gib=round(vm.available / GiB, 2),
        device_free_gib=free,
        interconnect=interconnect,
        torch=str(torch.__version__),
        cuda=torch.version.cuda if device.type == "cuda" else None,
        fingerprint=fingerprint,
    )


def _pcie_link(device: torch.device) -> str | None:
    """'PCIe 4.0 x16' from sysfs for the device's PCI address, when the platform exposes it."""
    props = torch.cuda.get_device_properties(device)
    ids = [getattr(props, name, None) for name in ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    if None in ids:
        return None
    bus = f"{ids[0]:04x}:{ids[1]:02x}:{ids[2]:02x}.0"
    root = Path("/sys/bus/pci/devices") / bus
    try:
        speed = (root / "current_link_speed").read_text().split()[0]
        width = (root / "current_link_width").read_text().strip()
    except (OSError, IndexError):
        return None
    generation = {"2.5": "1.0", "5.0": "2.0", "8.0": "3.0", "16.0": "4.0", "32.0": "5.0", "64.0": "6.0"}
    return f"PCIe {generation.get(speed, speed + ' GT/s')} x{width}"


def last_level_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)) or 64 << 20
    largest = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        largest = max(largest, int(text.rstrip("KMG")) * scale)
    return largest or 64 << 20

"""Which machine this is, torch-free: one identity for naming profiles and finding them, and a fingerprint.

How it works: docs/design.md, `planner/hardware/this_machine.py`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TOLERANCE = 0.2


@dataclass(frozen=True)
class SpotGemm:
    """The GEMM whose rate fingerprints a machine: `matrices` [n, k] weights times `rows` rows in a row."""

    rows: int
    n: int
    k: int
    matrices: int

    @property
    def label(self) -> str:
        return f"an expert FFN of {self.k}x{self.n} at {self.rows} rows in bf16"


SPOT_GEMM = SpotGemm(
    rows=256, n=768, k=2048, matrices=3
)  # measured by every profile sizing (clamped in tiny)


@dataclass(frozen=True)
class MachineIdentity:
    cpu: str
    cores: int  # usable logical CPUs
    device: str | None  # None: CPU only

    @property
    def profile_name(self) -> str:
        """The file stem of this machine's measured profile, e.g. `nvidia-a40-intel-xeon-platinum-8380-80c`."""
        host = f"{_slug(self.cpu) or 'cpu'}-{self.cores}c"
        return f"{_slug(self.device)}-{host}" if self.device else f"cpu-{host}"


@dataclass(frozen=True)
class MachineRates:
    memory_read_gbps: float  # host memory read (a sum over a buffer much larger than the caches)
    gemm_tflops: float  # SPOT_GEMM on the device (the CPU when there is none)

    def to_dict(self) -> dict:
        return {"memory_read_gbps": self.memory_read_gbps, "gemm_tflops": self.gemm_tflops}

    @property
    def tag(self) -> str:
        """A file-name tag for profiles of one identity with different rates: `mem58-gemm377`."""
        return f"mem{self.memory_read_gbps:.0f}-gemm{1000 * self.gemm_tflops:.0f}"


def rate_differences(
    measured: MachineRates,
    reference: MachineRates,
    reference_name: str = "the profile",
    tolerance: float = TOLERANCE,
) -> list[str]:
    """Sentences for each figure of `measured` more than `tolerance` away from `reference`'s."""
    out = []
    for what, unit, mine, theirs in (
        ("reads memory at", "GB/s", measured.memory_read_gbps, reference.memory_read_gbps),
        (f"runs {SPOT_GEMM.label} at", "TFLOP/s", measured.gemm_tflops, reference.gemm_tflops),
    ):
        change = mine / theirs - 1
        if abs(change) > tolerance:
            out.append(
                f"this machine {what} {mine:.3g} {unit}, {reference_name} says {theirs:.3g} {unit} "
                f"({100 * change:+.0f}%)"
            )
    return out


def this_machine() -> MachineIdentity:
    return MachineIdentity(_cpu_model(), usable_cores(), _device_name())


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm|c)\)", " ", text.lower())
    text = re.sub(r"@.*$", " ", text)  # clock speed
    text = re.sub(r"\b\d+-core\b|\bprocessor\b|\bcpu\b", " ", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def _cpu_model() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _device_name() -> str | None:
    """First visible NVIDIA GPU's name without importing torch: nvidia-smi, else the driver's /proc entry."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None
    names: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            names = [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            names = []
    if not names:
        for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
            try:
                lines = info.read_text().splitlines()
            except OSError:
                continue
            names += [line.split(":", 1)[1].strip() for line in lines if line.startswith("Model:")]
    if not names:
        return None
    first = (visible or "0").split(",")[0].strip()
    return names[int(first)] if first.isdigit() and int(first) < len(names) else names[0]

"""Hardware profiles: the measured (or datasheet-derived) rates the performance model runs on, torch-free.

How it works: docs/design.md, `planner/hardware/profile.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from planner import locations
from planner.errors import UserError
from planner.hardware.profile_parse import parse_profile_dict
from planner.hardware.profile_schema import (
    CALL_OVERHEADS,
    DEQUANT_FORMATS,
    ELEMENTWISE_COSTS,
    SCHEMA_VERSION,
    AttentionCurve,
    CallOverheads,
    Efficiency,
    ElementwiseBySize,
    ElementwiseCosts,
    EmulatedLink,
    GemmCurve,
    Links,
    Machine,
    Memory,
    Overheads,
    Price,
    Provenance,
    RateCurve,
    steady_state_order,
)
from planner.hardware.this_machine import (
    SPOT_GEMM,
    MachineIdentity,
    MachineRates,
    rate_differences,
    this_machine,
)
from planner.values import is_int

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "CALL_OVERHEADS",
    "DEQUANT_FORMATS",
    "ELEMENTWISE_COSTS",
    "SCHEMA_VERSION",
    "AttentionCurve",
    "CallOverheads",
    "Efficiency",
    "EmulatedLink",
    "ElementwiseBySize",
    "ElementwiseCosts",
    "GemmCurve",
    "HardwareProfile",
    "Links",
    "Machine",
    "Memory",
    "Overheads",
    "Price",
    "Provenance",
    "RateCurve",
    "find_profile_for_this_machine",
    "list_profiles",
    "load_profile",
    "path_for_this_machine",
]


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    provenance: Provenance
    machine: Machine
    memory: Memory
    gemm_dtype: str
    gemm_curves: tuple[GemmCurve, ...]
    attention_curves: tuple[AttentionCurve, ...]
    links: Links | None = None  # None: no separate device (CPU-only)
    price: Price = field(default_factory=Price)
    efficiency: Efficiency = field(default_factory=Efficiency)
    overheads: Overheads = field(default_factory=Overheads)  # all zero: not measured (section absent)
    notes: str = ""
    schema_version: int = SCHEMA_VERSION
    emulated_link: EmulatedLink | None = (
        None  # the device is the CPU behind a paced link (`planner.hardware.emulated_link`)
    )
    dequant_ns: dict[str, float] = field(
        default_factory=dict
    )  # stored format -> ns per weight (DEQUANT_FORMATS)
    # float32 curves only: (rows, rate of 16-bit weights / float32 weights) measured at a few row counts, what a
    # plan whose GEMMs run in the model dtype scales the curves by (`planner.perf.gemm_dtype`); () not measured
    gemm_narrow_speed: tuple[tuple[float, float], ...] = ()

    # ---- (de)serialisation -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: object, source: str = "profile") -> HardwareProfile:
        """Validate a YAML-loaded mapping; a UserError names the first bad field and `source`."""
        return cls(**parse_profile_dict(data, source))

    def to_dict(self) -> dict:
        """The YAML form; the `overheads` section only when measured (datasheet profiles have none)."""
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "provenance": self.provenance.to_dict(),
            "machine": self.machine.to_dict(),
            "price": self.price.to_dict(),
            "links": None if self.links is None else self.links.to_dict(),
            **({"emulated_link": self.emulated_link.to_dict()} if self.emulated_link is not None else {}),
            "memory": self.memory.to_dict(),
            "gemm": self._gemm_dict(),
            "attention": {"curves": [c.to_dict() for c in self.attention_curves]},
            "efficiency": self.efficiency.to_dict(),
            **({"overheads": self.overheads.to_dict()} if self.overheads.measured else {}),
            **({"dequant_ns": dict(self.dequant_ns)} if self.dequant_ns else {}),
            "notes": self.notes,
        }

    def _gemm_dict(self) -> dict:
        gemm: dict = {"dtype": self.gemm_dtype}
        if self.gemm_narrow_speed:
            rows, ratio = zip(*self.gemm_narrow_speed)
            gemm["narrow_speed"] = {"rows": [int(r) for r in rows], "ratio": list(ratio)}
        gemm["curves"] = [c.to_dict() for c in self.gemm_curves]
        return gemm

    def to_yaml(self) -> str:
        return yaml.dump(
            self.to_dict(), Dumper=_ProfileDumper, sort_keys=False, width=110, allow_unicode=True
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    def fingerprint(self) -> str:
        """Short stable hash of the measured content (curves, rates, overheads when measured, non-default
        efficiency), not names or prices."""
        d = self.to_dict()
        content = {
            k: d[k]
            for k in ("links", "emulated_link", "memory", "gemm", "attention", "overheads", "dequant_ns")
            if k in d
        }
        defaults = Efficiency().to_dict()  # constants at their default leave the hash unchanged, so
        content["efficiency"] = {
            k: v for k, v in d["efficiency"].items() if v != defaults[k]
        }  # adding one is safe
        blob = json.dumps(_floats(content), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def machine_rates(self) -> MachineRates:
        """The rates this profile says its machine shows: its stored fingerprint, else its memory read rate and
        its GEMM rate at the spot shape (datasheet and older profiles)."""
        if self.machine.fingerprint is not None:
            return self.machine.fingerprint
        spot = SPOT_GEMM
        return MachineRates(self.memory.read_gbps, self.gemm_tflops(spot.rows, spot.n, spot.k, spot.matrices))

    def with_efficiency(self, **constants: float) -> HardwareProfile:
        return replace(self, efficiency=replace(self.efficiency, **constants))

    # ---- interpolation -----------------------------------------------------------------------------
    @property
    def has_device(self) -> bool:
        return self.machine.device is not None

    @property
    def computes_on_host(self) -> bool:
        """Whether GEMMs run on the host cores: no device, or the CPU behind an emulated link."""
        return not self.has_device or self.emulated_link is not None

    @property
    def max_threads(self) -> int:
        return self.machine.cores

    def gemm_tflops(self, m: float, n: int, k: int, matrices: int = 1) -> float:
        """Rate of `matrices` [m, k] x [k, n] GEMMs in a row (an expert FFN: 3) in the model dtype (TFLOP/s).

        A measured shape of the same kind is read off its curve; any other from the time model fitted at m
        over all curves (`gemm_time_model`), so small shapes pay their fixed costs and large ones their bytes."""
        if n <= 0 or k <= 0 or matrices <= 0:
            raise ValueError(f"gemm shape must be positive, got n={n} k={k} matrices={matrices}")
        for curve in self.gemm_curves:
            if (curve.n, curve.k, curve_matrices(curve)) == (n, k, matrices):
                return curve.tflops_at(m)
        per_call, per_element = self.gemm_time_model(m)
        seconds = matrices * per_call + matrices * n * k * per_element
        return 2.0 * matrices * n * k * m / seconds / 1e12

    def gemm_time_model(self, m: float) -> tuple[float, float]:
        """(seconds per matrix call, seconds per weight element) at m rows: t = a * matrices + b * elements fitted
        to every measured curve at m (least squares on relative error, a, b >= 0; one curve: b alone)."""
        u, v = [], []
        for curve in self.gemm_curves:
            mats = curve_matrices(curve)
            elements = mats * curve.n * curve.k
            seconds = 2.0 * elements * m / (curve.tflops_at(m) * 1e12)
            u.append(mats / seconds)
            v.append(elements / seconds)
        suu, svv, suv = sum(x * x for x in u), sum(x * x for x in v), sum(x * y for x, y in zip(u, v))
        su, sv = sum(u), sum(v)
        det = suu * svv - suv * suv
        if len(u) > 1 and det > 1e-12 * suu * svv:
            a, b = (su * svv - sv * suv) / det, (sv * suu - su * suv) / det
            if a >= 0 and b >= 0:
                return a, b
            if b < 0:
                return su / suu, 0.0
        return 0.0, sv / svv

    def h2d_gbps(self, nbytes: float, pinned: bool = True) -> float:
        if self.links is None:
            return self.memory.copy_gbps
        return (self.links.h2d_pinned if pinned else self.links.h2d_pageable).gbps_at(nbytes)

    def d2h_gbps(self, nbytes: float, pinned: bool = True) -> float:
        if self.links is None:
            return self.memory.copy_gbps
        return (self.links.d2h_pinned if pinned else self.links.d2h_pageable).gbps_at(nbytes)

    def attention_gbps(
        self,
        threads: float,
        layout: str = "gqa",
        *,
        batch: int | None = None,
        context: int | None = None,
        group: int | None = None,
    ) -> float:
        """KV bytes read per second by CPU decode attention with `threads` threads.

        Picks the curve of this layout (or, if the profile has none, of any layout) nearest in log scale
        to the given batch/context/group; with none given, the largest batch x context (the steady state
        of high-throughput decoding).
        """
        curves = [c for c in self.attention_curves if c.layout == layout] or list(self.attention_curves)
        wanted = {"batch": batch, "context": context, "group": group}
        if all(v is None for v in wanted.values()):
            curve = max(curves, key=steady_state_order)
        else:

            def distance(c: AttentionCurve) -> float:
                return sum(
                    abs(math.log(max(v, 1) / getattr(c, key))) for key, v in wanted.items() if v is not None
                )

            curve = min(curves, key=distance)
        return curve.gbps_at_threads(threads)


def _floats(value: object) -> object:
    """Numbers as floats throughout, so 1024 and 1024.0 hash alike."""
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if is_int(value) and abs(value) < 2**1023:  # beyond float range an int is hashed as itself
        return float(value)
    return value


# ---- YAML ------------------------------------------------------------------------------------------
class _ProfileDumper(yaml.SafeDumper):
    """Block style for mappings, flow style for lists of numbers or short words (curves stay compact)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(x, (int, float)) for x in data) or all(
        isinstance(x, str) and len(x) < 24 for x in data
    )
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_ProfileDumper.add_representer(list, _represent_list)
_ProfileDumper.add_representer(str, _represent_str)


# ---- finding profiles ------------------------------------------------------------------------------
def list_profiles() -> list[str]:
    """Names of the profiles in the user dir and shipped data (planner.locations), sorted."""
    return locations.known_names("profiles")


def _where() -> str:
    return f"{locations.user_dir('profiles')} or the shipped profiles"


def _resolve(name_or_path: str | Path) -> Path | Traversable:
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.suffix in (".yaml", ".yml") or "/" in text or os.sep in text:
        if not candidate.is_file():
            raise UserError(
                f"hardware profile file {text} does not exist",
                "pass an existing profile YAML or a known profile name",
            )
        return candidate
    path = locations.find("profiles", text)
    if path is None:
        known = ", ".join(list_profiles()) or "none"
        raise UserError(
            f"no hardware profile named {text!r} in {_where()} (known: {known})",
            "run `make profile` to measure this machine, or pass a known name or a YAML path",
        )
    return path


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    path = _resolve(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError) as err:  # ValueError: not UTF-8, huge int
        raise UserError(
            f"hardware profile {path} is not valid YAML: {str(err)[:300]}",
            "fix the file or re-create it with `runtime profile`",
        ) from None
    return HardwareProfile.from_dict(data, source=str(path))


# ---- this machine ----------------------------------------------------------------------------------
def _profiles_of(identity: MachineIdentity) -> list[HardwareProfile]:
    """Profiles of this identity, `<name>.yaml` and `<name>-<rates tag>.yaml`: the user dir's newest first, then
    the shipped ones newest first."""
    name = identity.profile_name
    found: list[HardwareProfile] = []
    for directory in locations.search_dirs("profiles"):
        entries = directory.iterdir() if directory.is_dir() else ()
        paths = [
            e
            for e in entries
            if e.name == f"{name}.yaml" or (e.name.startswith(f"{name}-") and e.name.endswith(".yaml"))
        ]
        found += sorted((load_profile(p) for p in paths), key=lambda p: p.provenance.date, reverse=True)
    return found


def find_profile_for_this_machine(rates: MachineRates | None = None) -> HardwareProfile:
    """This machine's measured profile (`this_machine().profile_name`, newest first); given the machine's
    measured `rates`, the newest whose fingerprint matches them. UserError telling how to make one if none."""
    identity = this_machine()
    candidates = _profiles_of(identity)
    if not candidates:
        raise UserError(
            f"no hardware profile for this machine ({identity.profile_name}) in {_where()}",
            "run `make profile` (or `runtime profile`) to measure it, or pass --profile NAME",
        )
    if rates is None:
        return candidates[0]
    for profile in candidates:
        if not rate_differences(rates, profile.machine_rates()):
            return profile
    newest = candidates[0]
    raise UserError(
        f"no hardware profile in {_where()} describes this machine as it measures now: "
        + "; ".join(rate_differences(rates, newest.machine_rates(), f"profile {newest.name}")),
        "run `runtime profile` to measure this machine, or pass --profile NAME",
    )


def path_for_this_machine(rates: MachineRates) -> Path:
    """Where `runtime profile` writes this machine's profile, in the user dir: `<name>.yaml`, unless a profile
    there has other rates (a machine of the same CPU and cores but other memory or clocks): then
    `<name>-<rates tag>.yaml`."""
    name = this_machine().profile_name
    path = locations.user_file("profiles", name)
    try:
        taken = path.is_file() and bool(rate_differences(rates, load_profile(path).machine_rates()))
    except UserError:  # a broken file there: replace it
        taken = False
    return locations.user_file("profiles", f"{name}-{rates.tag}") if taken else path


def curve_matrices(curve: GemmCurve) -> int:
    """GEMMs one call of a curve's shape runs: an expert FFN (gate, up, down) 3, a linear 1."""
    return 3 if curve.shape.startswith("expert_ffn") else 1

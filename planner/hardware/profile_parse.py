"""Parsing and strict validation of a hardware profile's YAML form.

`parse_profile_dict(data, source)` turns a YAML-loaded mapping into the keyword arguments of
`planner.hardware.profile.HardwareProfile`, or raises `UserError` naming the source and the field path of the first
problem (`gemm.curves[2].tflops: expected a non-empty list of positive numbers`). Missing required fields,
wrong types, non-positive rates, non-increasing grids, mismatched list lengths, an unknown schema_version
and unknown keys (almost always typos) are all errors. The optional `overheads` section (costs in seconds or
nanoseconds, finite and >= 0; a missing section or key is zero) is read into `Overheads`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from planner.errors import UserError
from planner.hardware.profile_schema import (
    ATTENTION_LAYOUTS,
    CALL_OVERHEADS,
    DEQUANT_FORMATS,
    ELEMENTWISE_COSTS,
    GEMM_DTYPES,
    LINK_CURVES,
    MLA_CALL_OVERHEADS,
    PROVENANCE_KINDS,
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
)
from planner.hardware.this_machine import MachineRates
from planner.values import is_finite_number, is_int


@dataclass
class _Fields:
    """One mapping being read, with its path for messages; tracks which keys were used."""

    data: dict
    path: str
    source: str
    used: set = field(default_factory=set)

    def fail(self, key: str | None, message: str) -> UserError:
        where = f"{self.path}.{key}" if self.path and key else (key or self.path or "<top>")
        return UserError(
            f"{self.source}: {where}: {message}",
            "fix that field (schema: docs/contracts.md, 'Hardware profile') or re-create the "
            "profile with `runtime profile`",
        )

    def get(self, key: str, required: bool = True, default=None):
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.fail(key, "missing (required)")
            return default
        return self.data[key]

    def sub(self, key: str, required: bool = True) -> _Fields | None:
        value = self.get(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}")
        return _Fields(value, f"{self.path}.{key}" if self.path else key, self.source)

    def text(self, key: str, required: bool = True, default: str | None = "") -> str | None:
        value = self.get(key, required, default)
        if isinstance(value, (datetime.date, datetime.datetime)):
            return value.isoformat()
        if value is not None and not isinstance(value, (str, int, float)):
            raise self.fail(key, f"expected a string, got {type(value).__name__}")
        return None if value is None else str(value)

    def number(
        self, key: str, required: bool = True, default: float | None = None, positive: bool = True
    ) -> float | None:
        value = self.get(key, required, default)
        if value is None:
            return None
        ok = is_finite_number(value)
        if not ok or (value <= 0 if positive else value < 0):
            raise self.fail(
                key, f"expected a {'positive' if positive else 'non-negative'} number, got {value!r}"
            )
        return float(value)

    def integer(self, key: str) -> int:
        value = self.get(key)
        if not is_int(value) or value <= 0:
            raise self.fail(key, f"expected a positive integer, got {value!r}")
        return value

    def choice(
        self, key: str, allowed: tuple[str, ...], required: bool = True, default: str | None = None
    ) -> str | None:
        value = self.get(key, required, default)
        if value is not None and value not in allowed:
            raise self.fail(key, f"expected one of {', '.join(allowed)}, got {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key, required=False, default=[])
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise self.fail(key, "expected a list of strings")
        return tuple(value)

    def series(self, key: str, integers: bool = False, increasing: bool = False) -> tuple:
        value = self.get(key)
        kind = "positive integers" if integers else "positive numbers"
        valid = (
            isinstance(value, list)
            and len(value) > 0
            and all(is_finite_number(x) and x > 0 and (not integers or isinstance(x, int)) for x in value)
        )
        if not valid:
            raise self.fail(key, f"expected a non-empty list of {kind}, got {value!r}")
        if increasing and any(b <= a for a, b in zip(value, value[1:])):
            raise self.fail(key, f"expected strictly increasing values, got {value!r}")
        return tuple(int(x) if integers else float(x) for x in value)

    def items(self, key: str) -> list[_Fields]:
        value = self.get(key)
        if not isinstance(value, list) or not value:
            raise self.fail(key, "expected a non-empty list of mappings")
        out = []
        for i, item in enumerate(value):
            item_path = f"{self.path}.{key}[{i}]" if self.path else f"{key}[{i}]"
            if not isinstance(item, dict):
                raise _Fields({}, item_path, self.source).fail(None, "expected a mapping")
            out.append(_Fields(item, item_path, self.source))
        return out

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used, key=str)
        if unknown:
            raise self.fail(
                None,
                f"unknown field(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(self.used))})",
            )


def _same_length(f: _Fields, xs_key: str, xs: tuple, ys_key: str, ys: tuple) -> None:
    if len(xs) != len(ys):
        raise f.fail(ys_key, f"has {len(ys)} values but {xs_key} has {len(xs)}")


def _parse_rate_curve(f: _Fields) -> RateCurve:
    sizes = f.series("sizes", increasing=True)
    gbps = f.series("gbps")
    _same_length(f, "sizes", sizes, "gbps", gbps)
    f.done()
    return RateCurve(sizes, gbps)


def _machine_rates(f: _Fields | None) -> MachineRates | None:
    if f is None:
        return None
    rates = MachineRates(memory_read_gbps=f.number("memory_read_gbps"), gemm_tflops=f.number("gemm_tflops"))
    f.done()
    return rates


def _gemm_curve(f: _Fields) -> GemmCurve:
    curve = GemmCurve(
        shape=f.text("shape"),
        n=f.integer("n"),
        k=f.integer("k"),
        rows=f.series("rows", integers=True, increasing=True),
        tflops=f.series("tflops"),
    )
    _same_length(f, "rows", curve.rows, "tflops", curve.tflops)
    f.done()
    return curve


def _attention_curve(f: _Fields) -> AttentionCurve:
    curve = AttentionCurve(
        layout=f.choice("layout", ATTENTION_LAYOUTS),
        batch=f.integer("batch"),
        context=f.integer("context"),
        group=f.integer("group"),
        threads=f.series("threads", integers=True, increasing=True),
        gbps=f.series("gbps"),
    )
    _same_length(f, "threads", curve.threads, "gbps", curve.gbps)
    f.done()
    return curve


def _costs(f: _Fields | None, names: tuple[str, ...]) -> dict[str, float]:
    """Non-negative numbers under `names`; a missing mapping or key is zero."""
    if f is None:
        return {}
    values = {name: f.number(name, False, 0.0, positive=False) for name in names}
    f.done()
    return values


def _by_size(f: _Fields) -> ElementwiseBySize:
    elements = f.series("elements", integers=True, increasing=True)
    ns = {}
    for name in ELEMENTWISE_COSTS:
        if f.get(name, False) is not None:
            ns[name] = f.series(name)
            _same_length(f, "elements", elements, name, ns[name])
    f.done()
    return ElementwiseBySize(elements=elements, ns=ns)


def _elementwise(f: _Fields | None) -> ElementwiseCosts:
    if f is None:
        return ElementwiseCosts()
    by_size = f.sub("by_size", False)
    curve = _by_size(by_size) if by_size is not None else None
    return ElementwiseCosts(**_costs(f, ELEMENTWISE_COSTS), by_size=curve)


def _overheads(f: _Fields) -> Overheads:
    mla = f.sub("mla_call_s", False)
    overheads = Overheads(
        call_s=CallOverheads(**_costs(f.sub("call_s", False), CALL_OVERHEADS)),
        elementwise_ns=_elementwise(f.sub("elementwise_ns", False)),
        mla_call_s=_costs(mla, MLA_CALL_OVERHEADS) if mla is not None else None,
        mla_attention_score_ns=f.number("mla_attention_score_ns", False, None, positive=False),
    )
    f.done()
    return overheads


def parse_profile_dict(data: object, source: str) -> dict:
    if not isinstance(data, dict):
        raise UserError(
            f"{source}: a hardware profile must be a YAML mapping, got {type(data).__name__}",
            "re-create the profile with `runtime profile`",
        )
    top = _Fields(data, "", source)
    version = top.get("schema_version")
    if version != SCHEMA_VERSION:
        raise top.fail(
            "schema_version", f"{version!r} is not supported (this moelens reads {SCHEMA_VERSION})"
        )
    out: dict = {"schema_version": version, "name": top.text("name")}
    if not out["name"]:
        raise top.fail("name", "must not be empty")

    p = top.sub("provenance")
    out["provenance"] = Provenance(
        kind=p.choice("kind", PROVENANCE_KINDS),
        date=p.text("date", False),
        command=p.text("command", False),
        moelens_version=p.text("moelens_version", False),
        sources=p.strings("sources"),
        calibrated_from=p.strings("calibrated_from"),
    )
    if out["provenance"].kind == "datasheet" and not out["provenance"].sources:
        raise p.fail("sources", "a datasheet profile must name its sources")
    p.done()

    m = top.sub("machine")
    machine = Machine(
        cpu=m.text("cpu"),
        cores=m.integer("cores"),
        host_memory_gib=m.number("host_memory_gib"),
        device=m.text("device", required=False, default=None),
        device_memory_gib=m.number("device_memory_gib", False, 0.0, positive=False),
        cpu_flags=m.strings("cpu_flags"),
        host_free_gib=m.number("host_free_gib", False, positive=False),
        device_free_gib=m.number("device_free_gib", False, positive=False),
        interconnect=m.text("interconnect", False, None),
        torch=m.text("torch", False, None),
        cuda=m.text("cuda", False, None),
        fingerprint=_machine_rates(m.sub("fingerprint", False)),
    )
    if machine.device is not None and machine.device_memory_gib <= 0:
        raise m.fail("device_memory_gib", "must be positive when machine.device is set")
    m.done()
    out["machine"] = machine

    pr = top.sub("price", required=False)
    if pr is not None:
        out["price"] = Price(
            usd_per_hour=pr.number("usd_per_hour", False),
            purchase_usd=pr.number("purchase_usd", False),
            sources=pr.strings("sources"),
        )
        pr.done()

    links = top.sub("links", required=False)
    if links is None and machine.device is not None:
        raise top.fail("links", "missing (required when machine.device is set)")
    if links is not None:
        if machine.device is None:
            raise top.fail("links", "must be null when machine.device is null (no separate device)")
        out["links"] = Links(**{k: _parse_rate_curve(links.sub(k)) for k in LINK_CURVES})
        links.done()

    emulated = top.sub("emulated_link", required=False)
    if emulated is not None:
        out["emulated_link"] = EmulatedLink(
            gbps=emulated.number("gbps"), device_memory_gib=emulated.number("device_memory_gib")
        )
        emulated.done()
        if links is None:
            raise top.fail("emulated_link", "needs the emulated device and its links (machine.device, links)")

    mem = top.sub("memory")
    out["memory"] = Memory(read_gbps=mem.number("read_gbps"), copy_gbps=mem.number("copy_gbps"))
    mem.done()

    g = top.sub("gemm")
    out["gemm_dtype"] = g.choice("dtype", GEMM_DTYPES)
    narrow = g.sub("narrow_speed", required=False)
    if narrow is not None:
        rows, ratio = narrow.series("rows", increasing=True), narrow.series("ratio")
        if len(rows) != len(ratio):
            raise narrow.fail("ratio", f"expected {len(rows)} values (one per row count), got {len(ratio)}")
        out["gemm_narrow_speed"] = tuple(zip(rows, ratio))
        narrow.done()
    out["gemm_curves"] = tuple(_gemm_curve(c) for c in g.items("curves"))
    g.done()

    a = top.sub("attention")
    out["attention_curves"] = tuple(_attention_curve(c) for c in a.items("curves"))
    a.done()

    e = top.sub("efficiency", required=False)
    if e is not None:
        out["efficiency"] = Efficiency(
            gemm=e.number("gemm", False, 1.0),
            gemm_small_m=e.number("gemm_small_m", False, 1.0),
            attention=e.number("attention", False, 1.0),
            copy=e.number("copy", False, 1.0),
            step_overhead_s=e.number("step_overhead_s", False, 0.0, positive=False),
            call_overhead_s=e.number("call_overhead_s", False, 0.0, positive=False),
            overhead=e.number("overhead", False, 1.0),
        )
        e.done()
    o = top.sub("overheads", required=False)
    if o is not None:
        out["overheads"] = _overheads(o)
    dq = top.sub("dequant_ns", required=False)
    if dq is not None:
        out["dequant_ns"] = {fmt: dq.number(fmt) for fmt in DEQUANT_FORMATS if fmt in dq.data}
        dq.done()
    out["notes"] = top.text("notes", False) or ""
    top.done()
    return out

"""The Plan: a frozen dataclass that round-trips through YAML (`yaml.safe_load`), strictly validated on load
(UserError naming the field). Its `decisions` (written flat, top level) are what the runtime reads.

How it works: docs/design.md, `planner/plans/plan.py`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from planner.errors import UserError
from planner.perf.bound import Bound
from planner.plans.decisions import DECISION_FIELDS, Decisions
from planner.plans.workload import Workload
from planner.specs.weight_formats import weights_label
from planner.values import is_int

SCHEMA_VERSION = 1
RESOURCES = ("device", "cpu_attention", "link", "host_memory", "cpu")
OPTIONAL_FIELDS = {
    "batching": "module",
    "emulated_link_gbps": None,
    "stream_slots": 2,
    "stream_parts": 1,
    "dequant_ns": {},
    "dequant_source": None,
    "gemm_dtype": None,
}


@dataclass(frozen=True)
class ModelRef:
    name: str
    hash: str  # sha256 (12 hex) of the spec's fields
    dtype: str
    ref: str  # what `load_spec` was given (a name, YAML path or checkpoint dir)
    weight_formats: dict[str, str]  # ModelSpec.weight_formats: modules whose weights are stored quantized

    @property
    def weights_label(self) -> str:
        return weights_label(self.dtype, self.weight_formats)


@dataclass(frozen=True)
class ProfileRef:
    name: str
    fingerprint: str
    kind: str  # measured | datasheet | calibrated
    ref: str  # what `load_profile` was given


@dataclass(frozen=True)
class BudgetsGiB:
    kv_gib: float
    host_gib: float
    device_gib: float  # 0 without a device


@dataclass(frozen=True)
class Prediction:
    generated_tok_s: float  # end to end: generated tokens / wall time
    decode_tok_s: float  # steady state at N in flight
    prefill_tok_s: float
    wall_time_s: float
    prefill_time_s: float
    decode_steps: float
    decode_step_s: float
    prefill_chunk_s: float
    static_batches_tok_s: float  # the same decisions with static batches (no refill), for comparison
    s_mbu: float  # MoE-CAP sparse memory-bandwidth utilisation of a decode step
    s_mfu: float  # MoE-CAP sparse FLOP utilisation of a decode step
    usd_per_million_tokens: float | None


@dataclass(frozen=True)
class Plan:
    schema_version: int
    model: ModelRef
    profile: ProfileRef
    budgets: BudgetsGiB
    workload: Workload
    decisions: Decisions  # written flat: each field at the top level
    predicted: Prediction
    module_times: dict[str, dict[str, float]]  # decode_step / prefill_chunk -> module -> seconds
    utilisation: dict[str, float]  # resource -> busy fraction of a decode step
    bottleneck: str
    memory: dict[str, dict[str, float]]  # host / device -> category -> bytes
    bound: Bound
    solver: dict[str, float]  # evaluations, lattice sizes (never timings: plans are deterministic)
    dequant_ns: dict[str, float] = dataclasses.field(default_factory=dict)  # format -> ns per weight priced
    dequant_source: str | None = (
        None  # measured | memory-bound default (planner.perf.dequant); None: unquantized
    )

    def __post_init__(self) -> None:
        if self.bottleneck not in RESOURCES:
            raise UserError(
                f"plan field bottleneck: must be one of {list(RESOURCES)}",
                "re-create the plan with `planner solve`",
            )

    @property
    def weights_words(self) -> str:
        """The weights' storage format and the dequantization cost it was priced at (plans, explain)."""
        if not self.dequant_ns:
            return self.model.weights_label
        rates = ", ".join(f"{fmt} {ns:.3g} ns" for fmt, ns in self.dequant_ns.items())
        return f"{self.model.weights_label}; dequantizing {rates} per weight ({self.dequant_source})"

    # ----- YAML -----
    def to_dict(self) -> dict:
        flat = {}
        for key, value in _to_plain(self).items():
            flat.update(value if key == "decisions" else {key: value})
        return flat

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, width=110)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    @classmethod
    def from_dict(cls, data: object, source: str = "plan") -> Plan:
        if not isinstance(data, dict):
            raise UserError(f"{source}: a plan must be a YAML mapping", "re-create it with `planner solve`")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise UserError(
                f"{source}: schema_version {data.get('schema_version')!r} is not supported "
                f"(this moelens reads {SCHEMA_VERSION})",
                "re-create the plan with `planner solve`",
            )
        data = {**OPTIONAL_FIELDS, **data}  # plans written before these fields existed
        if isinstance(data.get("model"), dict):
            data["model"] = {"weight_formats": {}, **data["model"]}
        if "decisions" in data:
            raise UserError(f"{source}: decisions: unknown field", "re-create the plan with `planner solve`")
        decisions = {name: data.pop(name) for name in DECISION_FIELDS if name in data}
        return _from_plain(cls, {**data, "decisions": decisions}, source, "")

    @classmethod
    def from_yaml(cls, text: str, source: str = "plan") -> Plan:
        try:
            data = yaml.safe_load(text)
        except (
            yaml.YAMLError,
            ValueError,
            RecursionError,
        ) as err:  # ValueError: e.g. an int over 4300 digits
            raise UserError(
                f"{source} is not valid YAML: {str(err)[:300]}", "re-create it with `planner solve`"
            ) from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"plan file {path} does not exist", "pass a plan written by `planner solve --out`"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, ValueError) as err:  # ValueError: not UTF-8
            raise UserError(
                f"cannot read plan file {path}: {err}", "pass a plan written by `planner solve --out`"
            ) from None
        return cls.from_yaml(text, str(path))


# ----- generic conversion between frozen dataclasses and plain YAML data -----
def _to_plain(value):
    if dataclasses.is_dataclass(value):
        if isinstance(value, Workload):
            return value.to_dict()
        if isinstance(value, Bound):
            return value.to_dict()
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) or hasattr(value, "__float__"):
        number = float(value)
        return None if math.isinf(number) else number
    raise TypeError(f"cannot write {type(value).__name__} to a plan")


def _from_plain(cls, data: dict, source: str, path: str):
    def where(name: str) -> str:
        return f"{path}.{name}" if path else name

    if not isinstance(data, dict):
        raise UserError(
            f"{source}: {path or 'plan'}: expected a mapping", "re-create the plan with `planner solve`"
        )
    names = [f.name for f in fields(cls)]
    unknown, missing = sorted(map(str, set(data) - set(names))), [n for n in names if n not in data]
    if unknown or missing:
        bad = where(unknown[0] if unknown else missing[0])
        raise UserError(
            f"{source}: {bad}: {'unknown field' if unknown else 'missing (required)'}",
            "re-create the plan with `planner solve`",
        )
    hints = typing.get_type_hints(cls)
    return cls(**{name: _convert(data[name], hints[name], source, where(name)) for name in names})


def _convert(value, hint, source: str, path: str):
    def fail(expected: str) -> UserError:
        return UserError(
            f"{source}: {path}: expected {expected}, got {value!r}"[:300],
            "re-create the plan with `planner solve`",
        )

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Decisions:  # flat in the file: its fields are named without a prefix
        return _from_plain(Decisions, value, source, "")
    if hint is Workload:
        return Workload.from_dict(value, f"{source}: {path}")
    if hint is Bound:
        if not isinstance(value, dict):
            raise fail("a mapping")
        value = dict(value)
        value.setdefault("end_to_end_tok_s", None)  # plans written before it was part of the bound
        if isinstance(value.get("terms"), dict):
            value["terms"] = {k: (math.inf if v is None else v) for k, v in value["terms"].items()}
        return _from_plain(Bound, value, source, path)
    if dataclasses.is_dataclass(hint):
        return _from_plain(hint, value, source, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = next(a for a in args if a is not type(None))
        if inner is float and isinstance(value, float) and math.isinf(value):
            raise fail("a finite number or null")  # null already means 'none'; inf would read back as null
        return _convert(value, inner, source, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise fail("a list")
        return tuple(_convert(v, args[0], source, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        return {str(k): _convert(v, args[1], source, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is int:
        if not is_int(value):
            raise fail("an integer")
        return value
    if hint is float:
        if value is None:
            return math.inf
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise fail("a non-negative number")
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            raise fail("a non-negative number") from None
        if math.isnan(number):
            raise fail("a non-negative number")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise TypeError(f"plan field {path}: unsupported type {hint}")

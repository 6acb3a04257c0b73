"""`planner calibrate`: fit a profile's efficiency constants to measured runs and write a calibrated profile.

How it works: docs/design.md, `planner/calibration/calibrate.py`.
"""

from __future__ import annotations

import argparse
import datetime
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from planner import locations
from planner.calibration.runs import MeasuredRun, RunPrediction, check_profile_matches, load_run, predict_run
from planner.errors import UserError
from planner.hardware.profile import HardwareProfile
from planner.modules import FIT_MODULES
from planner.outputs import check_output_path, is_stdout, say_to, write_text_output
from planner.tables import percent_cell

CONSTANTS = ("gemm", "gemm_small_m", "attention", "copy", "step_overhead_s", "call_overhead_s", "overhead")
OVERHEADS = ("step_overhead_s", "call_overhead_s")  # fitted in milliseconds; the others in log space
MULTIPLIER_RANGE = (1 / 50, 50.0)
OVERHEAD_RANGE_MS = (0.0, 10_000.0)
MIN_MODULE_SHARE = 0.02
WEIGHTS = {"end_to_end": 1.0, "decode_step": 1.0, "prefill_forward": 0.5, "modules": 1.0}
SOFT_L1_SCALE = 0.1
INSIDE_BOUNDS = 0.01  # start strictly inside the bounds (trf cannot leave a bound it starts on)


@dataclass(frozen=True)
class RunErrors:
    """Relative errors (predicted - measured) / measured of one run."""

    label: str
    end_to_end: float
    decode_step: float
    prefill_forward: float | None
    decode_modules: dict[str, float]
    predicted_tok_s: float
    achieved_tok_s: float


@dataclass(frozen=True)
class Calibration:
    profile: HardwareProfile
    before: dict[str, float]
    after: dict[str, float]
    fitted: tuple[str, ...]
    errors_before: list[RunErrors]
    errors_after: list[RunErrors]
    cost: float


def _rel(predicted: float, measured: float) -> float:
    return predicted / measured - 1.0


def _constants(profile: HardwareProfile) -> dict[str, float]:
    eff = profile.efficiency
    return {name: float(getattr(eff, name)) for name in CONSTANTS}


def _to_vector(constants: dict[str, float]) -> np.ndarray:
    return np.array([constants[n] * 1e3 if n in OVERHEADS else math.log(constants[n]) for n in CONSTANTS])


def _from_vector(x: np.ndarray) -> dict[str, float]:
    return {n: (float(v) / 1e3 if n in OVERHEADS else float(math.exp(v))) for n, v in zip(CONSTANTS, x)}


def _shown_modules(measured: dict[str, float], total: float) -> list[str]:
    return [m for m in FIT_MODULES if measured.get(m, 0.0) >= MIN_MODULE_SHARE * total]


def _residuals(run: MeasuredRun, pred: RunPrediction) -> list[float]:
    m = run.measured
    terms = [
        WEIGHTS["end_to_end"] * _rel(pred.generated_tok_s, m.generated_tok_s),
        WEIGHTS["decode_step"] * _rel(pred.decode_step_s, m.decode_step_s),
    ]
    if m.prefill_forward_s:
        terms.append(WEIGHTS["prefill_forward"] * _rel(pred.prefill_forward_s, m.prefill_forward_s))
    pairs = [
        (pred.decode_modules[k], m.decode_modules[k])
        for k in _shown_modules(m.decode_modules, m.decode_step_s)
    ]
    if m.prefill_forward_s:
        pairs += [
            (pred.prefill_modules[k], m.prefill_modules[k])
            for k in _shown_modules(m.prefill_modules, m.prefill_forward_s)
            if k in pred.prefill_modules
        ]
    weight = WEIGHTS["modules"] / math.sqrt(max(len(pairs), 1))
    terms += [weight * _rel(p, meas) for p, meas in pairs]
    return terms


def run_errors(runs: list[MeasuredRun], profile: HardwareProfile) -> list[RunErrors]:
    out = []
    for run in runs:
        pred, m = predict_run(run, profile), run.measured
        out.append(
            RunErrors(
                label=run.label,
                end_to_end=_rel(pred.generated_tok_s, m.generated_tok_s),
                decode_step=_rel(pred.decode_step_s, m.decode_step_s),
                prefill_forward=_rel(pred.prefill_forward_s, m.prefill_forward_s)
                if m.prefill_forward_s
                else None,
                decode_modules={
                    k: _rel(pred.decode_modules[k], m.decode_modules[k])
                    for k in _shown_modules(m.decode_modules, m.decode_step_s)
                },
                predicted_tok_s=pred.generated_tok_s,
                achieved_tok_s=m.generated_tok_s,
            )
        )
    return out


def fit(runs: list[MeasuredRun], profile: HardwareProfile, only: tuple[str, ...] = CONSTANTS) -> Calibration:
    """Fit the constants in `only` (all by default) that the runs carry information on; the rest keep their
    values."""
    if not runs:
        raise UserError("no runs to calibrate against", "pass at least one report.json")
    for run in runs:
        check_profile_matches(run, profile)
    before = _constants(profile)
    x0 = _to_vector(before)

    def residuals(x: np.ndarray) -> np.ndarray:
        trial = profile.with_efficiency(**_from_vector(x))
        return np.array([r for run in runs for r in _residuals(run, predict_run(run, trial))])

    base = residuals(x0)
    free = []
    for i, name in enumerate(CONSTANTS):
        if name not in only:
            continue
        probe = x0.copy()
        probe[i] += 0.5
        if np.max(np.abs(residuals(probe) - base)) > 1e-9:
            free.append(i)
    lows = np.array(
        [OVERHEAD_RANGE_MS[0] if n in OVERHEADS else math.log(MULTIPLIER_RANGE[0]) for n in CONSTANTS]
    )
    highs = np.array(
        [OVERHEAD_RANGE_MS[1] if n in OVERHEADS else math.log(MULTIPLIER_RANGE[1]) for n in CONSTANTS]
    )
    x = x0.copy()
    cost = float(0.5 * np.sum(base**2))
    if free:

        def free_residuals(v: np.ndarray) -> np.ndarray:
            full = x.copy()
            full[free] = v
            return residuals(full)

        start = np.clip(x[free], lows[free] + INSIDE_BOUNDS, highs[free] - INSIDE_BOUNDS)
        result = least_squares(
            free_residuals, start, bounds=(lows[free], highs[free]), loss="soft_l1", f_scale=SOFT_L1_SCALE
        )
        x[free] = result.x
        cost = float(result.cost)
    after = _from_vector(x)
    calibrated = profile.with_efficiency(**after)
    return Calibration(
        profile=calibrated,
        before=before,
        after=after,
        fitted=tuple(CONSTANTS[i] for i in free),
        errors_before=run_errors(runs, profile),
        errors_after=run_errors(runs, calibrated),
        cost=cost,
    )


def calibrated_profile(
    calibration: Calibration, runs: list[MeasuredRun], name: str, command: str
) -> HardwareProfile:
    """The fitted profile, renamed and marked calibrated, naming the reports it came from."""
    base = calibration.profile
    mean_before = float(np.mean([abs(e.end_to_end) for e in calibration.errors_before]))
    mean_after = float(np.mean([abs(e.end_to_end) for e in calibration.errors_after]))
    provenance = replace(
        base.provenance,
        kind="calibrated",
        command=command,
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        calibrated_from=tuple(f"{r.path} sha256:{r.sha256}" for r in runs),
    )
    note = (
        f"calibrated from {len(runs)} runs ({', '.join(calibration.fitted) or 'nothing fitted'}): mean |error| "
        f"of end-to-end tok/s {100 * mean_before:.1f}% before, {100 * mean_after:.1f}% after, on those runs"
    )
    notes = f"{base.notes}\n{note}" if base.notes else note
    return replace(base, name=name, provenance=provenance, notes=notes)


def calibration_summary(calibration: Calibration) -> str:
    lines = ["constant          before      after"]
    for name in CONSTANTS:
        mark = "" if name in calibration.fitted else "  (no data: kept)"
        lines.append(f"{name:<16}{calibration.before[name]:>8.4g}  {calibration.after[name]:>9.4g}{mark}")
    lines.append("")
    lines.append("run                              tok/s achieved  error before  error after")
    for b, a in zip(calibration.errors_before, calibration.errors_after):
        lines.append(
            f"{b.label[:32]:<32}{b.achieved_tok_s:>15.3g}  {percent_cell(b.end_to_end):>12}  {percent_cell(a.end_to_end):>11}"
        )
    mean = [
        float(np.mean([abs(e.end_to_end) for e in errs]))
        for errs in (calibration.errors_before, calibration.errors_after)
    ]
    lines.append(f"mean |error| of end-to-end tok/s: {100 * mean[0]:.1f}% before, {100 * mean[1]:.1f}% after")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reports", nargs="+", help="report.json files of `runtime execute --report`")
    parser.add_argument(
        "--profile",
        help="the profile the runs' plans were solved with (name or YAML; default: "
        "this machine's measured profile)",
    )
    parser.add_argument(
        "--out",
        help="write the calibrated profile YAML here, - for standard output (default: the "
        "user dir's profiles/<name>.yaml, so --profile <name> finds it)",
    )
    parser.add_argument(
        "--name",
        help="name of the calibrated profile (default: the --out file's stem, or <profile>-calibrated)",
    )


def run_command(args: argparse.Namespace, profile: HardwareProfile) -> int:
    if args.out is None:
        out = locations.user_file("profiles", args.name or f"{profile.name}-calibrated")
        out.parent.mkdir(parents=True, exist_ok=True)
    else:
        out = Path(args.out)
        locations.refuse_shipped(out, "--out")
    if not is_stdout(out) and out.suffix not in (".yaml", ".yml"):
        raise UserError(f"--out {out} is not a .yaml path", "pass --out NAME.yaml (or - for standard output)")
    check_output_path(out, "--out", [*args.reports, args.profile])
    runs = [load_run(path) for path in args.reports]
    calibration = fit(runs, profile)
    command = (
        "planner calibrate "
        + " ".join(str(p) for p in args.reports)
        + f" --profile {profile.name} --out {out}"
    )
    name = args.name or (f"{profile.name}-calibrated" if is_stdout(out) else out.stem)
    written = write_text_output(out, calibrated_profile(calibration, runs, name, command).to_yaml())
    print(calibration_summary(calibration), file=say_to(out))
    print(f"wrote {written}", file=say_to(out))
    return 0

"""Analysis of the accuracy matrix's reports: errors before and after calibration, CSV, BENCHMARKS.md section.

`analyse(report_paths, profile_ref) -> AccuracyResult` loads the runs (`planner.calibration.runs.load_run`),
fits the profile's efficiency constants on the runs whose `bench_config.split` is `train` and evaluates every
run with the measured and the calibrated profile. Error = (predicted - achieved) / achieved of end-to-end
generated tok/s; "before" is the performance model with the profile as measured (for forced-streaming runs it
includes the host copy term, `planner.calibration.runs`), which is the plan's own prediction otherwise.
`write_outputs(result, out_dir, command, ...)` writes `bench/results/accuracy[-quick].csv` (one row per run,
the columns `notebooks/plots.py` reads), the calibrated profile (in `out_dir`), and the `accuracy[-quick]`
section of BENCHMARKS.md. Each report's `repeats_tok_s` (one per pass of the matrix) gives the run's
measurement noise: `pass_spread` = (max - min) / median and `pass_noise` = mean |pass / median - 1|, the error
an exact prediction would show against one run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import BENCHMARKS_MD, REPO, RESULTS_DIR, markdown_table, update_section
from planner.calibration.calibrate import (
    CONSTANTS,
    FIT_MODULES,
    Calibration,
    calibrated_profile,
    fit,
    run_errors,
)
from planner.calibration.runs import load_run
from planner.hardware.profile import HardwareProfile, load_profile
from planner.units import GiB

TARGETS = {"held_out_mean_after": 0.05, "held_out_max_after": 0.12, "mean_before": 0.10}


@dataclass(frozen=True)
class AccuracyResult:
    frame: pd.DataFrame
    profile: HardwareProfile
    calibration: Calibration | None
    calibrated: HardwareProfile | None
    train_runs: tuple = ()
    machine: str = ""
    profile_ref: str = ""


def _row(report: dict, run, before, after) -> dict:
    config, plan = report["bench_config"], run.plan
    util, memory = report["utilisation"], report["memory"]["host"]
    row = {
        "config": config["name"],
        "model": run.spec.name,
        "family": run.spec.family,
        "attention": run.spec.attention,
        "mode": "forced-streaming" if config["streaming"] else "cpu",
        "split": config["split"],
        "num_seqs": plan.decisions.num_seqs,
        "attn_batch": plan.decisions.attn_batch,
        "expert_batch": plan.decisions.expert_batch,
        "prefill_chunk": plan.decisions.prefill_chunk,
        "num_prompts": config["num_prompts"],
        "prompt_len": config["prompt_len"],
        "gen_len": config["gen_len"],
        "kv_gib": plan.budgets.kv_gib,
        "plan_tok_s": plan.predicted.generated_tok_s,
        "predicted_tok_s": before.predicted_tok_s,
        "achieved_tok_s": before.achieved_tok_s,
        "cold_tok_s": report.get("cold", {}).get("generated_tok_s", math.nan),
        "error_before": before.end_to_end,
        "predicted_after_tok_s": after.predicted_tok_s if after else math.nan,
        "error_after": after.end_to_end if after else math.nan,
        "decode_step_error_before": before.decode_step,
        "decode_step_error_after": after.decode_step if after else math.nan,
        "decode_step_ms": run.measured.decode_step_s * 1e3,
        "mean_decode_batch": run.measured.mean_decode_batch,
        "preemptions": report["run_stats"]["num_preemptions"],
        "s_mbu": util["s_mbu"]["achieved"],
        "s_mbu_plan": util["s_mbu"]["predicted"],
        "s_mfu": util["s_mfu"]["achieved"],
        "s_mfu_plan": util["s_mfu"]["predicted"],
        "peak_host_gib": (memory["peak_bytes"] or 0) / GiB,
        "plan_host_gib": (memory["plan_bytes"] or 0) / GiB,
        "elapsed_s": report["elapsed_time"],
        "profile": shown_ref(report.get("profile_ref", "")),
    }
    passes = np.asarray(report.get("repeats_tok_s") or [before.achieved_tok_s], dtype=float)
    row["passes"] = len(passes)
    row["pass_spread"] = float((passes.max() - passes.min()) / np.median(passes))
    row["pass_noise"] = float(np.mean(np.abs(passes / np.median(passes) - 1.0)))
    for module in FIT_MODULES:
        row[f"module_error_{module}"] = before.decode_modules.get(module, math.nan)
    worst = max(before.decode_modules.items(), key=lambda kv: abs(kv[1]), default=("-", math.nan))
    row["worst_module"], row["worst_module_error"] = worst
    return row


def analyse(report_paths: list[Path], profile_ref: str) -> AccuracyResult:
    profile = load_profile(profile_ref)
    reports = [json.loads(Path(p).read_text()) for p in report_paths]
    runs = [load_run(p) for p in report_paths]
    train = [r for r, rep in zip(runs, reports) if rep["bench_config"]["split"] == "train"]
    calibration = fit(train, profile) if train else None
    calibrated = calibration.profile if calibration else None
    before = run_errors(runs, profile)
    after = run_errors(runs, calibrated) if calibrated else [None] * len(runs)
    frame = pd.DataFrame([_row(rep, run, b, a) for rep, run, b, a in zip(reports, runs, before, after)])
    return AccuracyResult(
        frame=frame,
        profile=profile,
        calibration=calibration,
        calibrated=calibrated,
        train_runs=tuple(train),
        profile_ref=shown_ref(profile_ref),
    )


def error_summary(frame: pd.DataFrame) -> dict[str, float]:
    out = {}
    for split in ("held-out", "train"):
        part = frame[frame["split"] == split]
        for when in ("before", "after"):
            errors = part[f"error_{when}"].abs()
            key = split.replace("-", "_")
            out[f"{key}_mean_{when}"] = float(errors.mean()) if len(errors) else math.nan
            out[f"{key}_max_{when}"] = float(errors.max()) if len(errors) else math.nan
    out["mean_before"] = float(frame["error_before"].abs().mean())
    if "pass_spread" in frame and (frame["passes"] > 1).any():
        several = frame[frame["passes"] > 1]
        out["pass_spread_median"] = float(several["pass_spread"].median())
        out["pass_spread_max"] = float(several["pass_spread"].max())
        out["pass_noise_mean"] = float(several["pass_noise"].mean())
    return out


def shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def shown_ref(ref: str) -> str:
    """A profile reference as written in results: a name, or a YAML path relative to the repository."""
    return shown_path(Path(ref)) if Path(ref).suffix in (".yaml", ".yml") else ref


def _pct(value: float) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:+.1f}%"
    )


def _share(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _noise_line(s: dict[str, float]) -> list[str]:
    if "pass_noise_mean" not in s:
        return []
    return [
        f"- measurement noise: a config's passes (minutes apart, same prompts' sizes) spread by "
        f"{100 * s['pass_spread_median']:.0f}% of their median (median over configs; "
        f"{100 * s['pass_spread_max']:.0f}% at most), and one pass is off its config's median by "
        f"{100 * s['pass_noise_mean']:.1f}% on average: a prediction that was exact would show errors of about "
        "that size against any one run."
    ]


def markdown(
    result: AccuracyResult, command: str, csv_path: Path, profile_path: Path | None, quick: bool
) -> str:
    f, s = result.frame, error_summary(result.frame)
    rows = [
        [
            r.config,
            r.model,
            r.mode,
            r.num_seqs,
            f"{r.prompt_len}+{r.gen_len}",
            r.num_prompts,
            r.split,
            r.predicted_tok_s,
            r.achieved_tok_s,
            f"{100 * r.pass_spread:.0f}%",
            r.cold_tok_s,
            _pct(r.error_before),
            _pct(r.error_after),
            f"{r.worst_module} {_pct(r.worst_module_error)}",
            r.preemptions,
            _share(r.s_mbu),
            _share(r.s_mfu),
        ]
        for r in f.itertuples()
    ]
    table = markdown_table(
        [
            "config",
            "model",
            "mode",
            "N",
            "p+g",
            "prompts",
            "split",
            "predicted tok/s",
            "achieved tok/s",
            "pass spread",
            "first run tok/s",
            "error before",
            "error after",
            "worst module (before)",
            "preempted",
            "S-MBU",
            "S-MFU",
        ],
        rows,
    )

    def verdict(value: float, target: float) -> str:
        return "meets" if value <= target else "misses"

    lines = [
        f"## Prediction accuracy (`{command}`)",
        "",
        f"{result.machine} Profile: `{result.profile_ref}` ({result.profile.provenance.kind}, "
        f"{result.profile.provenance.date}). "
        f"{len(f)} configurations, {'--quick sizes (a smoke run)' if quick else 'full sizes'}; every request "
        "ignore_eos; error = (predicted - achieved) / achieved of end-to-end generated tok/s. Calibration "
        "(`planner calibrate`) is fitted on the `train` rows and evaluated on the `held-out` rows. Per-run "
        f"CSV: `{shown_path(csv_path)}`; figure: "
        "`notebooks/figures/predicted_vs_achieved.png`.",
        "",
        table,
        "",
        f"- held-out mean / max |error|: before {100 * s['held_out_mean_before']:.1f}% / "
        f"{100 * s['held_out_max_before']:.1f}%, after {100 * s['held_out_mean_after']:.1f}% / "
        f"{100 * s['held_out_max_after']:.1f}% (targets after: <= 5% / <= 12%: "
        f"{verdict(s['held_out_mean_after'], 0.05)} / {verdict(s['held_out_max_after'], 0.12)})",
        f"- all runs, mean |error| before calibration: {100 * s['mean_before']:.1f}% (target <= 10%: "
        f"{verdict(s['mean_before'], 0.10)}); train runs after: {100 * s['train_mean_after']:.1f}%",
        *_noise_line(s),
        "- S-MBU / S-MFU: achieved over the profile's measured peaks (host memory read rate, largest measured "
        "GEMM rate), activated experts counted from the router's outputs.",
    ]
    if result.calibration is not None:
        c = result.calibration
        lines += [
            "",
            "Fitted constants ("
            + (f"`{shown_path(profile_path)}`" if profile_path else "not written")
            + "): "
            + ", ".join(
                f"{n} {c.before[n]:.3g} -> {c.after[n]:.3g}" + ("" if n in c.fitted else " (no data)")
                for n in CONSTANTS
            )
            + ".",
        ]
    return "\n".join(lines)


def write_outputs(
    result: AccuracyResult,
    out_dir: Path,
    command: str,
    markdown_section: bool = True,
    quick: bool = False,
    results_dir: Path = RESULTS_DIR,
    benchmarks_md: Path = BENCHMARKS_MD,
) -> dict[str, Path]:
    suffix = "-quick" if quick else ""
    csv_path = results_dir / f"accuracy{suffix}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    result.frame.to_csv(csv_path, index=False, float_format="%.6g")
    profile_path = None
    if result.calibration is not None:
        profile = calibrated_profile(
            result.calibration, list(result.train_runs), f"{result.profile.name}-calibrated", command
        )
        profile_path = profile.save(out_dir / f"{result.profile.name}-calibrated{suffix}.yaml")
    print(
        result.frame[
            ["config", "split", "predicted_tok_s", "achieved_tok_s", "error_before", "error_after"]
        ].to_string(index=False)
    )
    summary = error_summary(result.frame)
    print({k: round(v, 4) for k, v in summary.items() if not np.isnan(v)})
    if markdown_section:
        update_section(
            "accuracy" + suffix, markdown(result, command, csv_path, profile_path, quick), benchmarks_md
        )
    return {"csv": csv_path, "profile": profile_path}

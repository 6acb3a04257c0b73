"""Measured runs for calibration: read `report.json` files and predict each run with the performance model.

How it works: docs/design.md, `planner/calibration/runs.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from planner.errors import UserError
from planner.hardware.profile import HardwareProfile, load_profile
from planner.modules import DECODE_MODULES, PREFILL_MODULES, Module
from planner.perf.memory import Budgets, GiB
from planner.perf.model import Candidates, PerfModel
from planner.plans.build import spec_hash
from planner.plans.plan import Plan
from planner.specs.spec import ModelSpec, load_spec

UNCHUNKED = float(1 << 20)  # b_e with module batching off: one GEMM per expert per step
STREAM_SLOTS = 2  # the engine's streamer buffers: a model of <= 2 layers is copied once, kept
REPORT_FIX = "pass report.json files written by `runtime execute --report` of this moelens version"
MEASUREMENT_KEYS = ("links", "memory", "gemm", "attention")


@dataclass(frozen=True)
class EngineDecisions:
    num_seqs: int
    attn_batch: float
    expert_batch: float
    prefill_chunk: int
    attention_threads: int
    force_streaming: bool


@dataclass(frozen=True)
class Measured:
    generated_tok_s: float
    decode_step_s: float
    decode_modules: dict[str, float]  # seconds per decode step
    mean_decode_batch: float
    prefill_forward_s: float | None  # None: the run had no prefill forward
    prefill_modules: dict[str, float]  # seconds per prefill forward
    prefill_tokens_per_forward: float
    streamed_bytes: float  # bytes one pass over the layers streams (0: none)


@dataclass(frozen=True)
class MeasuredRun:
    path: str
    sha256: str
    plan: Plan
    spec: ModelSpec
    engine: EngineDecisions
    measured: Measured

    @property
    def label(self) -> str:
        return Path(self.path).name if self.path else self.plan.model.name

    def at_machine_speed(self, speed: float) -> MeasuredRun:
        """This run as the machine would have run it at `speed` times the speed it had (times scale by `speed`,
        rates by its inverse): probe jobs measured while a VM's neighbours slowed it, brought back to the speed
        the curves were measured at."""
        m = self.measured
        scaled = replace(
            m,
            generated_tok_s=m.generated_tok_s / speed,
            decode_step_s=m.decode_step_s * speed,
            decode_modules={k: v * speed for k, v in m.decode_modules.items()},
            prefill_forward_s=None if m.prefill_forward_s is None else m.prefill_forward_s * speed,
            prefill_modules={k: v * speed for k, v in m.prefill_modules.items()},
        )
        return replace(self, measured=scaled)


@dataclass(frozen=True)
class RunPrediction:
    generated_tok_s: float
    decode_step_s: float
    decode_modules: dict[str, float]
    prefill_forward_s: float
    prefill_modules: dict[str, float]


# ----- reading reports -----
def _get(mapping: object, key: str, where: str, kind: type | tuple = (int, float)):
    if not isinstance(mapping, dict) or key not in mapping:
        raise UserError(f"{where}: missing {key!r}", REPORT_FIX)
    value = mapping[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise UserError(f"{where}: {key!r} has the wrong type ({type(value).__name__})", REPORT_FIX)
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: {key!r} is not a finite number", REPORT_FIX)
    return value


def _spec_of(report: dict, plan: Plan, where: str) -> ModelSpec:
    if "spec" in report:
        spec = ModelSpec.from_dict(_get(report, "spec", where, dict), f"{where}: spec")
    else:
        try:
            spec = load_spec(plan.model.ref)
        except UserError:
            raise UserError(
                f"{where}: has no 'spec' and its plan's model {plan.model.ref!r} cannot be loaded",
                "run calibrate where the checkpoint is, or use a report that embeds its spec",
            ) from None
    if spec_hash(spec) != plan.model.hash:
        raise UserError(
            f"{where}: the model spec (hash {spec_hash(spec)}) is not the one its plan was solved for "
            f"({plan.model.hash})",
            REPORT_FIX,
        )
    return spec


def _engine_decisions(stats: dict, plan: Plan, where: str) -> EngineDecisions:
    config = _get(stats, "config", f"{where}: run_stats", dict)
    cw = f"{where}: run_stats.config"
    num_seqs = _get(config, "num_seqs", cw, int)
    batching = _get(config, "module_batching", cw, bool)
    threads = config.get("attention_threads") or plan.decisions.attention_threads
    return EngineDecisions(
        num_seqs=num_seqs,
        attn_batch=float(_get(config, "attn_batch", cw, int)) if batching else float(num_seqs),
        expert_batch=float(_get(config, "expert_batch", cw, int)) if batching else UNCHUNKED,
        prefill_chunk=_get(config, "prefill_chunk", cw, int),
        attention_threads=int(threads),
        force_streaming=_get(config, "force_streaming", cw, bool),
    )


def _measured(stats: dict, where: str) -> Measured:
    w = f"{where}: run_stats"
    steps, forwards = _get(stats, "decode_steps", w, int), _get(stats, "prefill_forwards", w, int)
    wall = _get(stats, "wall_seconds", w)
    if steps < 1 or wall <= 0:
        raise UserError(
            f"{where}: the run has no decode steps, nothing to calibrate against",
            "calibrate with reports of runs that generated more than one token per request",
        )
    seconds = _get(stats, "module_seconds", w, dict)
    per_step = {m: float(s) / steps for m, s in _get(seconds, "decode", f"{w}.module_seconds", dict).items()}
    per_forward = {m: float(s) / forwards for m, s in seconds.get("prefill", {}).items()} if forwards else {}
    return Measured(
        generated_tok_s=_get(stats, "generated_tokens", w, int) / wall,
        decode_step_s=_get(stats, "decode_seconds", w) / steps,
        decode_modules=per_step,
        mean_decode_batch=_get(stats, "decode_batch_sizes_sum", w, int) / steps,
        prefill_forward_s=_get(stats, "prefill_seconds", w) / forwards if forwards else None,
        prefill_modules=per_forward,
        prefill_tokens_per_forward=_get(stats, "prefill_tokens", w, int) / forwards if forwards else 0.0,
        streamed_bytes=float(stats.get("streamed_weight_bytes") or 0.0),
    )


def run_from_report(report: object, path: str = "report", sha256: str = "") -> MeasuredRun:
    """A MeasuredRun from a report mapping (as `load_run` reads it from a file)."""
    if not isinstance(report, dict):
        raise UserError(f"{path}: a report must be a JSON object", REPORT_FIX)
    plan = Plan.from_dict(_get(report, "plan", path, dict), f"{path}: plan")
    stats = _get(report, "run_stats", path, dict)
    return MeasuredRun(
        path=path,
        sha256=sha256,
        plan=plan,
        spec=_spec_of(report, plan, path),
        engine=_engine_decisions(stats, plan, path),
        measured=_measured(stats, path),
    )


def load_run(path: str | Path) -> MeasuredRun:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"report {path} does not exist", REPORT_FIX)
    blob = path.read_bytes()
    try:
        report = json.loads(blob)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"report {path} is not valid JSON ({err})", REPORT_FIX) from None
    return run_from_report(report, str(path), hashlib.sha256(blob).hexdigest())


def _measurements(profile: HardwareProfile) -> dict:
    d = profile.to_dict()
    return {k: d[k] for k in MEASUREMENT_KEYS}


def check_profile_matches(run: MeasuredRun, profile: HardwareProfile) -> None:
    """The run's plan must have been solved on this profile's measurements (its efficiency may differ)."""
    ref = run.plan.profile
    if ref.fingerprint == profile.fingerprint():
        return
    try:
        planned = load_profile(ref.ref)
    except UserError:
        planned = None
    if planned is not None and _measurements(planned) == _measurements(profile):
        return
    if planned is None and ref.name == profile.name:
        return
    raise UserError(
        f"{run.path}: its plan was solved with profile {ref.name} (fingerprint {ref.fingerprint}), whose "
        f"measurements are not those of {profile.name}",
        "pass --profile with the profile the runs' plans were solved with",
    )


# ----- predicting a run -----
def _residency(plan: Plan, model: PerfModel) -> int:
    layout = model.layout
    if not plan.decisions.stream_weights or not (model.has_device or model.streams_on_host):
        return layout.max_residency
    wanted = (set(plan.decisions.resident_modules), plan.decisions.resident_experts_per_layer)
    for rho in range(layout.max_residency + 1):
        groups, experts = layout.resident_groups(rho)
        if (set(groups), experts) == wanted:
            return rho
    raise UserError(
        f"plan residency {sorted(wanted[0])} + {wanted[1]} experts is not one the planner makes",
        "re-solve the plan with `planner solve`",
    )


def budgets_of(plan: Plan) -> Budgets:
    b = plan.budgets
    return Budgets(kv_bytes=b.kv_gib * GiB, host_bytes=b.host_gib * GiB, device_bytes=b.device_gib * GiB)


def predict_run(run: MeasuredRun, profile: HardwareProfile) -> RunPrediction:
    plan, e, m = run.plan, run.engine, run.measured
    model = PerfModel(
        run.spec,
        profile,
        plan.workload,
        budgets_of(plan),
        block_size=plan.decisions.kv_block_size,
        stream_on_host=bool(plan.decisions.stream_weights),
        batching=plan.decisions.batching,
    )
    threads = int(np.clip(e.attention_threads, 1, model.rates.cores))

    def candidates(chunk: float, num_seqs: float | None = None) -> Candidates:
        return Candidates.of(
            residency=[_residency(plan, model)],
            attn_batch=[e.attn_batch],
            expert_batch=[e.expert_batch],
            prefill_chunk=[chunk],
            attention_threads=[threads],
            num_seqs=None if num_seqs is None else [num_seqs],
        )

    decode = model.decode_step(candidates(e.prefill_chunk), np.array([max(m.mean_decode_batch, 1.0)]))
    prefill = model.prefill_chunk(candidates(max(m.prefill_tokens_per_forward, 1.0)))
    whole = model.evaluate(candidates(e.prefill_chunk, float(e.num_seqs)))
    decode_modules = {k: float(decode[k][0]) for k in DECODE_MODULES}
    prefill_modules = {k: float(prefill[k][0]) for k in PREFILL_MODULES}
    step, forward, wall = float(decode["step"][0]), float(prefill["chunk"][0]), float(whole.wall_time_s[0])
    if (
        e.force_streaming
        and not profile.has_device
        and m.streamed_bytes > 0
        and run.spec.num_layers > STREAM_SLOTS
    ):
        per_layer = m.streamed_bytes / run.spec.num_layers
        copy = m.streamed_bytes / (profile.h2d_gbps(per_layer) * 1e9 * profile.efficiency.copy)
        share = 1.0 / model.rates.cores

        def beside(compute: float) -> float:
            return max(compute + copy * share, copy)

        decode_modules[Module.WEIGHT_COPY] += copy
        prefill_modules[Module.WEIGHT_COPY] += copy
        step, forward = beside(step), beside(forward)
        steps, chunk_s = float(whole.decode_steps[0]), float(whole.prefill_chunk_s[0])
        prefill_s = float(whole.prefill_time_s[0])
        wall = prefill_s / chunk_s * beside(chunk_s) + steps * beside((wall - prefill_s) / steps)
    return RunPrediction(
        generated_tok_s=plan.workload.generated_tokens / wall,
        decode_step_s=step,
        decode_modules=decode_modules,
        prefill_forward_s=forward,
        prefill_modules=prefill_modules,
    )

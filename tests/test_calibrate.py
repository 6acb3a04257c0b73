"""`planner calibrate` on synthetic reports: the runs are what the performance model predicts at known "true"
efficiency constants (plus noise where said), so the fit must find those constants again."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from planner.calibration.calibrate import fit, run_errors
from planner.calibration.runs import load_run, predict_run, run_from_report
from planner.cli import main
from planner.errors import UserError
from planner.hardware.profile import load_profile
from planner.perf.memory import Budgets
from planner.plans.build import make_plan
from planner.plans.workload import Workload
from tests.planner_support import make_profile, small_spec

TRUTH_CPU = {
    "gemm": 0.6,
    "gemm_small_m": 0.45,
    "attention": 0.8,
    "copy": 0.7,
    "step_overhead_s": 0.004,
    "call_overhead_s": 0.0002,
}


def cpu_profile():
    return make_profile(
        device=False,
        cores=4,
        host_gib=64.0,
        read_gbps=40.0,
        peak_tflops=2.0,
        attention_gbps_per_core=5.0,
        name="synthetic-cpu",
    )


def synthetic_report(
    spec, profile, truth, kv_gb, workload, *, force_streaming=False, module_batching=True, noise=0.0, seed=0
) -> dict:
    """A report whose measurements are the model's prediction under `truth` (times (1 + noise) jitter)."""
    plan = make_plan(spec, profile, workload, Budgets.from_args(profile, kv_gb))
    steps = max(round(plan.predicted.decode_steps), 1)
    mean_batch = workload.generated_tokens / steps
    forwards = max(round(plan.predicted.prefill_time_s / plan.predicted.prefill_chunk_s), 1)
    streamed = 8 * spec.num_layers * 4_000_000 if force_streaming else 0
    config = {
        "num_seqs": plan.decisions.num_seqs,
        "attn_batch": plan.decisions.attn_batch,
        "expert_batch": plan.decisions.expert_batch,
        "prefill_chunk": plan.decisions.prefill_chunk,
        "attention_threads": plan.decisions.attention_threads,
        "module_batching": module_batching,
        "force_streaming": force_streaming,
    }
    stats = {
        "config": config,
        "decode_steps": steps,
        "prefill_forwards": forwards,
        "wall_seconds": 1.0,
        "decode_seconds": 1.0,
        "prefill_seconds": 1.0,
        "module_seconds": {"decode": {}, "prefill": {}},
        "generated_tokens": int(workload.generated_tokens),
        "decode_batch_sizes_sum": round(mean_batch * steps),
        "prefill_tokens": int(workload.prompt_tokens),
        "streamed_weight_bytes": streamed,
    }
    report = {"plan": plan.to_dict(), "spec": spec.to_dict(), "run_stats": stats}
    pred = predict_run(run_from_report(report), profile.with_efficiency(**truth))
    rng = random.Random(seed)

    def jitter(value: float) -> float:
        return value * (1.0 + rng.uniform(-noise, noise))

    stats["wall_seconds"] = jitter(stats["generated_tokens"] / pred.generated_tok_s)
    stats["decode_seconds"] = jitter(pred.decode_step_s) * steps
    stats["prefill_seconds"] = jitter(pred.prefill_forward_s) * forwards
    stats["module_seconds"] = {
        "decode": {k: jitter(v) * steps for k, v in pred.decode_modules.items()},
        "prefill": {k: jitter(v) * forwards for k, v in pred.prefill_modules.items()},
    }
    return report


CONFIGS = [  # spec family, kv GiB, prompt, generated, prompts, forced streaming
    ("mixtral", 0.02, 128, 32, 64, False),
    ("mixtral", 0.2, 64, 64, 256, False),
    ("deepseek_v2", 0.05, 256, 16, 64, False),
    ("qwen2_moe", 0.5, 32, 128, 512, True),
    ("mixtral", 0.05, 512, 8, 32, True),
    ("deepseek_v2", 0.3, 64, 32, 512, False),
]


def write_reports(tmp_path, profile, truth, configs, noise=0.0):
    paths = []
    for i, (family, kv, p, g, n, streaming) in enumerate(configs):
        report = synthetic_report(
            small_spec(family),
            profile,
            truth,
            kv,
            Workload.fixed(p, g, n),
            force_streaming=streaming,
            noise=noise,
            seed=i,
        )
        path = tmp_path / f"report-{i}.json"
        path.write_text(json.dumps(report))
        paths.append(path)
    return paths


def test_prediction_at_the_plans_own_constants_matches_the_plan():
    profile = cpu_profile()
    report = synthetic_report(small_spec(), profile, {}, 0.1, Workload.fixed(64, 32, 128))
    run = run_from_report(report)
    assert predict_run(run, profile).generated_tok_s == pytest.approx(
        run.plan.predicted.generated_tok_s, rel=1e-9
    )


def test_fit_recovers_known_constants(tmp_path):
    profile = cpu_profile()
    runs = [load_run(p) for p in write_reports(tmp_path, profile, TRUTH_CPU, CONFIGS)]
    calibration = fit(runs, profile)
    assert set(calibration.fitted) == set(TRUTH_CPU)
    for name, value in TRUTH_CPU.items():
        assert calibration.after[name] == pytest.approx(value, rel=0.03), name
    assert max(abs(e.end_to_end) for e in calibration.errors_after) < 1e-3
    assert min(abs(e.end_to_end) for e in calibration.errors_before) > 0.05


def test_constants_without_data_keep_their_values(tmp_path):
    profile = cpu_profile().with_efficiency(copy=0.9)
    no_streaming = [c for c in CONFIGS if not c[-1]][:2]
    runs = [load_run(p) for p in write_reports(tmp_path, profile, TRUTH_CPU, no_streaming)]
    calibration = fit(runs, profile)
    assert "copy" not in calibration.fitted
    assert calibration.after["copy"] == 0.9


def test_calibration_improves_held_out_error(tmp_path):
    profile = cpu_profile()
    runs = [load_run(p) for p in write_reports(tmp_path, profile, TRUTH_CPU, CONFIGS, noise=0.03)]
    train, held_out = runs[0::2], runs[1::2]
    calibrated = fit(train, profile).profile
    before = [abs(e.end_to_end) for e in run_errors(held_out, profile)]
    after = [abs(e.end_to_end) for e in run_errors(held_out, calibrated)]
    assert sum(after) / len(after) < 0.08 < sum(before) / len(before)


def test_device_run_fits_copy_efficiency(tmp_path):
    profile = make_profile(device=True, device_gib=2.5, link_gbps=10.0, name="synthetic-gpu")
    truth = {"copy": 0.55, "gemm": 0.8}
    spec = small_spec("mixtral", num_layers=8, hidden_size=2048, moe_intermediate_size=4096)
    report = synthetic_report(spec, profile, truth, 2.0, Workload.fixed(256, 64, 1024))
    run = run_from_report(report)
    assert run.plan.decisions.stream_weights
    calibration = fit([run], profile)
    assert calibration.after["copy"] == pytest.approx(0.55, rel=0.05)


def test_cli_writes_a_calibrated_profile(tmp_path, capsys, monkeypatch):
    profile = cpu_profile()
    monkeypatch.setenv("MOELENS_PROFILES_DIR", str(tmp_path))
    profile.save(tmp_path / "synthetic-cpu.yaml")
    paths = write_reports(tmp_path, profile, TRUTH_CPU, CONFIGS[:3])
    out = tmp_path / "fitted.yaml"
    assert main(["calibrate", *map(str, paths), "--profile", "synthetic-cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "before" in printed and f"wrote {out}" in printed
    fitted = load_profile(out)
    assert fitted.name == "fitted" and fitted.provenance.kind == "calibrated"
    assert len(fitted.provenance.calibrated_from) == 3
    assert all(
        str(p) in entry and "sha256:" in entry for p, entry in zip(paths, fitted.provenance.calibrated_from)
    )
    assert fitted.efficiency.gemm == pytest.approx(TRUTH_CPU["gemm"], rel=0.05)
    assert fitted.gemm_curves == profile.gemm_curves


def _bad_report_cases(tmp_path):
    good = synthetic_report(small_spec(), cpu_profile(), TRUTH_CPU, 0.1, Workload.fixed(64, 16, 64))
    no_steps = json.loads(json.dumps(good))
    no_steps["run_stats"]["decode_steps"] = 0
    wrong_type = json.loads(json.dumps(good))
    wrong_type["run_stats"]["config"]["module_batching"] = "yes"
    no_stats = {k: v for k, v in good.items() if k != "run_stats"}
    other_spec = json.loads(json.dumps(good))
    other_spec["spec"]["hidden_size"] = 1024
    return {
        "not json": "{not json",
        "a list": "[1, 2]",
        "no run_stats": json.dumps(no_stats),
        "no decode steps": json.dumps(no_steps),
        "mistyped": json.dumps(wrong_type),
        "other spec": json.dumps(other_spec),
    }


def test_bad_reports_raise_user_errors(tmp_path):
    for case, text in _bad_report_cases(tmp_path).items():
        path = tmp_path / f"{case.replace(' ', '_')}.json"
        path.write_text(text)
        with pytest.raises(UserError) as err:
            load_run(path)
        assert str(path) in str(err.value), case
    with pytest.raises(UserError, match="does not exist"):
        load_run(tmp_path / "missing.json")


def test_reports_from_another_profile_are_refused(tmp_path, capsys):
    paths = write_reports(tmp_path, cpu_profile(), TRUTH_CPU, CONFIGS[:1])
    other = make_profile(device=False, cores=4, read_gbps=80.0, name="other-cpu")
    other_path = tmp_path / "other-cpu.yaml"
    other.save(other_path)
    code = main(["calibrate", str(paths[0]), "--profile", str(other_path), "--out", str(tmp_path / "x.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "measurements are not those of other-cpu" in err and "Traceback" not in err
    assert not (tmp_path / "x.yaml").exists()


def test_cli_rejects_bad_out_path(tmp_path, capsys):
    paths = write_reports(tmp_path, cpu_profile(), TRUTH_CPU, CONFIGS[:1])
    profile_path = tmp_path / "p.yaml"
    cpu_profile().save(profile_path)
    assert (
        main(["calibrate", str(paths[0]), "--profile", str(profile_path), "--out", str(tmp_path / "x.txt")])
        == 2
    )
    assert ".yaml" in capsys.readouterr().err
    assert yaml.safe_load(profile_path.read_text())["provenance"]["kind"] == "measured"


def test_runs_on_a_slowed_machine_fit_the_constants_of_the_unslowed_one(tmp_path):
    """Probe jobs measured while the machine ran at 0.8x its fingerprint's speed, scaled back by
    `at_machine_speed`, fit what the same jobs at full speed fit."""
    profile = cpu_profile()
    runs = [load_run(p) for p in write_reports(tmp_path, profile, TRUTH_CPU, CONFIGS)]
    slowed = [r.at_machine_speed(1 / 0.8) for r in runs]  # every time 1.25x longer, every rate 0.8x
    assert slowed[0].measured.generated_tok_s == pytest.approx(0.8 * runs[0].measured.generated_tok_s)
    restored = fit([r.at_machine_speed(0.8) for r in slowed], profile)
    for name, value in TRUTH_CPU.items():
        assert restored.after[name] == pytest.approx(value, rel=0.03), name
    assert fit(slowed, profile).after["gemm"] < 0.9 * TRUTH_CPU.get("gemm", 1.0)

"""The benchmark scripts' logic on tiny inputs (nothing here times anything): config lists build the plans
they promise, BENCHMARKS.md sections are replaced in place, one tiny engine run gives a report calibration
reads, the accuracy analysis and the plots run on synthetic data, and the GPU script's non-GPU parts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench import accuracy_analysis, bench_accuracy, bench_throughput, run_all
from bench.common import markdown_table, run_engine, update_section
from planner.calibration.runs import predict_run, run_from_report
from planner.hardware.profile import load_profile
from planner.perf.memory import Budgets
from planner.plans.build import make_plan
from planner.plans.workload import Workload
from planner.specs.spec import ModelSpec, load_spec
from tests.planner_support import make_profile, small_spec
from tests.test_calibrate import TRUTH_CPU, synthetic_report

TINY = ModelSpec(
    name="tiny-bench-mixtral",
    family="mixtral",
    num_layers=3,
    hidden_size=128,
    num_heads=2,
    num_kv_heads=1,
    head_dim=64,
    vocab_size=512,
    num_experts=4,
    top_k=2,
    moe_intermediate_size=64,
    max_position_embeddings=256,
)


def cpu_profile():
    return make_profile(
        device=False, cores=2, host_gib=24.0, read_gbps=6.0, peak_tflops=0.05, name="bench-cpu"
    )


def config_spec(config):
    spec = load_spec(config.model)
    return spec.with_layers(config.layers) if config.layers else spec


def test_accuracy_configs_cover_the_matrix_and_build_their_plans():
    configs = bench_accuracy.CONFIGS
    assert len(configs) >= 12 and len({c.name for c in configs}) == len(configs)
    families = {config_spec(c).family for c in configs}
    assert {"mixtral", "qwen3_moe", "deepseek_v2"} <= families
    for split in ("train", "held-out"):
        part = [c for c in configs if c.split == split]
        assert any(c.streaming for c in part) and any(not c.streaming for c in part)
    profile = cpu_profile()
    for quick in (False, True):
        for config in (c.scaled(quick) for c in configs):
            plan = bench_accuracy.plan_for(config, config_spec(config), profile, Path("ckpt"), "bench-cpu")
            assert plan.decisions.num_seqs == config.num_seqs, config.name
            assert (
                plan.decisions.stream_weights == config.streaming
                and plan.workload.num_prompts == config.num_prompts
            )
            if (
                config.streaming
            ):  # the engine's forced-streaming mode: every layer group kept, experts streamed
                assert plan.decisions.resident_experts_per_layer == 0
                assert set(plan.decisions.resident_modules) == set(
                    bench_accuracy.STREAMING_OVERRIDES["resident_modules"]
                )
                assert (
                    plan.predicted.decode_step_s > 0 and plan.module_times["decode_step"]["weight_copy"] > 0
                )


def test_kv_sweep_rows_share_one_workload():
    frame = pd.DataFrame(
        [
            {
                "model": c.model,
                "prompt_len": c.prompt_len,
                "gen_len": c.gen_len,
                "num_prompts": c.num_prompts,
                "kv_gib": float(c.num_seqs),
                "mode": "cpu",
            }
            for c in bench_accuracy.CONFIGS
            if not c.streaming
        ]
    )
    from notebooks.plots import kv_sweep_runs

    rows = kv_sweep_runs(frame)
    assert len(rows) >= 3 and rows["model"].nunique() == 1 and rows["kv_gib"].nunique() == len(rows)


def test_update_section_replaces_its_own_block_only(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nintro\n")
    update_section("x", "first", md)
    update_section("y", "other", md)
    update_section("x", "second\nbody", md)
    text = md.read_text()
    assert text.count("<!-- bench:x -->") == 1 and "first" not in text and "second\nbody" in text
    assert text.startswith("# Benchmarks\n\nintro\n") and "other" in text
    assert text.index("second") < text.index("other")


def test_markdown_table():
    table = markdown_table(["a", "b"], [["x", 0.12345], ["y", 12345.6]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x | 0.123 |", "| y | 12,346 |"]


def test_tiny_engine_run_gives_a_report_calibration_reads(tmp_path):
    from runtime.checkpoint import open_checkpoint
    from runtime.checkpoint.writer import write_random_checkpoint

    write_random_checkpoint(TINY, tmp_path / "ckpt", dtype="bf16", seed=1)
    checkpoint = open_checkpoint(tmp_path / "ckpt")
    profile = cpu_profile()
    plan = make_plan(
        checkpoint.spec,
        profile,
        Workload.fixed(8, 4, 6),
        Budgets.from_args(profile, 0.01),
        model_ref=str(tmp_path / "ckpt"),
    )
    prompts = [[1 + (i * 7 + j) % 500 for j in range(8)] for i in range(6)]
    report = run_engine(
        checkpoint,
        plan,
        profile,
        prompts,
        4,
        force_streaming=True,
        resident_experts_per_layer=0,
        resident_modules=bench_accuracy.STREAMING_OVERRIDES["resident_modules"],
    )
    assert report["output_tokens"] == 24 and report["engine_overrides"]["force_streaming"] is True
    run = run_from_report(json.loads(json.dumps(report)))
    assert run.engine.force_streaming and run.measured.streamed_bytes > 0
    prediction = predict_run(run, profile)
    assert prediction.decode_modules["weight_copy"] > 0 and prediction.generated_tok_s > 0


def synthetic_accuracy_reports(tmp_path) -> list[Path]:
    profile = cpu_profile()
    paths = []
    for i, (family, kv, streaming, split) in enumerate(
        [
            ("mixtral", 0.02, False, "train"),
            ("mixtral", 0.1, True, "train"),
            ("deepseek_v2", 0.05, False, "held-out"),
            ("mixtral", 0.05, False, "held-out"),
        ]
    ):
        workload = Workload.fixed(64, 16, 64)
        report = synthetic_report(
            small_spec(family),
            profile,
            TRUTH_CPU,
            kv,
            workload,
            force_streaming=streaming,
            noise=0.02,
            seed=i,
        )
        report["bench_config"] = {
            "name": f"c{i}",
            "streaming": streaming,
            "split": split,
            "num_prompts": 64,
            "prompt_len": 64,
            "gen_len": 16,
        }
        report["utilisation"] = {
            "s_mbu": {"achieved": 0.1, "predicted": 0.2},
            "s_mfu": {"achieved": 0.01, "predicted": 0.02},
        }
        report["memory"] = {"host": {"peak_bytes": 1 << 30, "plan_bytes": 2 << 30}}
        report["elapsed_time"] = report["run_stats"]["wall_seconds"]
        report["run_stats"]["num_preemptions"] = 0
        achieved = report["run_stats"]["generated_tokens"] / report["run_stats"]["wall_seconds"]
        report["repeats_tok_s"] = [achieved * 0.9, achieved, achieved * (1.1 + 0.1 * i)]
        path = tmp_path / f"c{i}.json"
        path.write_text(json.dumps(report))
        paths.append(path)
    profile.save(tmp_path / "bench-cpu.yaml")
    return paths


def test_accuracy_analysis_and_plots_on_synthetic_runs(tmp_path):
    from notebooks import plots

    paths = synthetic_accuracy_reports(tmp_path)
    result = accuracy_analysis.analyse(paths, str(tmp_path / "bench-cpu.yaml"))
    frame = result.frame
    assert len(frame) == 4 and set(frame["split"]) == {"train", "held-out"}
    assert frame["error_after"].abs().max() < frame["error_before"].abs().min()
    md = tmp_path / "BENCHMARKS.md"
    written = accuracy_analysis.write_outputs(
        result, tmp_path, "python -m bench.bench_accuracy", quick=True, results_dir=tmp_path, benchmarks_md=md
    )
    assert load_profile(written["profile"]).provenance.kind == "calibrated"
    assert "held-out mean / max |error|" in md.read_text()
    assert list(frame["pass_spread"].round(3)) == [0.2, 0.3, 0.4, 0.5]
    summary = accuracy_analysis.error_summary(frame)
    assert summary["pass_spread_max"] == pytest.approx(0.5) and summary[
        "pass_spread_median"
    ] == pytest.approx(0.35)
    assert summary["pass_noise_mean"] == pytest.approx(
        (0.2 + 0.15) / 3
    )  # (0.1 + 0 + 0.1 + 0.1 i) / 3, mean over i
    assert (
        "a config's passes (minutes apart, same prompts' sizes) spread by 35% of their median"
        in md.read_text()
    )
    csv = pd.read_csv(written["csv"])
    csv["model"] = "qwen3-mini"
    csv.loc[:, "kv_gib"] = [0.02, 0.05, 0.1, 0.2]
    csv.loc[:, "mode"] = "cpu"
    csv.to_csv(tmp_path / "tiny.csv", index=False)
    figures = tmp_path / "figures"
    assert (
        plots.main(
            [
                "--accuracy-csv",
                str(tmp_path / "tiny.csv"),
                "--profile",
                str(tmp_path / "bench-cpu.yaml"),
                "--out-dir",
                str(figures),
                "--radar-profiles",
                "a5000-epyc7453",
                "t4-aws-g4dn-8xlarge",
                "--gpu-profile",
                "a5000-epyc7453",
            ]
        )
        == 0
    )
    for name in ("predicted_vs_achieved", "throughput_vs_kv", "roofline", "cap_radar"):
        png = (figures / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name


def test_accuracy_median_pass_report(tmp_path):
    passes = []
    for i, tok_s in enumerate([300.0, 100.0, 200.0]):
        path = tmp_path / f"c.pass{i}.json"
        path.write_text(json.dumps({"throughput": {"end_to_end": {"achieved": tok_s}}, "bench_pass": i}))
        passes.append(path)
    report = bench_accuracy.median_report(passes, tmp_path / "c.json")
    written = json.loads((tmp_path / "c.json").read_text())
    assert report["bench_pass"] == written["bench_pass"] == 2
    assert written["repeats_tok_s"] == [300.0, 100.0, 200.0]


def test_gpu_smoke_plans_streaming_on_a_capped_device_and_skips_without_cuda(tmp_path, monkeypatch, capsys):
    from bench import gpu_smoke, gpu_smoke_stages
    from planner.plans.workload import Workload

    profile, workload = load_profile("h100-pcie-lambda"), Workload.fixed(128, 32, 128)
    for model in ("mixtral-8x7b", "deepseek-v2-lite"):
        plan, cap = gpu_smoke_stages.capped_plan(
            load_spec(model).with_layers(4), profile, workload, dry_run=False
        )
        assert plan.decisions.stream_weights and plan.budgets.device_gib == cap
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_smoke.main(["--out", str(tmp_path / "none")]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out and not (tmp_path / "none").exists()


def test_throughput_markdown_and_run_all_commands():
    def system(tok_s, **extra):
        return {
            "tok_s": tok_s,
            "all_tok_s": [tok_s],
            "peak_host_bytes": 2 << 30,
            "machine_speed": [0.9, 0.8],
            **extra,
        }

    results = {
        "sizes": bench_throughput.QUICK,
        "profile": "p",
        "hf_probes": {8: 1.0},
        "off_probes": {8: 2.0},
        "systems": {
            "hf": system(1.0, batch=8),
            "engine-off": system(2.0, batch=8),
            "engine-planned": system(
                6.0, num_seqs=32, plan_tok_s=5.0, plan_host_bytes=3 << 30, plan_host_budget=20 << 30
            ),
        },
    }
    text = bench_throughput.markdown(results, "python -m bench.bench_throughput --quick", "Machine: test.")
    assert "6.00x HF generate()" in text and "3.00x module batching off" in text and "error -16.7%" in text
    assert "| 0.90, 0.80 |" in text  # the machine's speed against the profile's during the run
    commands = dict(run_all.commands(quick=True))
    assert commands["accuracy"][-3:] == ["--measure-profile", "quick", "--quick"]
    assert commands["plots"][-1] == "notebooks/plots.py"
    assert dict(run_all.commands(quick=False))["accuracy"][-2:] == ["--measure-profile", "full"]


def test_reuse_keeps_an_emulated_link_report_planned_behind_that_link(tmp_path, monkeypatch):
    config = bench_accuracy.LINK_CONFIGS[0]
    profile = load_profile("cpu-amd-epyc-2c")
    emulated = bench_accuracy.profile_for(config, profile).fingerprint()
    assert emulated != profile.fingerprint()
    report = {
        "bench_config": json.loads(json.dumps(bench_accuracy.asdict(config))),
        "profile": {"plan_fingerprint": emulated},
    }
    (tmp_path / f"{config.name}.json").write_text(json.dumps(report))

    def no_run(*args, **kwargs):
        raise AssertionError("a reusable report was run again")

    monkeypatch.setattr(bench_accuracy.subprocess, "run", no_run)
    paths = bench_accuracy.run_all([config], "cpu-amd-epyc-2c", tmp_path, reuse=True, timeout_s=1)
    assert paths == [tmp_path / f"{config.name}.json"]

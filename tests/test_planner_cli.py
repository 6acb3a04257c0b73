"""The `planner` command: solve / explain / sweep / bound on shipped models and profiles, plan YAML round
trips, and every user error ending in one message with exit code 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from planner.cli import main
from planner.plans.plan import Plan
from tests.planner_support import profile_dict

PROFILE = "a5000-epyc7453"
REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "model, extra",
    [
        ("mixtral", ()),
        ("deepseek-v2-lite", ()),
        ("qwen3-30b-a3b", ()),
        (
            "mixtral-8x22b",
            ("--host-gb", "512"),
        ),  # 262 GiB of bf16 weights: more than the profile's 256 GiB host
    ],
)
def test_solve_prints_and_writes_a_plan(capsys, tmp_path, model, extra):
    out_path = tmp_path / "plan.yaml"
    code, out, err = run(
        capsys,
        "solve",
        "--model",
        model,
        "--kv-gb",
        "128",
        "--profile",
        PROFILE,
        "--out",
        str(out_path),
        *extra,
    )
    assert code == 0, err
    assert "tok/s end to end" in out and "bottleneck:" in out and "bound" in out and "solved in" in out
    plan = Plan.load(out_path)
    assert (
        plan.profile.name == PROFILE and plan.decisions.num_seqs >= 1 and plan.predicted.generated_tok_s > 0
    )
    assert Plan.from_yaml(plan.to_yaml()) == plan
    assert yaml.safe_load(out_path.read_text())["schema_version"] == 1


def test_mixtral_8x22b_does_not_fit_the_profiles_host_memory(capsys):
    code, _, err = run(capsys, "solve", "--model", "mixtral-8x22b", "--kv-gb", "128", "--profile", PROFILE)
    assert code == 2 and "exceed host memory" in err and "Traceback" not in err


def test_explain_tables_and_what_ifs(capsys, tmp_path):
    path = tmp_path / "plan.yaml"
    assert (
        run(capsys, "solve", "--model", "mixtral", "--kv-gb", "64", "--profile", PROFILE, "--out", str(path))[
            0
        ]
        == 0
    )
    code, out, _ = run(capsys, "explain", str(path))
    assert code == 0
    for text in (
        "seconds per module",
        "binding resource:",
        "upper bound term",
        "host memory",
        "device memory",
        "what would raise throughput most: 2x",
        "experts",
        "weight_copy",
        "mean decode batch (of N)",
    ):
        assert text in out
    code, out, _ = run(capsys, "explain", str(path), "--no-what-if")
    assert code == 0 and "what would raise" not in out


def test_sweep_writes_a_monotone_csv(capsys, tmp_path):
    out_path = tmp_path / "sweep.csv"
    code, out, _ = run(
        capsys,
        "sweep",
        "--model",
        "mixtral",
        "--kv-gb",
        "128",
        "--profile",
        PROFILE,
        "--vary",
        "kv-gb=16:512",
        "--steps",
        "6",
        "--out",
        str(out_path),
    )
    assert code == 0 and "wrote" in out
    frame = pd.read_csv(out_path)
    assert list(frame["kv-gb"]) == pytest.approx([16, 32, 64, 128, 256, 512])
    assert frame["generated_tok_s"].is_monotonic_increasing
    assert (frame["generated_tok_s"] <= frame["bound_tok_s"]).all()


def test_bound_command(capsys):
    code, out, _ = run(capsys, "bound", "--model", "qwen3", "--kv-gb", "128", "--profile", PROFILE)
    assert code == 0 and "kv_link" in out and "device_compute" in out and "set by" in out


def test_prompts_file_drives_the_workload(capsys, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "' + "a" * 400 + '", "max_tokens": 64}\n{"prompt_token_ids": [1, 2, 3]}\n')
    path = tmp_path / "plan.yaml"
    code, out, err = run(
        capsys,
        "solve",
        "--model",
        "mixtral",
        "--kv-gb",
        "32",
        "--profile",
        PROFILE,
        "--prompts",
        str(prompts),
        "--gen-len",
        "32",
        "--num-prompts",
        "5000",
        "--out",
        str(path),
    )
    assert code == 0, err
    w = Plan.load(path).workload
    assert (w.num_prompts, w.prompt_len_max, w.gen_len_max, w.token_count) == (5000, 100, 64, "bytes/4")


def test_dtype_changes_bytes(capsys, tmp_path):
    path = tmp_path / "plan.yaml"
    code, _, err = run(
        capsys,
        "solve",
        "--model",
        "mixtral-8x22b",
        "--kv-gb",
        "64",
        "--profile",
        PROFILE,
        "--dtype",
        "fp8",
        "--out",
        str(path),
    )
    assert code == 0, err
    model = Plan.load(path).model  # fp8 stored, computed in the spec dtype (what the runtime runs)
    assert model.dtype == "bfloat16" and set(model.weight_formats.values()) == {"fp8"}
    assert "experts" in model.weight_formats and "fp8 (" in model.weights_label


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["solve", "--model", "mixtral", "--kv-gb", "0.01", "--profile", PROFILE],
            "cannot hold one sequence",
        ),
        (["solve", "--model", "no-such-model", "--kv-gb", "8", "--profile", PROFILE], "unknown model"),
        (["solve", "--model", "mixtral", "--kv-gb", "8", "--profile", "no-such-profile"], "known: a"),
        (["solve", "--model", "mixtral", "--kv-gb", "-5", "--profile", PROFILE], "--kv-gb"),
        (["solve", "--model", "mixtral", "--kv-gb", "1e12", "--profile", PROFILE], "--kv-gb"),
        (
            ["solve", "--model", "mixtral", "--kv-gb", "8", "--profile", PROFILE, "--prompt-len", "0"],
            "--prompt-len",
        ),
        (
            ["solve", "--model", "mixtral", "--kv-gb", "8", "--profile", PROFILE, "--num-prompts", "-3"],
            "--num-prompts",
        ),
        (
            ["solve", "--model", "mixtral", "--kv-gb", "8", "--profile", PROFILE, "--prompt-len", "40000"],
            "context",
        ),
        (["solve", "--model", "mixtral", "--kv-gb", "8", "--profile", PROFILE, "--dtype", "int3"], "--dtype"),
        (
            ["solve", "--model", "mixtral", "--kv-gb", "8", "--profile", PROFILE, "--device-gb", "0.2"],
            "device memory",
        ),
        (
            [
                "sweep",
                "--model",
                "mixtral",
                "--kv-gb",
                "8",
                "--profile",
                PROFILE,
                "--vary",
                "speed=1:2",
                "--out",
                "x.csv",
            ],
            "cannot vary",
        ),
        (["explain", "/no/such/plan.yaml"], "does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_message(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err and err.startswith("error: ")


def test_profile_missing_a_field_and_no_profile_for_this_machine(capsys, only_user_data):
    data = profile_dict()
    del data["memory"]
    for kind in ("models", "profiles"):
        (only_user_data / kind).mkdir()
    (only_user_data / "profiles" / "broken.yaml").write_text(yaml.safe_dump(data))
    shutil.copy(REPO / "models" / "mixtral-8x7b.yaml", only_user_data / "models")
    code, _, err = run(
        capsys,
        "solve",
        "--model",
        "mixtral",
        "--kv-gb",
        "8",
        "--profile",
        str(only_user_data / "profiles" / "broken.yaml"),
    )
    assert code == 2 and "memory" in err and "missing" in err
    code, _, err = run(capsys, "solve", "--model", "mixtral", "--kv-gb", "8")
    assert code == 2 and "no hardware profile for this machine" in err and "broken" in err


def test_broken_plan_file_names_the_field(capsys, tmp_path):
    path = tmp_path / "plan.yaml"
    assert (
        run(capsys, "solve", "--model", "mixtral", "--kv-gb", "64", "--profile", PROFILE, "--out", str(path))[
            0
        ]
        == 0
    )
    data = yaml.safe_load(path.read_text())
    data["predicted"]["decode_tok_s"] = "fast"
    path.write_text(yaml.safe_dump(data))
    code, _, err = run(capsys, "explain", str(path))
    assert code == 2 and "predicted.decode_tok_s" in err
    del data["num_seqs"]
    data["predicted"]["decode_tok_s"] = 1.0
    path.write_text(yaml.safe_dump(data))
    code, _, err = run(capsys, "explain", str(path))
    assert code == 2 and "num_seqs" in err and "missing" in err


def test_python_dash_m_planner():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "planner",
            "solve",
            "--model",
            "mixtral",
            "--kv-gb",
            "0.01",
            "--profile",
            PROFILE,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2 and done.stderr.count("\n") <= 2 and "cannot hold one sequence" in done.stderr

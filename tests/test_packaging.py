"""Packaging and data locations: the extension is built by the package build (a killed build leaves nothing a
later run waits on), a wheel installed into a fresh virtual environment works from anywhere, and nothing
writes into the shipped specs and profiles.

The wheel test builds with `pip wheel --no-build-isolation` (the project's own build dir, so the compiled
objects of `make install` are reused by ninja), then installs the wheel with torch 2.13.0 from pip's
configured indexes into a venv without system site packages, and runs the installed console scripts from
a directory outside the checkout, with PYTHONPATH unset.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from planner import locations
from planner.cli import main as planner_main
from runtime.cli import main as runtime_main
from tests.conftest import TINY_SPEC

REPO_ROOT = Path(__file__).resolve().parents[1]


def _write_prompts(path: Path, count: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": i, "prompt": f"Hello {i}", "max_tokens": 4}) + "\n" for i in range(count))
    )
    return path


# ---- a killed build -------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_build_killed_mid_compile_leaves_nothing_a_later_run_waits_on(tmp_path, tiny_job):
    temp, lib = tmp_path / "temp", tmp_path / "lib"
    build = subprocess.Popen(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-temp", str(temp), "--build-lib", str(lib)],
        cwd=REPO_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(temp.rglob("build.ninja")) and time.monotonic() < deadline and build.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)  # the compiler is running now
    assert build.poll() is None, "the build ended before it could be killed"
    os.killpg(build.pid, signal.SIGKILL)
    build.wait(timeout=30)
    assert not list(lib.rglob("_C*.so")), "the build finished: it was not killed part-way"

    # a small job afterwards, with the killed build's directory as its working directory: it neither
    # compiles nor waits, and uses the extension that the package build installed
    inputs = _write_prompts(tmp_path / "in.jsonl", 3)
    done = subprocess.run(
        [sys.executable, "-m", "runtime", *tiny_job.execute_args(inputs, tmp_path / "out.jsonl")],
        env=tiny_job.env,
        cwd=temp,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
    assert "extension" not in done.stderr, done.stderr  # no "not built" warning, no build output
    assert not [p for p in tmp_path.rglob("*") if p.name == "lock"]


# ---- writes never land in shipped data ------------------------------------------------------------
@pytest.mark.parametrize("target", ["profiles/cpu-amd-epyc-2c.yaml", "profiles/new.yaml", "models/x.yaml"])
def test_runtime_profile_refuses_to_write_into_shipped_data(capsys, target):
    path = Path(str(locations.shipped_dir("profiles"))).parent / target
    before = path.read_bytes() if path.exists() else None
    assert runtime_main(["profile", "--sizing", "tiny", "--out", str(path)]) == 2  # refused before measuring
    assert "shipped data, which is never overwritten" in capsys.readouterr().err
    assert (path.read_bytes() if path.exists() else None) == before


def test_calibrate_refuses_shipped_out_and_defaults_to_the_user_dir(tmp_path, monkeypatch, capsys):
    from tests.test_calibrate import CONFIGS, TRUTH_CPU, cpu_profile, write_reports

    monkeypatch.setenv("MOELENS_HOME", str(tmp_path / "home"))
    profile = cpu_profile()
    profile.save(locations.user_file("profiles", "synthetic-cpu"))
    reports = [str(p) for p in write_reports(tmp_path, profile, TRUTH_CPU, CONFIGS[:3])]
    shipped = Path(str(locations.shipped_dir("profiles"))) / "a5000-epyc7453.yaml"
    before = shipped.read_bytes()
    code = planner_main(["calibrate", *reports, "--profile", "synthetic-cpu", "--out", str(shipped)])
    assert code == 2 and "never overwritten" in capsys.readouterr().err
    assert shipped.read_bytes() == before
    assert planner_main(["calibrate", *reports, "--profile", "synthetic-cpu"]) == 0
    written = tmp_path / "home" / "profiles" / "synthetic-cpu-calibrated.yaml"
    assert f"wrote {written}" in capsys.readouterr().out
    assert "synthetic-cpu-calibrated" in locations.known_names("profiles")


def test_user_dir_shadows_shipped_data(tmp_path, monkeypatch):
    from planner.hardware.profile import load_profile

    monkeypatch.setenv("MOELENS_HOME", str(tmp_path))
    shipped = load_profile("a5000-epyc7453")
    assert (
        locations.find("profiles", "a5000-epyc7453")
        == locations.shipped_dir("profiles") / "a5000-epyc7453.yaml"
    )
    replace(shipped, notes="mine").save(locations.user_file("profiles", "a5000-epyc7453"))
    assert load_profile("a5000-epyc7453").notes == "mine"
    assert locations.known_names("profiles").count("a5000-epyc7453") == 1


# ---- a wheel in a fresh virtual environment --------------------------------------------------------
def _run(args: list, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_wheel_installs_with_torch_into_a_fresh_venv_and_works_outside_the_checkout(tmp_path):
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    dist = tmp_path / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            dist,
            REPO_ROOT,
        ],
        cwd=REPO_ROOT,
        env=base_env,
        timeout=600,
    )
    (wheel,) = dist.glob("moelens-*.whl")
    venv.create(tmp_path / "venv", with_pip=True, system_site_packages=False)
    bin_dir = tmp_path / "venv" / "bin"
    _run(
        [bin_dir / "python", "-m", "pip", "install", "--quiet", "torch==2.13.0", wheel],
        cwd=tmp_path,
        env=base_env,
        timeout=600,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**base_env, "MOELENS_HOME": str(tmp_path / "home")}
    site = Path(
        _run(
            [bin_dir / "python", "-c", "import planner; print(planner.__file__)"], elsewhere, env
        ).stdout.strip()
    ).parent.parent
    assert site.name == "site-packages" and not str(site).startswith(str(REPO_ROOT))
    shipped_before = sorted(p.name for p in (site / "planner" / "data" / "profiles").iterdir())

    assert _run([bin_dir / "planner", "--version"], elsewhere, env).stdout.strip().endswith("0.1.0")
    solved = _run(
        [
            bin_dir / "planner",
            "solve",
            "--model",
            "mixtral",
            "--kv-gb",
            "128",
            "--profile",
            "h100-sxm-lambda",
        ],
        elsewhere,
        env,
    )
    assert "tok/s" in solved.stdout
    unknown = subprocess.run(
        [bin_dir / "planner", "solve", "--model", "nope", "--kv-gb", "8"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "unknown model 'nope'" in unknown.stderr
    assert "'mixtral-8x7b'" in unknown.stderr and "use one of []" not in unknown.stderr

    # a tiny job: this machine profiled (into the user dir), a checkpoint, a plan, a few prompts
    runtime = bin_dir / "runtime"
    measured = Path(_run([runtime, "profile", "--sizing", "tiny"], elsewhere, env).stdout.strip())
    assert measured.parent == tmp_path / "home" / "profiles"
    (elsewhere / "tiny.yaml").write_text(yaml.safe_dump(TINY_SPEC, sort_keys=False))
    _run(
        [
            runtime,
            "make-checkpoint",
            "--model",
            "tiny.yaml",
            "--layers",
            "2",
            "--dtype",
            "fp32",
            "--out",
            "ckpt",
            "--quiet",
        ],
        elsewhere,
        env,
    )
    _run(
        [
            bin_dir / "planner",
            "solve",
            "--model",
            "ckpt",
            "--kv-gb",
            "0.01",
            "--prompt-len",
            "12",
            "--gen-len",
            "8",
            "--num-prompts",
            "4",
            "--out",
            "plan.yaml",
        ],
        elsewhere,
        env,
    )
    _write_prompts(elsewhere / "in.jsonl", 4)
    done = _run(
        [runtime, "execute", "plan.yaml", "--input", "in.jsonl", "--output", "out.jsonl", "--quiet"],
        elsewhere,
        env,
    )
    assert len((elsewhere / "out.jsonl").read_text().splitlines()) == 4
    assert "torch fallback" not in done.stderr, done.stderr  # the wheel's extension was used

    assert sorted(p.name for p in (site / "planner" / "data" / "profiles").iterdir()) == shipped_before
    assert not list(site.rglob("build.ninja")) and not (site / "build").exists()
    assert (
        "Apache License" in next(site.glob("moelens-*.dist-info")).joinpath("licenses", "LICENSE").read_text()
    )
    shutil.rmtree(tmp_path / "venv")  # ~1 GB: do not keep it until pytest's cleanup

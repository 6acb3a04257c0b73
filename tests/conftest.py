"""Shared pytest setup: tests marked `big` (gigabytes of disk or memory) run only with MOELENS_BIG=1;
MOELENS_HOME points at a fresh temporary user dir for the whole session (tests neither read nor write the
real per-user data); `only_user_data`, a per-test user dir with the shipped specs and profiles hidden;
`tiny_job`, a session fixture for tests that run the real `runtime` CLI in subprocesses; `single_torch_thread`,
which runs a module on one intra-op thread (tiny models gain nothing from threads, and on a shared 2-core
machine threads make them up to 50x slower)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    os.environ["MOELENS_HOME"] = tempfile.mkdtemp(prefix="moelens-home-")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ.pop("MOELENS_HOME", ""), ignore_errors=True)


@pytest.fixture
def only_user_data(tmp_path, monkeypatch) -> Path:
    """A fresh user dir (MOELENS_HOME) and no shipped data: name lookups see only what a test puts there."""
    from planner import locations

    monkeypatch.setenv("MOELENS_HOME", str(tmp_path))
    for variable in locations.FOLDER_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(locations, "shipped_dir", lambda kind: tmp_path / "no-shipped-data" / kind)
    return tmp_path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from planner import settings

    if settings.big_tests():
        return
    skip_big = pytest.mark.skip(reason="big test: set MOELENS_BIG=1 to run it")
    for item in items:
        if "big" in item.keywords:
            item.add_marker(skip_big)


# ----- a tiny checkpoint, a profile "of this machine" and a plan, for tests that run `runtime execute` -----
TINY_SPEC = {
    "name": "tiny-mixtral",
    "family": "mixtral",
    "num_layers": 4,
    "hidden_size": 128,
    "num_heads": 2,
    "num_kv_heads": 1,
    "head_dim": 64,
    "vocab_size": 512,
    "num_experts": 4,
    "top_k": 2,
    "moe_intermediate_size": 64,
    "max_position_embeddings": 64,
    "dtype": "float32",
}


@dataclass(frozen=True)
class TinyJob:
    """`root` holds ckpt/ (2-layer fp32 checkpoint in 3 shards, made by the real CLI), profiles/<this machine>.yaml and
    plan.yaml; `env` is the environment a `python -m runtime` subprocess needs to find them."""

    root: Path
    checkpoint: Path
    plan: Path
    env: dict

    def runtime(self, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "runtime", *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    def execute_args(self, input: Path, output: Path, *extra: str, plan: Path | None = None) -> list[str]:
        return [
            "execute",
            str(plan or self.plan),
            "--input",
            str(input),
            "--output",
            str(output),
            "--quiet",
            *extra,
        ]


@pytest.fixture(scope="session")
def tiny_job(tmp_path_factory) -> TinyJob:
    import yaml

    from planner.hardware.profile import load_profile
    from planner.hardware.this_machine import this_machine
    from planner.perf.memory import Budgets
    from planner.plans.build import make_plan
    from planner.plans.workload import Workload
    from planner.specs.spec import load_spec

    root = tmp_path_factory.mktemp("tiny-job")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_SPEC, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MOELENS_PROFILES_DIR=str(root / "profiles"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "make-checkpoint",
            "--model",
            str(root / "tiny.yaml"),
            "--layers",
            "2",
            "--dtype",
            "fp32",
            "--max-shard-gb",
            "0.0006",
            "--out",
            str(root / "ckpt"),
            "--quiet",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    here = this_machine()
    base = load_profile("a5000-epyc7453")
    profile = replace(
        base,
        name=here.profile_name,
        links=None,
        machine=replace(
            base.machine,
            cpu=here.cpu,
            cores=here.cores,
            device=here.device,
            device_memory_gib=0,
            host_memory_gib=8,
        ),
    )
    profile_path = profile.save(root / "profiles" / f"{profile.name}.yaml")
    spec = load_spec(root / "ckpt")
    plan = make_plan(
        spec,
        profile,
        Workload.fixed(12, 8, 64),
        Budgets.from_args(profile, 0.01),
        model_ref=str(root / "ckpt"),
        profile_ref=str(profile_path),
    )
    plan = replace(
        plan, decisions=replace(plan.decisions, attention_threads=1, compute_threads=1)
    )  # 2 threads crawl
    return TinyJob(root=root, checkpoint=root / "ckpt", plan=plan.save(root / "plan.yaml"), env=env)


@pytest.fixture(scope="module")
def single_torch_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def relabelled_profile_for_this_machine(directory: Path) -> Path:
    """A shipped profile renamed as this machine's measured one (CPU only, 8 GiB), saved in `directory`: lets
    code that plans for "this machine" (`runtime.LLM(model=...)`, `runtime run-batch`) run anywhere."""
    from planner.hardware.profile import load_profile
    from planner.hardware.this_machine import this_machine

    here = this_machine()
    base = load_profile("a5000-epyc7453")
    profile = replace(
        base,
        name=here.profile_name,
        links=None,
        machine=replace(
            base.machine,
            cpu=here.cpu,
            cores=here.cores,
            device=here.device,
            device_memory_gib=0,
            host_memory_gib=8,
            host_free_gib=8,
        ),
    )
    return profile.save(directory / f"{profile.name}.yaml")


@pytest.fixture(scope="session")
def machine_profiles_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("machine-profiles")
    relabelled_profile_for_this_machine(directory)
    return directory

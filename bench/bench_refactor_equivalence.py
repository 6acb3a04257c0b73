"""Did a refactoring commit change any prediction? `planner solve` at each commit and at its parent, diffed.

    python -m bench.bench_refactor_equivalence [--grep "issue 20"] [--commit C ...] [--out FILE.json]

Each commit (default: every commit on HEAD's history whose message mentions `--grep`) and its parent are
checked out into temporary worktrees (`git worktree add --detach`); in each, one process runs that
revision's own `planner solve` for the demo's workload (mixtral-mini, prompts of 80 tokens on average, 64
generated, 256 prompts, 2 GiB of KV) and every config of the accuracy matrix (`bench.bench_accuracy.CONFIGS`
and `LINK_CONFIGS`: truncated specs, exactly the KV budget of N sequences, link configs behind an emulated
link) on the shipped profile `PROFILE` as that revision has it. Every field of the two plans is compared
except identity (model, profile) and solver statistics. Torch-free and not a timing: run it with cpu-share.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bench.bench_accuracy import CONFIGS, LINK_CONFIGS
from bench.common import REPO
from planner.perf.memory import kv_budget_gib
from planner.plans.workload import Workload
from planner.specs.spec import load_spec

PROFILE = "cpu-amd-epyc-2c"
IGNORED = ("model.", "profile.", "solver.")  # identity (a spec fingerprint changed meaning) and solver stats
DEMO = {"name": "demo", "model": "mixtral-mini", "layers": None, "kv_gb": 2.0, "prompt_len": 80}
DEMO.update(gen_len=64, num_prompts=256, link_gbps=None, device_gb=None)

# Runs inside a revision's worktree: its own module layout (before and after planner/ sub-packages).
RUNNER = r"""
import contextlib, importlib, io, json, sys
from pathlib import Path

# the shared venv's editable install would resolve modules missing from this revision in another checkout
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()

def first(*names):
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            pass
    raise ImportError(names)

spec_mod = first("planner.specs.spec", "planner.spec")
link_mod = first("planner.hardware.emulated_link", "planner.emulated_link")
profile_mod = first("planner.hardware.profile", "planner.profile")
cli = importlib.import_module("planner.cli")
jobs, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
inputs = out / "inputs"
inputs.mkdir()
profile_path = "profiles/%s.yaml" % sys.argv[3]
for job in jobs:
    model, profile = job["model"], profile_path
    if job["layers"]:
        model = str(inputs / (job["name"] + "-spec.yaml"))
        spec_mod.load_spec(job["model"]).with_layers(job["layers"]).save_yaml(model)
    if job["link_gbps"]:
        emulated = link_mod.emulate_link(profile_mod.load_profile(profile), job["link_gbps"], job["device_gb"])
        profile = str(inputs / (job["name"] + "-profile.yaml"))
        emulated.save(profile)
    argv = ["solve", "--model", model, "--profile", profile, "--kv-gb", repr(job["kv_gb"]),
            "--prompt-len", str(job["prompt_len"]), "--gen-len", str(job["gen_len"]),
            "--num-prompts", str(job["num_prompts"]), "--out", str(out / (job["name"] + ".yaml"))]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code
    if code:
        print(job["name"], "failed:", err.getvalue()[-300:], file=sys.stderr)
"""


def jobs() -> list[dict]:
    """The demo's plan and the accuracy matrix's, with the KV budget fixed here so both revisions get it."""
    found = [DEMO]
    for config in (*CONFIGS, *LINK_CONFIGS):
        spec = load_spec(config.model)
        spec = spec.with_layers(config.layers) if config.layers else spec
        workload = Workload.fixed(config.prompt_len, config.gen_len, config.num_prompts)
        found.append(
            {
                "name": config.name,
                "model": config.model,
                "layers": config.layers,
                "kv_gb": kv_budget_gib(spec, workload, config.num_seqs),
                "prompt_len": config.prompt_len,
                "gen_len": config.gen_len,
                "num_prompts": config.num_prompts,
                "link_gbps": config.link_gbps,
                "device_gb": config.device_gb,
            }
        )
    return found


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


def solve_at(revision: str, job_file: Path, scratch: Path) -> dict[str, dict]:
    """Every job's plan (as YAML data) solved by `revision`'s planner; a failed solve is missing."""
    tree, out = scratch / f"tree-{revision}", scratch / f"plans-{revision}"
    out.mkdir()
    git("worktree", "add", "--detach", str(tree), revision)
    try:
        subprocess.run(
            [sys.executable, "-c", RUNNER, str(job_file), str(out), PROFILE],
            cwd=tree,
            env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "MOELENS_HOME": str(scratch / "home")},
            check=True,
        )
    finally:
        git("worktree", "remove", "--force", str(tree))
    return {path.stem: yaml.safe_load(path.read_text()) for path in out.glob("*.yaml")}


def leaves(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in leaves(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in leaves(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def differences(old: dict, new: dict) -> dict[str, tuple]:
    """Fields that differ (identity and solver statistics aside): name -> (old, new, relative change)."""
    a, b = leaves(old), leaves(new)
    found = {}
    for name in sorted(set(a) | set(b)):
        if name.startswith(IGNORED):
            continue
        x, y = a.get(name, "<absent>"), b.get(name, "<absent>")
        if x == y:
            continue
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        found[name] = (x, y, (y - x) / abs(x) if numbers and x else None)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grep", default="issue 20")
    parser.add_argument("--commit", action="append", help="a commit to check (repeatable; default: --grep)")
    parser.add_argument("--out", type=Path, help="write every commit's differences as JSON")
    args = parser.parse_args(argv)
    commits = args.commit or git("log", "--reverse", "--format=%h", f"--grep={args.grep}").split()
    results = {}
    with tempfile.TemporaryDirectory(prefix="equivalence-") as scratch_name:
        scratch = Path(scratch_name)
        job_file = scratch / "jobs.json"
        job_file.write_text(json.dumps(jobs()))
        solved: dict[str, dict] = {}
        for commit in commits:
            parent = git("rev-parse", "--short", f"{commit}^").strip()
            for revision in (parent, commit):
                if revision not in solved:
                    solved[revision] = solve_at(revision, job_file, scratch)
            old, new = solved[parent], solved[commit]
            names, one_side = sorted(set(old) & set(new)), sorted(set(old) ^ set(new))
            changed = {name: differences(old[name], new[name]) for name in names}
            changed = {name: diff for name, diff in changed.items() if diff}
            worst = max(
                (abs(r) for diff in changed.values() for _, _, r in diff.values() if r is not None),
                default=0.0,
            )
            subject = git("log", "-1", "--format=%s", commit).strip()[:70]
            print(
                f"{commit} ({len(names)} plans solved at both, {len(one_side)} at one only {one_side}): "
                f"{len(changed)} plans differ, "
                f"largest relative change {worst:.2e}  {subject}"
            )
            for name, diff in changed.items():
                for field, (x, y, r) in list(diff.items())[:6]:
                    print(f"    {name}: {field}: {x!r} -> {y!r}" + (f" ({r:+.2e})" if r is not None else ""))
            results[commit] = {"parent": parent, "compared": names, "one_side": one_side, "changed": changed}
            results[commit]["largest"] = worst
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

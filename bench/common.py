"""Shared pieces of the benchmark scripts: checkpoints, prompts, one engine run with its report, BENCHMARKS.md.

- `ensure_checkpoint(model, layers=None)`: a random-weight bf16 checkpoint of a spec from `models/` (truncated
  to `layers` when given) under `bench/.checkpoints/` (`MOELENS_BENCH_DIR` moves it), written once, reused.
- `fixed_prompts(tokenizer, count, length, seed)`: `count` distinct prompts of exactly `length` tokens.
- `run_engine(checkpoint, plan, profile, prompts, gen_len, **engine_overrides) -> report`: the engine as `runtime
  execute` runs it (EngineConfig from the plan, then the overrides: `module_batching`, `force_streaming`,
  `num_seqs`, ...), every request `ignore_eos` with `max_tokens = gen_len`, and the report `runtime.report`
  builds (plan and spec embedded: what `planner calibrate` reads), with the overrides recorded.
- `update_section(name, body)`: replace this script's section of BENCHMARKS.md between
  `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers, or append it; reruns are idempotent.
- `machine_line()`: cores, 1-minute load average, and the note that the machine was shared when it was.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from planner import settings

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
BUSY_LOAD_PER_CORE = 1.5


def bench_dir() -> Path:
    return Path(settings.setting(settings.BENCH_DIR) or REPO / "bench" / ".checkpoints")


def ensure_checkpoint(model: str, layers: int | None = None, seed: int = 0) -> Path:
    from planner.plans.build import spec_hash
    from planner.specs.spec import load_spec
    from runtime.checkpoint import open_checkpoint
    from runtime.checkpoint.writer import write_random_checkpoint

    spec = load_spec(model)
    if layers is not None and layers < spec.num_layers:
        spec = spec.with_layers(layers)
    directory = bench_dir() / spec.name
    stamp = directory / "moelens-spec-hash"  # the spec it was written from: rewritten when models/ changes
    if (directory / "config.json").is_file():
        try:
            open_checkpoint(directory)
            if stamp.is_file() and stamp.read_text().strip() == spec_hash(spec):
                return directory
            print(
                f"rewriting {directory}: written from another version of models/{model}.yaml", file=sys.stderr
            )
        except Exception as err:  # a half-written checkpoint: write it again
            print(f"rewriting {directory}: {err}", file=sys.stderr)
    print(
        f"writing a random-weight {spec.name} checkpoint (bf16) to {directory}", file=sys.stderr, flush=True
    )
    write_random_checkpoint(spec, directory, dtype="bf16", seed=seed)
    stamp.write_text(spec_hash(spec) + "\n")
    return directory


def fixed_prompts(tokenizer: Any, count: int, length: int, seed: int = 0) -> list[list[int]]:
    from runtime.commands.demo import make_prompts

    return make_prompts(tokenizer, count, length, length, seed)


def run_engine(
    checkpoint: Any,
    plan: Any,
    profile: Any,
    prompts: list[list[int]],
    gen_len: int,
    warm_up_prompts: list[list[int]] | None = None,
    **engine_overrides: Any,
) -> dict[str, Any]:
    """Run the plan's engine over `prompts` and build the report. With `warm_up_prompts`, the same engine
    first runs those (unmeasured but for `report["cold"]`): what a long job has paid after its first seconds
    (oneDNN builds a kernel for each new GEMM shape, ~0.7 ms each here; first touches of the weights)."""
    from runtime.engine import Engine, EngineConfig
    from runtime.report import build_report
    from runtime.report.job_run import fixed_length_requests, run_tallied

    config = EngineConfig.from_plan(plan).with_(**engine_overrides)
    engine = Engine(checkpoint, config)
    try:
        cold = engine.run(fixed_length_requests(warm_up_prompts, gen_len)) if warm_up_prompts else None
        stats, tally = run_tallied(engine, fixed_length_requests(prompts, gen_len))
    finally:
        engine.close()
    report = build_report(stats, plan, profile, checkpoint.spec, tally)
    if cold is not None:
        report["cold"] = {
            "wall_s": cold.wall_seconds,
            "generated_tok_s": cold.generated_tokens / cold.wall_seconds,
        }
    report["engine_overrides"] = {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in engine_overrides.items()
    }
    return report


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def update_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Put `body` between this section's markers in BENCHMARKS.md (appended at the end the first time)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def cpu_times() -> tuple[int, int]:
    """(steal, total) clock ticks of all CPUs so far (/proc/stat; (0, 0) where there is none)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of CPU time the hypervisor gave other guests between two `cpu_times()` (a VM's noise)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def machine_line() -> str:
    from planner.hardware.this_machine import this_machine

    here = this_machine()
    cpu, cores, device = here.cpu, here.cores, here.device
    load = os.getloadavg()[0]
    shared = (
        f" **The machine was shared** (1-minute load average {load:.1f} on {cores} cores at the start): "
        "these numbers are noisy and low; rerun on a quiet machine."
        if load > BUSY_LOAD_PER_CORE * cores
        else f" 1-minute load average {load:.1f} at the start."
    )
    return f"Machine: {cpu}, {cores} cores, {device or 'no GPU'}.{shared}"


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out


def run_worker(module: str, job: dict, timeout_s: float) -> dict | None:
    """`python -m MODULE --worker JOB --worker-out PATH` in a fresh process (a clean peak-memory reading);
    its JSON result, or None (with a line saying so) when it failed."""
    out = RESULTS_DIR / f"{module.rsplit('.', 1)[-1]}-job.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", module, "--worker", json.dumps(job), "--worker-out", str(out)]
    done = subprocess.run(command, cwd=REPO, timeout=timeout_s, check=False)
    if done.returncode != 0:
        print(f"    {job['system']} B={job.get('batch', '-')} failed (exit {done.returncode})", flush=True)
        return None
    result = json.loads(out.read_text())
    out.unlink()
    return result

"""What one job is asked to do (`runtime execute`'s flags), read by the job's opening, engine run and Ray driver."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExecuteOptions:
    plan: Path
    input: Path
    output: Path
    checkpoint: Path | None = None
    report: Path | None = None
    on_error: str = "fail"
    max_tokens: int | None = None
    force: bool = False
    overwrite: bool = False
    quiet: bool = False
    generation_config: str = "auto"  # sampling defaults: runtime.checkpoint.generation.read_generation_config
    workers: int | None = None  # set: run on a Ray cluster (`runtime.cluster.job`)
    ray_address: str = "local"

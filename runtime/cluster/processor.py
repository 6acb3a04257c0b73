"""A Ray Data processor: a dataset of requests in, a dataset of completions out (for existing pipelines).

How it works: docs/design.md, `runtime/cluster/processor.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import UserError
from planner.prompts_file import BATCH_FIELDS, NATIVE_SAMPLING_FIELDS, PROMPT_FIELDS

REQUEST_FIELDS = ("id",) + PROMPT_FIELDS + NATIVE_SAMPLING_FIELDS + BATCH_FIELDS


@dataclass(frozen=True)
class ProcessorConfig:
    plan: str | Path  # plan YAML (`planner solve --out`)
    checkpoint: str | Path | None = None  # default: the plan's model, when it is a checkpoint directory
    concurrency: int = 1  # engine actors
    num_cpus: float = 1  # CPUs per actor (the actor plans its threads for these)
    batch_size: int | None = None  # requests per engine call (default: 4 x the plan's num_seqs)
    max_tokens: int | None = None  # for rows without max_tokens (default: the plan's longest)
    force: bool = False  # run the given plan on workers whose machine has no profile


def _plain(value: Any) -> Any:
    """Ray Data hands numpy scalars and arrays to row functions; JSON wants Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def request_row(row: dict[str, Any]) -> dict[str, str]:
    fields = {k: _plain(row[k]) for k in REQUEST_FIELDS if k in row and row[k] is not None}
    if "id" not in fields and "custom_id" not in fields:
        raise UserError(
            f"a request row has no id (columns: {', '.join(row)})",
            "give each row an id (or a Batch API custom_id), e.g. with preprocess",
        )
    return {"request": json.dumps(fields)}


class ProcessorWorker:
    """The engine stage's actor: preprocess, `EngineWorker`, postprocess, row by row inside the actor (extra
    Ray Data stages would each want CPUs the engine actors already hold: a small cluster would deadlock)."""

    def __init__(self, options: Any, preprocess: Callable | None, postprocess: Callable | None):
        from runtime.cluster.worker import EngineWorker

        self.engine = EngineWorker(options)
        self.preprocess, self.postprocess = preprocess, postprocess

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import pandas as pd

        rows = batch.to_dict("records")
        if self.preprocess is not None:
            rows = [self.preprocess(row) for row in rows]
        answered = self.engine({"request": np.array([request_row(row)["request"] for row in rows])})
        results = [json.loads(record) for record in answered["record"]]
        if self.postprocess is not None:
            results = [self.postprocess(row) for row in results]
        return pd.DataFrame(results)


class Processor:
    """`processor(dataset) -> dataset`: one lazy Ray Data stage of `concurrency` engine actors."""

    def __init__(
        self, config: ProcessorConfig, preprocess: Callable | None = None, postprocess: Callable | None = None
    ):
        from planner.plans.plan import Plan
        from runtime.checkpoint import open_checkpoint
        from runtime.cluster.worker import WorkerOptions
        from runtime.commands.execute_checks import check_plan_model, checkpoint_dir_of

        if config.concurrency < 1:
            raise UserError(f"concurrency={config.concurrency} must be positive", "pass concurrency >= 1")
        plan_path = Path(config.plan)
        self.plan = Plan.load(plan_path)
        checkpoint_dir = checkpoint_dir_of(self.plan, Path(config.checkpoint) if config.checkpoint else None)
        check_plan_model(self.plan, open_checkpoint(checkpoint_dir).spec, config.force)
        default_max_tokens = config.max_tokens or max(1, round(self.plan.workload.gen_len_max))
        self.worker = WorkerOptions(
            str(checkpoint_dir.resolve()), plan_path.read_text(), default_max_tokens, config.force
        )
        self.config, self.preprocess, self.postprocess = config, preprocess, postprocess

    def __call__(self, dataset: Any) -> Any:
        from ray.data import ActorPoolStrategy

        return dataset.map_batches(
            ProcessorWorker,
            fn_constructor_kwargs={
                "options": self.worker,
                "preprocess": self.preprocess,
                "postprocess": self.postprocess,
            },
            batch_size=self.config.batch_size or 4 * self.plan.decisions.num_seqs,
            batch_format="pandas",
            compute=ActorPoolStrategy(size=self.config.concurrency),
            num_cpus=self.config.num_cpus,
        )


def build_processor(
    config: ProcessorConfig, preprocess: Callable | None = None, postprocess: Callable | None = None
) -> Processor:
    return Processor(config, preprocess, postprocess)

"""`EngineWorker`: the Ray Data actor class that answers requests with the moelens engine.

How it works: docs/design.md, `runtime/cluster/worker.py`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import UserError


@dataclass(frozen=True)
class WorkerOptions:
    checkpoint: str
    plan: str  # plan YAML text (workers need not share the driver's files)
    default_max_tokens: int
    force: bool = False
    generation_config: str | None = (
        "auto"  # sampling defaults (`runtime.checkpoint.generation.read_generation_config`)
    )


@dataclass(frozen=True)
class BatchStats:
    worker: str  # Ray actor id (kept across restarts)
    pid: int
    restarted: bool  # this actor process is a restart (Ray reconstructed it)
    machine: str
    profile: str
    plan_source: str  # given | re-solved
    plan_reason: str
    num_seqs: int
    threads: int
    predicted_tok_s: float
    requests: int
    prompt_tokens: int
    generated_tokens: int
    wall_s: float


def _assigned_cpus() -> int:
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def _was_restarted() -> bool:
    import warnings

    import ray

    with warnings.catch_warnings():  # Ray 2.60's property trips its own deprecation warning (actor_id)
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def _actor_id() -> str:
    import ray

    return ray.get_runtime_context().get_actor_id() or f"pid{os.getpid()}"


class EngineWorker:
    def __init__(self, options: WorkerOptions):
        import yaml

        from planner.plans.plan import Plan
        from runtime.checkpoint import open_checkpoint
        from runtime.checkpoint.generation import read_generation_config
        from runtime.cluster.worker_plan import plan_for_worker
        from runtime.engine import Engine, EngineConfig
        from runtime.jobio import ParseContext

        checkpoint = open_checkpoint(Path(options.checkpoint))
        given = Plan.from_dict(yaml.safe_load(options.plan))
        self.chosen = plan_for_worker(given, checkpoint.spec, _assigned_cpus(), options.force)
        plan = self.chosen.plan
        print(
            f"moelens worker {_actor_id()} on {self.chosen.machine}: {self.chosen.source} plan for "
            f"{plan.profile.name} ({plan.decisions.num_seqs} in flight, {plan.decisions.compute_threads} threads, predicted "
            f"{plan.predicted.generated_tok_s:,.1f} tok/s)"
            + (f"; re-solved because {self.chosen.reason}" if self.chosen.reason else ""),
            file=sys.stderr,
        )
        spec = checkpoint.spec
        self.context = ParseContext(
            checkpoint.tokenizer,
            spec.max_position_embeddings,
            spec.vocab_size,
            options.default_max_tokens,
            read_generation_config(options.generation_config, Path(options.checkpoint)),
        )
        self.engine = Engine(checkpoint, EngineConfig.from_plan(plan))
        self.model_name = spec.name

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from runtime.jobio import LineError, parse_line
        from runtime.jobio.records import answer_record

        line_numbers = batch.get("line_number", range(1, len(batch["request"]) + 1))
        requests = []
        for line, line_number in zip(batch["request"], line_numbers):
            try:
                requests.append(parse_line(json.loads(line), int(line_number), self.context))
            except LineError as err:
                raise UserError(f"request {line[:80]}: {err.cause}", err.fix) from None
        if len({r.key for r in requests}) < len(requests):
            raise UserError("a batch holds two requests with the same id", "give every request its own id")
        states = {r.key: self._states(r) for r in requests}
        began = time.perf_counter()
        run = self.engine.run(self._engine_requests(requests, states))
        wall_s = time.perf_counter() - began
        plan = self.chosen.plan
        stats = BatchStats(
            worker=_actor_id(),
            pid=os.getpid(),
            restarted=_was_restarted(),
            machine=self.chosen.machine,
            profile=plan.profile.name,
            plan_source=self.chosen.source,
            plan_reason=self.chosen.reason,
            num_seqs=plan.decisions.num_seqs,
            threads=plan.decisions.compute_threads,
            predicted_tok_s=plan.predicted.generated_tok_s,
            requests=len(requests),
            prompt_tokens=run.prompt_tokens,
            generated_tokens=run.generated_tokens,
            wall_s=wall_s,
        )
        records = [
            json.dumps(answer_record(r, states[r.key], self.model_name), ensure_ascii=False) for r in requests
        ]
        return {
            "key": np.array([r.key for r in requests]),
            "id": np.array([json.dumps(r.id) for r in requests]),
            "record": np.array(records),
            "stats": np.array([json.dumps(asdict(stats))] + [""] * (len(requests) - 1)),
        }

    def _states(self, request: Any) -> list:
        """The request's n generation states, seeded as `runtime execute` seeds them."""
        return [
            self.engine.generation.state(
                request.prompt_token_ids, request.sampling, seed=request.sampling.seed + i
            )
            for i in range(request.sampling.n)
        ]

    @staticmethod
    def _engine_requests(requests: list, states: dict):
        from runtime.engine import Request as EngineRequest

        for request in requests:
            for i, state in enumerate(states[request.key]):  # n completions: n sequences, one answer
                yield EngineRequest(
                    id=(request.key, i),
                    prompt_token_ids=request.prompt_token_ids,
                    params=request.sampling,
                    state=state,
                )

"""`EngineWorker`: the Ray Data actor class that answers requests with the moelens engine.

One instance lives in each actor of a `map_batches(EngineWorker, compute=ActorPoolStrategy(size=N))` stage:
it opens the checkpoint, picks its plan (`worker_plan.plan_for_worker`, for the CPUs Ray gave it) and builds
the engine once; each call then runs the engine over one batch of requests (all of them in flight together,
refilling as they finish) and returns one row per request.
Batch columns in: `request`, one request line as JSON (the prompts-file forms, `runtime.jobio.parse_line`).
Columns out: `id` (the request's id or custom_id as given), `completion` (JSON {token_ids, text,
finish_reason, prompt_tokens}) and `stats` (JSON `BatchStats` on the batch's first row, "" on the others).
A worker that dies loses only its current batch: Ray restarts the actor and runs the batch again; the driver
keeps the first answer per id.
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
    plan: str                           # plan YAML text (workers need not share the driver's files)
    default_max_tokens: int
    force: bool = False
    generation_config: str | None = "auto"  # sampling defaults (`runtime.llm.read_generation_config`)


@dataclass(frozen=True)
class BatchStats:
    worker: str                         # Ray actor id (kept across restarts)
    pid: int
    restarted: bool                     # this actor process is a restart (Ray reconstructed it)
    machine: str
    profile: str
    plan_source: str                    # given | re-solved
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

    with warnings.catch_warnings():     # Ray 2.60's property trips its own deprecation warning (actor_id)
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def _actor_id() -> str:
    import ray

    return ray.get_runtime_context().get_actor_id() or f"pid{os.getpid()}"


class EngineWorker:
    def __init__(self, options: WorkerOptions):
        import yaml

        from planner.plan import Plan
        from runtime.checkpoint import open_checkpoint
        from runtime.cluster.worker_plan import plan_for_worker
        from runtime.engine import Engine, EngineConfig
        from runtime.jobio import ParseContext
        from runtime.llm import read_generation_config

        checkpoint = open_checkpoint(Path(options.checkpoint))
        given = Plan.from_dict(yaml.safe_load(options.plan))
        self.chosen = plan_for_worker(given, checkpoint.spec, _assigned_cpus(), options.force)
        plan = self.chosen.plan
        print(f"moelens worker {_actor_id()} on {self.chosen.machine}: {self.chosen.source} plan for "
              f"{plan.profile.name} ({plan.num_seqs} in flight, {plan.compute_threads} threads, predicted "
              f"{plan.predicted.generated_tok_s:,.1f} tok/s)"
              + (f"; re-solved because {self.chosen.reason}" if self.chosen.reason else ""), file=sys.stderr)
        spec = checkpoint.spec
        self.context = ParseContext(checkpoint.tokenizer, spec.max_position_embeddings, spec.vocab_size,
                                    options.default_max_tokens,
                                    read_generation_config(options.generation_config, Path(options.checkpoint)))
        self.engine = Engine(checkpoint, EngineConfig.from_plan(plan))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from runtime.engine import Request as EngineRequest
        from runtime.jobio import LineError, parse_line

        requests = []
        for index, line in enumerate(batch["request"]):
            try:
                requests.append(parse_line(json.loads(line), index + 1, self.context))
            except LineError as err:
                raise UserError(f"request {line[:80]}: {err.cause}", err.fix) from None
        answers: dict[str, Any] = {}
        began = time.perf_counter()
        run = self.engine.run((EngineRequest(id=r.key, prompt_token_ids=r.prompt_token_ids, params=r.sampling)
                               for r in requests), lambda c: answers.__setitem__(c.id, c))
        wall_s = time.perf_counter() - began
        plan = self.chosen.plan
        stats = BatchStats(worker=_actor_id(), pid=os.getpid(), restarted=_was_restarted(), machine=self.chosen.machine,
                           profile=plan.profile.name, plan_source=self.chosen.source, plan_reason=self.chosen.reason,
                           num_seqs=plan.num_seqs, threads=plan.compute_threads,
                           predicted_tok_s=plan.predicted.generated_tok_s, requests=len(requests),
                           prompt_tokens=run.prompt_tokens, generated_tokens=run.generated_tokens, wall_s=wall_s)
        completions = [json.dumps({"token_ids": list(answers[r.key].token_ids), "text": answers[r.key].text,
                                   "finish_reason": answers[r.key].finish_reason,
                                   "prompt_tokens": len(r.prompt_token_ids)}) for r in requests]
        return {"id": np.array([json.dumps(r.id) for r in requests]),
                "completion": np.array(completions),
                "stats": np.array([json.dumps(asdict(stats))] + [""] * (len(requests) - 1))}

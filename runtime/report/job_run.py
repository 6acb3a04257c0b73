"""One job runner: requests through an engine, each finished completion tallied for the report.

`run_tallied(engine, requests, on_finish=None) -> (RunStats, ContextTally)` is how `runtime execute`, the
benchmarks and the profiler's probe jobs run an engine; `fixed_length_requests(prompts, gen_len)` are the
greedy, ignore_eos requests that benchmarks and probes time (every sequence does the planned work).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from runtime.report.metrics import ContextTally
from runtime.sampling import SamplingParams

if TYPE_CHECKING:
    from runtime.engine import Engine, Request
    from runtime.engine.stats import Completion, RunStats


def fixed_length_requests(prompts: Sequence[Sequence[int]], gen_len: int) -> list[Request]:
    from runtime.engine import Request

    params = SamplingParams(temperature=0.0, max_tokens=gen_len, ignore_eos=True)
    return [Request(id=i, prompt_token_ids=list(p), params=params) for i, p in enumerate(prompts)]


def run_tallied(
    engine: Engine, requests: Iterable[Request], on_finish: Callable[[Completion], None] | None = None
) -> tuple[RunStats, ContextTally]:
    tally = ContextTally(window=engine.spec.sliding_window)

    def finished(completion: Completion) -> None:
        tally.add(len(completion.prompt_token_ids), len(completion.token_ids), completion.finish_reason)
        if on_finish is not None:
            on_finish(completion)

    return engine.run(requests, finished), tally

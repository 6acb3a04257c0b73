"""The progress bar of `runtime execute`: sequences done, generated tokens/s achieved beside the plan's, ETA.

`JobProgress(total, predicted_tokens_per_s, already_done)` wraps tqdm (on stderr; off when stderr is not a
terminal unless `enabled=True`). `sequence_finished(completion_tokens)` advances it by one sequence;
`tokens_generated(n)` counts tokens of sequences still running when the engine reports them per step.
The rate shown is generated tokens since the bar opened over wall time since then; tqdm's ETA comes from
the sequence rate.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class JobProgress:
    def __init__(self, total: int, predicted_tokens_per_s: float | None = None, already_done: int = 0,
                 enabled: bool | None = None):
        self.predicted_tokens_per_s = predicted_tokens_per_s
        self.generated_tokens = 0
        self.started = time.perf_counter()
        self._last_postfix = 0.0
        disable = not sys.stderr.isatty() if enabled is None else not enabled
        self.bar = tqdm(total=total, initial=already_done, unit="seq", desc="execute", dynamic_ncols=True,
                        disable=disable, file=sys.stderr)

    @property
    def tokens_per_s(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.generated_tokens / elapsed if elapsed > 0 else 0.0

    def postfix(self) -> str:
        text = f"gen {self.tokens_per_s:.1f} tok/s"
        if self.predicted_tokens_per_s:
            text += f" (plan {self.predicted_tokens_per_s:.1f})"
        return text

    def tokens_generated(self, count: int) -> None:
        self.generated_tokens += count
        self._refresh_postfix()

    def sequence_finished(self, completion_tokens: int | None = None) -> None:
        if completion_tokens is not None:
            self.generated_tokens += completion_tokens
        self.bar.update(1)
        self._refresh_postfix()

    def _refresh_postfix(self) -> None:
        now = time.perf_counter()
        if now - self._last_postfix >= 0.5:
            self._last_postfix = now
            self.bar.set_postfix_str(self.postfix(), refresh=False)

    def close(self) -> None:
        self.bar.set_postfix_str(self.postfix(), refresh=False)
        self.bar.close()

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

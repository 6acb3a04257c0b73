"""The progress bar of `runtime execute`: sequences done, generated tokens/s achieved beside the plan's, ETA.

How it works: docs/design.md, `runtime/progress.py`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from tqdm import tqdm

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class JobProgress:
    def __init__(
        self,
        total: int,
        predicted_tokens_per_s: float | None = None,
        already_done: int = 0,
        token_budget: int | None = None,
        in_flight_tokens: Callable[[], int] | None = None,
        enabled: bool | None = None,
        refresh_s: float = 0.5,
        desc: str = "execute",
    ):
        self.predicted_tokens_per_s = predicted_tokens_per_s
        self.token_budget = token_budget
        self.in_flight_tokens = in_flight_tokens or (lambda: 0)
        self.finished_tokens = 0
        self.started = time.perf_counter()
        disable = not sys.stderr.isatty() if enabled is None else not enabled
        self.bar = tqdm(
            total=total,
            initial=already_done,
            unit="answer",
            desc=desc,
            dynamic_ncols=True,
            disable=disable,
            file=sys.stderr,
            bar_format=BAR_FORMAT,
        )
        self._stop = threading.Event()
        self._ticker = None
        if not disable:
            self._ticker = threading.Thread(target=self._tick, args=(refresh_s,), daemon=True)
            self._ticker.start()

    @property
    def generated_tokens(self) -> int:
        return self.finished_tokens + self.in_flight_tokens()

    @property
    def tokens_per_s(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.generated_tokens / elapsed if elapsed > 0 else 0.0

    def postfix(self) -> str:
        rate = self.tokens_per_s
        text = f"gen {rate:.1f} tok/s"
        if self.predicted_tokens_per_s:
            text += f" (plan {self.predicted_tokens_per_s:.1f})"
        if self.token_budget and rate > 0:
            text += f", ETA <= {_clock(max(self.token_budget - self.generated_tokens, 0) / rate)}"
        return text

    def tokens_done(self, completion_tokens: int) -> None:
        self.finished_tokens += completion_tokens

    def answer_written(self) -> None:
        self.bar.update(1)

    def sequence_finished(self, completion_tokens: int = 0) -> None:
        self.tokens_done(completion_tokens)
        self.answer_written()

    def _tick(self, refresh_s: float) -> None:
        while not self._stop.wait(refresh_s):
            self.bar.set_postfix_str(self.postfix())

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self.bar.set_postfix_str(self.postfix(), refresh=False)
        self.bar.close()

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

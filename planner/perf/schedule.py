"""The job's schedule of steps under the engine's refill scheduling (torch-free): how many steps decode, at which
batch sizes, and how many prefill forwards have no decode batch to ride in.

How it works: docs/design.md, `planner/perf/schedule.py`.

Invariants: the batches of `mix` span `decode_steps` steps, each within [1, N], and hold every decoded token (sum
of batch x steps = prompts x (generated - 1), but for ramp batches raised to one sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.plans.workload import Workload

# two-point Gauss-Legendre nodes on [0, 1]: the mean of a step time over a linear ramp of batch sizes
RAMP_NODES = (0.5 - 0.5 / 3**0.5, 0.5 + 0.5 / 3**0.5)


@dataclass(frozen=True)
class Schedule:
    decode_steps: np.ndarray  # steps that decode at least one sequence
    forwards: np.ndarray  # prefill forwards over the job
    standalone: np.ndarray  # forwards with no decode batch to ride in (priced as prefill steps alone)
    mix: tuple[tuple[np.ndarray, np.ndarray], ...]  # (decode batch, steps at it), the most tokens first

    @property
    def riding_share(self) -> np.ndarray:
        """Share of the prefill forwards that ride in a decode step (the merged pass)."""
        return np.clip(1.0 - self.standalone / np.maximum(self.forwards, 1.0), 0.0, 1.0)

    @property
    def mean_batch(self) -> np.ndarray:
        return sum(b * s for b, s in self.mix) / np.maximum(self.decode_steps, 1e-9)


def job_schedule(w: Workload, num_seqs: np.ndarray, tokens: np.ndarray) -> Schedule:
    """The schedule of `w` with N = `num_seqs` slots and at most `tokens` prompt tokens per forward."""
    p, d = float(w.num_prompts), w.decoded_tokens / max(w.num_prompts, 1)
    n = np.maximum(num_seqs, 1.0)
    forwards = np.maximum(w.prompt_tokens / np.maximum(tokens, 1.0), 1.0)
    if d == 0:
        nothing = np.zeros_like(n)
        return Schedule(nothing + 1e-9, forwards, forwards, ((nothing + 1.0, nothing + 1e-9),))
    if not w.finishes_in_waves:
        return _staggered(n, forwards, p, d)
    return _waves(w, n, tokens, forwards, p, d)


def _staggered(n, forwards, p: float, d: float) -> Schedule:
    """Generation lengths differ: refills trickle in as sequences finish, one prefill forward per decode step at
    most; the job ends on a drain of about half a generation at a falling batch."""
    steps = p * d / n + (d / 2) * (1.0 - n / p)
    standalone = np.maximum(forwards - steps, 1.0)
    return Schedule(steps, forwards, standalone, ((np.clip(p * d / steps, 1.0, n), steps),))


def _waves(w: Workload, n, tokens, forwards, p: float, d: float) -> Schedule:
    """Equal lengths. A slot holds a sequence for its prefill and d decode steps (a cycle), then is refilled the
    next step. Either the slots bind (the prompts of a wave are admitted `a` a forward, and the groups so
    admitted keep their offsets from wave to wave: the job is its full waves' cycles plus the last, partial,
    wave) or admission does (`a` prompts a forward fill slots faster than they free: the batch ramps up for d
    steps, holds, and drains for d). Checked against a replay of the engine's scheduler (tests)."""
    length = max(w.prompt_len_mean, 1.0)
    a = np.maximum(tokens, 1.0) / length  # prompts admitted per forward
    prefill_steps = np.maximum(length / np.maximum(tokens, 1.0), 1.0)
    cycle = prefill_steps + d
    full = np.floor((p - 1.0) / n)  # waves of N before the last
    rem = p - full * n  # the last wave's prompts, 1..N
    by_slots = full * cycle + np.floor((rem - 1.0) / a) + cycle
    by_admission = np.ceil(p * length / np.maximum(tokens, 1.0) - 1e-9) + d
    slots_bind = n < a * cycle  # a cycle's admissions would overfill the slots
    total = np.maximum(by_slots, by_admission)
    standalone = np.where(n <= a, full + 1.0, prefill_steps)  # a wave prefilled in one forward rides nothing
    steps = np.maximum(total - standalone, 1.0)
    # slots bind: every full wave at about N, the last wave's `rem` for its d steps
    last = np.minimum(d, steps)
    rest = steps - last
    at_rest = np.where(rest > 0, (p * d - rem * last) / np.maximum(rest, 1e-9), n)
    # admission binds: ramps up and down of min(P / a, d) steps each at a linear batch, a plateau of h between
    ramp = np.minimum(2.0 * np.minimum(p / a, d), steps)
    plateau = steps - ramp
    h = p * d / np.maximum(plateau + ramp / 2.0, 1e-9)
    lo, hi = RAMP_NODES
    mix = (
        (np.where(slots_bind, at_rest, h), np.where(slots_bind, rest, plateau)),
        (np.where(slots_bind, rem, lo * h), np.where(slots_bind, last, ramp / 2.0)),
        (np.where(slots_bind, 1.0, hi * h), np.where(slots_bind, 0.0, ramp / 2.0)),
    )
    return Schedule(steps, forwards, standalone, _most_tokens_first(mix, n))


def _most_tokens_first(mix, n) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The entries clipped to [1, N] and ordered, candidate by candidate, by the tokens they decode."""
    batches = np.stack(np.broadcast_arrays(*(np.clip(b, 1.0, n) for b, _ in mix)))
    counts = np.stack(np.broadcast_arrays(*(s for _, s in mix)))
    order = np.argsort(-batches * counts, axis=0, kind="stable")
    batches, counts = np.take_along_axis(batches, order, 0), np.take_along_axis(counts, order, 0)
    return tuple(zip(batches, counts))

"""The planner's job schedule (`planner.perf.schedule`) against the engine's own scheduler, replayed step by step."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from planner.perf.schedule import job_schedule
from planner.plans.workload import Workload
from tests.test_engine_parts import drive, make_scheduler


def replay(prompts: int, slots: int, prompt_len: int, gen_len: int, chunk: int) -> dict:
    """Steps, decode steps, forwards and the decode batch of each step as the engine schedules the job."""
    scheduler, _ = make_scheduler(
        [prompt_len] * prompts, [gen_len] * prompts, slots, num_blocks=10**6, prefill_chunk=chunk
    )
    seen = {"steps": 0, "forwards": 0, "batches": []}

    def check(_, plan):
        seen["steps"] += 1
        seen["forwards"] += bool(plan.prefill)
        if plan.decode:
            seen["batches"].append(len(plan.decode))

    drive(scheduler, check)
    return seen


def step_time(batch):
    """A step time with a floor (a link-bound step) and a slope: pricing a mean batch alone misses its kink."""
    return np.maximum(0.2, 0.07 + 0.00086 * np.asarray(batch, dtype=np.float64))


CASES = list(itertools.product([64, 300], [8, 55, 200], [16, 64], [2, 8, 32], [64, 2048])) + [
    (1024, 551, 16, 32, 256),
    (1024, 55, 16, 32, 512),
    (1024, 25, 16, 32, 512),
]


@pytest.mark.parametrize("prompts,slots,prompt_len,gen_len,chunk", [c for c in CASES if c[1] <= c[0]])
def test_schedule_matches_the_engine_scheduler(prompts, slots, prompt_len, gen_len, chunk):
    seen = replay(prompts, slots, prompt_len, gen_len, chunk)
    w = Workload.fixed(prompt_len, gen_len, prompts)
    tokens = np.minimum(chunk, slots * prompt_len)  # PerfModel.prefill_tokens for equal lengths
    s = job_schedule(w, np.array([float(slots)]), np.array([float(tokens)]))
    decode_steps = len(seen["batches"])
    assert s.decode_steps[0] == pytest.approx(decode_steps, rel=0.03, abs=1)
    tokens_in_mix = sum(b[0] * n[0] for b, n in s.mix)
    assert tokens_in_mix == pytest.approx(prompts * (gen_len - 1), rel=0.05)  # ramps' batches >= 1
    assert all(1.0 <= b[0] <= slots for b, n in s.mix if n[0] > 0)
    priced = sum(n[0] * step_time(b[0]) for b, n in s.mix)
    assert priced == pytest.approx(float(step_time(seen["batches"]).sum()), rel=0.07)
    standalone = seen["steps"] - decode_steps  # forwards with nothing to decode beside them
    assert s.standalone[0] == pytest.approx(standalone, abs=max(1.0, 0.03 * standalone))


def test_the_link_batching_job_admission_binds_and_ramps():
    """1024 prompts of 16 + 32 with N = 551 and 256-token forwards: 16 prompts a forward fill slots faster than
    they free, so the batch ramps up for 31 steps, holds near 16 x 31 = 496 (not N) and drains: 94 decode steps
    (a wave count of 1024 / 551 would say 120 with a prefill ramp per wave)."""
    s = job_schedule(Workload.fixed(16, 32, 1024), np.array([551.0]), np.array([256.0]))
    assert s.decode_steps[0] == 94 and s.standalone[0] == 1
    assert 480 <= s.mix[0][0][0] <= 510 and s.mean_batch[0] == pytest.approx(1024 * 31 / 94)


def test_one_forward_waves_ride_nothing_and_staggered_forwards_ride_one_a_decode_step():
    fixed = job_schedule(Workload.fixed(16, 32, 1000), np.array([25.0]), np.array([512.0]))
    assert fixed.standalone[0] == 40 and fixed.riding_share[0] == 0.0  # each wave's one forward runs alone
    staggered = Workload.from_lengths([300] * 4, [8, 30, 50, 64], num_prompts=1000)
    s = job_schedule(staggered, np.array([100.0]), np.array([512.0]))
    assert s.forwards[0] > s.decode_steps[0]  # 300-token prompts: more forwards than decode steps to ride
    assert s.riding_share[0] == pytest.approx(s.decode_steps[0] / s.forwards[0])

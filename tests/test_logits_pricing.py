"""The lm_head's logits as the planner prices them: their memory by what the workload asks of the sampler (an
all-greedy one only argmaxes the fp32 logits, a sampled one also sorts them), and a prefill forward's lm_head
one attention micro-batch of completed prompts at a time, as the engine samples them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from planner.hardware.emulated_link import emulate_link
from planner.hardware.profile import load_profile
from planner.perf.memory import GREEDY_BYTES_PER_LOGIT, SAMPLING_BYTES_PER_LOGIT, Budgets
from planner.perf.model import Candidates, PerfModel
from planner.plans.build import make_plan
from planner.plans.workload import Workload
from planner.specs.spec import load_spec

GREEDY = Workload.fixed(16, 32, 1024)
SAMPLED = replace(GREEDY, sampled_share=1.0)


def _model(workload: Workload) -> PerfModel:
    profile = emulate_link(load_profile("cpu-amd-epyc-2c"), 0.5, 0.125)
    return PerfModel(load_spec("qwen3-mini"), profile, workload, Budgets.from_args(profile, 1.0))


@pytest.mark.parametrize(
    ("workload", "sampler"), [(GREEDY, GREEDY_BYTES_PER_LOGIT), (SAMPLED, SAMPLING_BYTES_PER_LOGIT)]
)
def test_logits_memory_follows_what_the_sampler_does(workload, sampler):
    model = _model(workload)
    spec = model.spec
    assert float(model.memory.logits_bytes(3)) == 3 * spec.vocab_size * (spec.dtype_bytes + sampler)


def test_a_greedy_workload_gets_larger_micro_batches_in_the_same_device_memory():
    plans = {
        name: make_plan(model.spec, model.profile, model.workload, model.budgets)
        for name, model in (("greedy", _model(GREEDY)), ("sampled", _model(SAMPLED)))
    }
    assert plans["greedy"].decisions.attn_batch > plans["sampled"].decisions.attn_batch


def test_a_prefill_forwards_lm_head_runs_one_call_per_attention_micro_batch():
    model = _model(GREEDY)
    at = {
        a: model.prefill_chunk(
            Candidates.of(
                residency=model.residency_range[0],
                attn_batch=a,
                expert_batch=256,
                prefill_chunk=256,
                attention_threads=2,
            )
        )
        for a in (1, 16)
    }
    completed = 256 / GREEDY.prompt_len_mean  # prompts a 256-token chunk completes
    head = model.rates.gemm["lm_head"]
    overhead = at[16]["lm_head"] - head.seconds(completed)
    assert np.isclose(at[1]["lm_head"], completed * head.seconds(1.0) + overhead)
    assert at[1]["lm_head"] > at[16]["lm_head"]

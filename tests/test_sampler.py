"""The batched sampler against the definitions: chi-square tests of its empirical distributions on a fixed
logit vector (temperature, top-k, top-p, min-p, repetition / frequency / presence penalties), each beside a
test showing the same counts reject the distribution without that rule; plus seeds and batch independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from runtime.sampler import SamplingRows, sample, uniforms
from runtime.sampling import GenerationState, SamplingParams

LOGITS = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0])
DRAWS = 10_000
PROMPT = [2]
OUTPUT = [0, 0, 1]  # generated so far: token 0 twice, token 1 once


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def empirical(params: SamplingParams, output: list[int] | None = None) -> np.ndarray:
    states = [
        GenerationState(PROMPT, params, frozenset(), seed=seed, token_ids=list(output or []))
        for seed in range(DRAWS)
    ]
    rows = SamplingRows.of(states, len(LOGITS), torch.device("cpu"))
    tokens, _ = sample(torch.tensor(LOGITS, dtype=torch.float32).expand(DRAWS, -1), rows)
    return np.bincount(tokens.numpy(), minlength=len(LOGITS))


def p_value(counts: np.ndarray, expected: np.ndarray) -> float:
    support = expected > 0
    assert counts[~support].sum() == 0, f"drew tokens outside the support: {counts}"
    return chisquare(counts[support], expected[support] / expected.sum() * counts.sum()).pvalue


def renormalised(probs: np.ndarray, keep: np.ndarray) -> np.ndarray:
    kept = np.where(keep, probs, 0.0)
    return kept / kept.sum()


def top_p_keep(probs: np.ndarray, top_p: float) -> np.ndarray:
    order = np.argsort(-probs, kind="stable")
    ahead = np.cumsum(probs[order]) - probs[order]
    keep = np.zeros(len(probs), dtype=bool)
    keep[order[ahead < top_p]] = True
    return keep


def penalised(logits: np.ndarray, repetition: float, frequency: float, presence: float) -> np.ndarray:
    counts = np.bincount(OUTPUT, minlength=len(logits)).astype(float)
    seen = (counts > 0) | np.isin(np.arange(len(logits)), PROMPT)
    out = np.where(seen, np.where(logits > 0, logits / repetition, logits * repetition), logits)
    return out - frequency * counts - presence * (counts > 0)


CASES = {
    "temperature": (SamplingParams(temperature=0.7), softmax(LOGITS / 0.7), softmax(LOGITS)),
    "top_k": (SamplingParams(top_k=3), renormalised(softmax(LOGITS), np.arange(8) < 3), softmax(LOGITS)),
    "top_p": (
        SamplingParams(top_p=0.8),
        renormalised(softmax(LOGITS), top_p_keep(softmax(LOGITS), 0.8)),
        softmax(LOGITS),
    ),
    "min_p": (
        SamplingParams(min_p=0.2),
        renormalised(softmax(LOGITS), softmax(LOGITS) >= 0.2 * softmax(LOGITS).max()),
        softmax(LOGITS),
    ),
    "temperature+top_p": (
        SamplingParams(temperature=1.5, top_p=0.9),
        renormalised(softmax(LOGITS / 1.5), top_p_keep(softmax(LOGITS / 1.5), 0.9)),
        softmax(LOGITS / 1.5),
    ),
}
PENALTIES = {
    "repetition": (dict(repetition_penalty=1.5), (1.5, 0.0, 0.0)),
    "repetition<1": (dict(repetition_penalty=0.7), (0.7, 0.0, 0.0)),
    "frequency": (dict(frequency_penalty=0.6), (1.0, 0.6, 0.0)),
    "presence": (dict(presence_penalty=0.8), (1.0, 0.0, 0.8)),
    "all three": (
        dict(repetition_penalty=1.2, frequency_penalty=-0.3, presence_penalty=0.5),
        (1.2, -0.3, 0.5),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_filters_match_their_definitions(name):
    params, expected, without_rule = CASES[name]
    counts = empirical(params)
    assert p_value(counts, expected) > 1e-3, (counts, expected * DRAWS)
    assert chisquare(counts, without_rule * DRAWS).pvalue < 1e-6  # the test can tell the rule is applied


@pytest.mark.parametrize("name", PENALTIES)
def test_penalties_match_their_definitions(name):
    fields, (repetition, frequency, presence) = PENALTIES[name]
    counts = empirical(SamplingParams(**fields), OUTPUT)
    expected = softmax(penalised(LOGITS, repetition, frequency, presence))
    assert p_value(counts, expected) > 1e-3, (counts, expected * DRAWS)
    assert chisquare(counts, softmax(LOGITS) * DRAWS).pvalue < 1e-6


def test_greedy_rows_take_the_argmax_after_penalties_and_min_tokens_masks_stop_ids():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]] * 3)
    plain = GenerationState([0], SamplingParams(temperature=0), frozenset({1}))
    penalised_state = GenerationState(
        [0], SamplingParams(temperature=0, presence_penalty=2.0), frozenset({1})
    )
    penalised_state.token_ids = [1]
    early = GenerationState([0], SamplingParams(temperature=0, min_tokens=2), frozenset({1}))
    tokens, _ = sample(logits, SamplingRows.of([plain, penalised_state, early], 4, torch.device("cpu")))
    assert tokens.tolist() == [1, 3, 3]


def test_a_seeded_row_draws_the_same_whatever_its_batch():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    params = [
        SamplingParams(temperature=1.0 + (i % 3) * 0.3, top_p=0.9 if i % 2 else 1.0, top_k=i % 5, seed=i)
        for i in range(64)
    ]
    states = [GenerationState([1], p, frozenset()) for p in params]
    together, _ = sample(logits, SamplingRows.of(states, 50, torch.device("cpu")))
    alone = [
        int(sample(logits[i : i + 1], SamplingRows.of([states[i]], 50, torch.device("cpu")))[0])
        for i in range(64)
    ]
    assert together.tolist() == alone


def test_greedy_and_sampled_rows_mixed_pick_what_each_picks_alone():
    logits = torch.randn(32, 50, generator=torch.Generator().manual_seed(1))
    params = [
        SamplingParams(temperature=0.0) if i % 3 == 0 else SamplingParams(top_p=0.8 if i % 2 else 1.0, seed=i)
        for i in range(32)
    ]
    states = [GenerationState([1], p, frozenset()) for p in params]
    together, _ = sample(logits, SamplingRows.of(states, 50, torch.device("cpu")))
    alone = [
        int(sample(logits[i : i + 1], SamplingRows.of([states[i]], 50, torch.device("cpu")))[0])
        for i in range(32)
    ]
    assert together.tolist() == alone
    assert together[::3].tolist() == logits[::3].argmax(dim=-1).tolist()


def test_uniforms_are_uniform_and_depend_on_seed_and_step():
    seeds = torch.arange(50_000, dtype=torch.int64)
    u = uniforms(seeds, torch.zeros_like(seeds))
    assert 0 < float(u.min()) and float(u.max()) < 1
    counts = np.histogram(u.numpy(), bins=50, range=(0, 1))[0]
    assert chisquare(counts).pvalue > 1e-3
    assert not torch.equal(u, uniforms(seeds, torch.ones_like(seeds)))
    assert torch.equal(u, uniforms(seeds, torch.zeros_like(seeds)))

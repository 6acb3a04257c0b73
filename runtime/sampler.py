"""The batched sampler: logits [B, V] plus per-row parameter tensors -> next tokens [B], on the logits' device.
A seeded completion draws the same random numbers whatever batch or device it runs on.

How it works: docs/design.md, `runtime/sampler.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from runtime.sampling import GenerationState, Logprob

MASK32 = 0xFFFFFFFF


@dataclass
class Penalties:
    presence: torch.Tensor  # [B] fp32
    frequency: torch.Tensor  # [B] fp32
    repetition: torch.Tensor  # [B] fp32
    output_counts: torch.Tensor  # [B, V] fp32: times each token appears in the output so far
    seen: torch.Tensor  # [B, V] bool: in the prompt or the output


@dataclass
class SamplingRows:
    temperature: torch.Tensor  # [B] fp32 (1 on greedy rows)
    greedy: torch.Tensor  # [B] bool
    top_k: torch.Tensor  # [B] int64, V when off
    top_p: torch.Tensor  # [B] fp32
    min_p: torch.Tensor  # [B] fp32
    seeds: torch.Tensor  # [B] int64 (63-bit)
    counters: torch.Tensor  # [B] int64: tokens generated so far
    penalties: Penalties | None
    stop_mask: tuple[torch.Tensor, torch.Tensor] | None  # (rows, token ids) masked by min_tokens
    logprobs: list[int | None]  # top logprobs asked per row (None: none)

    def subset(self, index: torch.Tensor) -> SamplingRows:
        """The rows at `index` with what `filtered_probs` and `uniforms` read (penalties and stops are applied)."""
        pick = {
            name: getattr(self, name)[index]
            for name in ("temperature", "greedy", "top_k", "top_p", "min_p", "seeds", "counters")
        }
        return SamplingRows(**pick, penalties=None, stop_mask=None, logprobs=[])

    @classmethod
    def of(cls, states: Sequence[GenerationState], vocab_size: int, device: torch.device) -> SamplingRows:
        params = [s.params for s in states]

        def column(values, dtype=torch.float32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

        greedy = [p.is_greedy for p in params]
        top_k = [p.top_k if p.top_k and p.top_k > 0 and not g else vocab_size for p, g in zip(params, greedy)]
        masked = [
            (row, token)
            for row, s in enumerate(states)
            if len(s.token_ids) < s.params.min_tokens
            for token in s.stop_ids
            if token < vocab_size
        ]
        return cls(
            temperature=column([1.0 if g else p.temperature for p, g in zip(params, greedy)]),
            greedy=column(greedy, torch.bool),
            top_k=column(top_k, torch.int64),
            top_p=column([p.top_p for p in params]),
            min_p=column([p.min_p for p in params]),
            seeds=column([s.seed & ((1 << 63) - 1) for s in states], torch.int64),
            counters=column([len(s.token_ids) for s in states], torch.int64),
            penalties=_penalties(states, vocab_size, device)
            if any(p.has_penalties for p in params)
            else None,
            stop_mask=(
                column([r for r, _ in masked], torch.int64),
                column([t for _, t in masked], torch.int64),
            )
            if masked
            else None,
            logprobs=[p.logprobs for p in params],
        )


def _penalties(states: Sequence[GenerationState], vocab_size: int, device: torch.device) -> Penalties:
    def padded(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(1, max(len(ids) for ids in lists))
        ids = torch.tensor([values + [0] * (width - len(values)) for values in lists], dtype=torch.int64)
        valid = torch.arange(width)[None, :] < torch.tensor([len(values) for values in lists])[:, None]
        return ids.to(device), valid.to(device)

    batch = len(states)
    out_ids, out_valid = padded([s.token_ids for s in states])
    counts = torch.zeros(batch, vocab_size, device=device).scatter_add_(1, out_ids, out_valid.float())
    prompt_ids, prompt_valid = padded([s.prompt_token_ids for s in states])
    seen = torch.zeros(batch, vocab_size, device=device).scatter_add_(1, prompt_ids, prompt_valid.float()) > 0
    params = [s.params for s in states]
    return Penalties(
        presence=torch.tensor([p.presence_penalty for p in params], device=device),
        frequency=torch.tensor([p.frequency_penalty for p in params], device=device),
        repetition=torch.tensor([p.repetition_penalty for p in params], device=device),
        output_counts=counts,
        seen=seen | (counts > 0),
    )


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2^32 for x < 2^32 without overflowing int64: the constant in two 16-bit halves."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32 by C. Wellons) of int64 values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """One uniform in (0, 1) per row, float64, a function of (seed, counter) only."""
    h = _hash32((counters & MASK32) ^ 0x9E3779B9)
    h = _hash32(h ^ (seeds & MASK32))
    h = _hash32(h ^ ((seeds >> 32) & MASK32))
    low = _hash32(h ^ 0x85EBCA6B)
    return ((h >> 11).double() * 2.0**21 + (low >> 11).double() + 0.5) / 2.0**42


def apply_penalties(logits: torch.Tensor, penalties: Penalties) -> torch.Tensor:
    repetition = penalties.repetition[:, None]
    scaled = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(penalties.seen, scaled, logits)
    counts = penalties.output_counts
    return logits - penalties.frequency[:, None] * counts - penalties.presence[:, None] * (counts > 0).float()


def filtered_probs(logits: torch.Tensor, rows: SamplingRows) -> torch.Tensor:
    """Probabilities after temperature, min-p, top-k and top-p; the dropped tokens are exactly 0."""
    probs = torch.softmax(logits / rows.temperature[:, None], dim=-1)
    if bool((rows.min_p > 0).any()):
        probs = probs * (probs >= rows.min_p[:, None] * probs.amax(dim=-1, keepdim=True))
    vocab = probs.shape[-1]
    if bool((rows.top_p < 1).any()):
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)  # [B, V]
        keep = torch.arange(vocab, device=probs.device)[None, :] < rows.top_k[:, None]
        sorted_probs = sorted_probs * keep
        ahead = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely kept tokens
        keep &= ahead < rows.top_p[:, None] * sorted_probs.sum(dim=-1, keepdim=True)
        probs = probs * torch.zeros_like(keep).scatter_(1, order, keep)
    elif bool((rows.top_k < vocab).any()):
        k_max = int(rows.top_k.max())
        kth = probs.topk(k_max, dim=-1).values.gather(1, (rows.top_k.clamp(max=k_max) - 1)[:, None])
        probs = probs * (probs >= kth)
    return probs


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row i's token is where u[i] * (kept mass) falls in its cumulative sum."""
    cdf = probs.double().cumsum(dim=-1)  # [B, V]
    target = (u * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


def sample(logits: torch.Tensor, rows: SamplingRows) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next tokens [B] (int64) and, when any row asked, the raw logprobs [B, V] they are reported from."""
    logits = logits.float()
    raw_logprobs = torch.log_softmax(logits, dim=-1) if any(n is not None for n in rows.logprobs) else None
    if rows.penalties is not None:
        logits = apply_penalties(logits, rows.penalties)
    if rows.stop_mask is not None:
        logits = logits.index_put(rows.stop_mask, torch.tensor(float("-inf"), device=logits.device))
    if bool(rows.greedy.all()):
        return torch.argmax(logits, dim=-1), raw_logprobs
    if not bool(rows.greedy.any()):
        return draw(filtered_probs(logits, rows), uniforms(rows.seeds, rows.counters)), raw_logprobs
    # each row's token depends on its own row only: argmax the greedy rows, draw the others
    greedy, picked = rows.greedy.nonzero().squeeze(1), (~rows.greedy).nonzero().squeeze(1)
    sub = rows.subset(picked)
    tokens = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    tokens[greedy] = torch.argmax(logits[greedy], dim=-1)
    tokens[picked] = draw(filtered_probs(logits[picked], sub), uniforms(sub.seeds, sub.counters))
    return tokens, raw_logprobs


def token_logprobs(
    raw: torch.Tensor, tokens: torch.Tensor, asked: list[int | None], decode=None
) -> list[dict[int, Logprob] | None]:
    """vLLM-shaped logprobs per row: the sampled token first, then the top `asked[i]` tokens, with ranks."""
    rows = [i for i, n in enumerate(asked) if n is not None]
    index = torch.tensor(rows, device=raw.device)
    lp, chosen = raw[index], tokens[index]
    chosen_lp = lp.gather(1, chosen[:, None])  # [R, 1]
    ranks = ((lp > chosen_lp).sum(dim=1) + 1).tolist()
    top = lp.topk(max(1, max(asked[i] for i in rows)), dim=-1)
    top_values, top_ids = top.values.tolist(), top.indices.tolist()
    result: list[dict[int, Logprob] | None] = [None] * len(asked)
    for j, i in enumerate(rows):
        token = int(chosen[j])
        text = (lambda t: decode([t])) if decode else (lambda t: None)
        entry = {token: Logprob(float(chosen_lp[j]), ranks[j], text(token))}
        for rank, (tid, value) in enumerate(zip(top_ids[j][: asked[i]], top_values[j]), start=1):
            entry.setdefault(tid, Logprob(value, rank, text(tid)))
        result[i] = entry
    return result


def sample_states(logits: torch.Tensor, states: Sequence[GenerationState]) -> list[int]:
    """Next token of each state from its row of `logits` [B, V]; logprobs wait in `pending_logprob` for `append`."""
    rows = SamplingRows.of(states, logits.shape[-1], logits.device)
    tokens, raw = sample(logits, rows)
    if raw is not None:
        for state, entry in zip(states, token_logprobs(raw, tokens, rows.logprobs, states[0].detokenize)):
            state.pending_logprob = entry
    return tokens.tolist()

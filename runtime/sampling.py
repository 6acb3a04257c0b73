"""Sampling parameters, next-token selection and stop conditions, shared by every generation backend.

- `SamplingParams(temperature=0, top_p=1.0, top_k=0, max_tokens=16, ignore_eos=False, seed=None,
  stop=None)`, validated on construction (UserError). temperature 0 is greedy; top_k 0 (or -1) is off.
- `new_generator(seed)`: the per-request CPU `torch.Generator` (seeded, or from OS entropy when None).
- `sample_next_token(logits [V], params, generator) -> int`: greedy argmax, or temperature -> top-k ->
  top-p -> one uniform draw per token inverted through the CDF of the kept tokens (fp32 on the CPU),
  so two backends given the same logits and seed pick the same tokens.
- `GenerationState(prompt_token_ids, params, eos_token_ids, detokenize)`: one request's progress, with its
  own generator; `next_token(logits) -> int`; `append(token) -> bool` (finished?) applies EOS (unless ignore_eos), stop strings (text truncated before
  the stop string; "stop") and max_tokens ("length"); `.text`, `.token_ids`, `.finish_reason`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from planner.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    ignore_eos: bool = False
    seed: int | None = None
    stop: str | list[str] | None = None

    def __post_init__(self) -> None:
        def fail(cause: str, fix: str) -> UserError:
            return UserError(f"SamplingParams: {cause}", fix)

        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise fail(f"max_tokens={self.max_tokens!r} must be a positive integer", "pass max_tokens >= 1")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not self.temperature >= 0 or self.temperature == float("inf"):
            raise fail(f"temperature={self.temperature!r} must be a finite number >= 0",
                       "pass temperature=0 for greedy or a positive temperature to sample")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise fail(f"top_p={self.top_p!r} must be in (0, 1]", "pass top_p=1.0 to disable nucleus sampling")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            raise fail(f"top_k={self.top_k!r} must be an integer >= 0 (0 or -1: off)", "pass top_k=0 to disable")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise fail(f"seed={self.seed!r} must be an integer or None", "pass an integer seed")
        if not isinstance(self.ignore_eos, bool):
            raise fail(f"ignore_eos={self.ignore_eos!r} must be a bool", "pass True or False")
        if self.stop is not None and not isinstance(self.stop, (str, list, tuple)):
            raise fail(f"stop={self.stop!r} must be a non-empty string or a list of them", "fix the stop strings")
        stops = self.stop_strings
        if any(not isinstance(s, str) or not s for s in stops):
            raise fail(f"stop={self.stop!r} must be a non-empty string or a list of them", "fix the stop strings")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def new_generator(seed: int | None):
    import torch

    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def sample_next_token(logits, params: SamplingParams, generator) -> int:
    import torch

    logits = logits.detach().to("cpu", torch.float32).reshape(-1)
    if params.is_greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    sorted_probs, sorted_ids = torch.sort(probs, descending=True, stable=True)
    keep = sorted_probs.numel()
    if params.top_k > 0:
        keep = min(keep, params.top_k)
    kept = sorted_probs[:keep].double()
    kept = kept / kept.sum()  # renormalised after top-k, as transformers and vLLM do before top-p
    if params.top_p < 1.0:
        before = torch.cumsum(kept, dim=0) - kept  # probability mass ahead of each token
        keep = max(1, int((before < params.top_p).sum()))
        kept = kept[:keep]
    cdf = torch.cumsum(kept, dim=0)
    draw = torch.rand((), generator=generator, dtype=torch.float64) * cdf[-1]
    index = min(int(torch.searchsorted(cdf, draw, right=True)), keep - 1)
    return int(sorted_ids[index])


@dataclass
class GenerationState:
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int]
    detokenize: Callable[[Sequence[int]], str] | None = None
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stopped_text: str | None = None
    generator: object = None        # torch.Generator, created for sampled requests

    def __post_init__(self) -> None:
        if self.params.stop_strings and self.detokenize is None:
            raise UserError("stop strings need a tokenizer to detokenize the output",
                            "use a checkpoint with tokenizer.json or drop `stop`")
        if self.generator is None and not self.params.is_greedy:
            self.generator = new_generator(self.params.seed)

    def next_token(self, logits) -> int:
        return sample_next_token(logits, self.params, self.generator)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        if self.stopped_text is not None:
            return self.stopped_text
        return self.detokenize(self.token_ids) if self.detokenize else ""

    def append(self, token: int) -> bool:
        if self.finished:
            raise RuntimeError("append to a finished sequence")
        self.token_ids.append(token)
        if token in self.eos_token_ids and not self.params.ignore_eos:
            self.finish_reason = "stop"
        elif self._hit_stop_string():
            self.finish_reason = "stop"
        elif len(self.token_ids) >= self.params.max_tokens:
            self.finish_reason = "length"
        return self.finished

    def _hit_stop_string(self) -> bool:
        if not self.params.stop_strings:
            return False
        text = self.detokenize(self.token_ids)
        hits = [i for i in (text.find(s) for s in self.params.stop_strings) if i >= 0]
        if not hits:
            return False
        self.stopped_text = text[: min(hits)]
        return True

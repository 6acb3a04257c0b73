"""Sampling parameters (vLLM's names, defaults and meanings) and one request's progress, torch-free.

How it works: docs/design.md, `runtime/sampling.py`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from planner.errors import UserError
from planner.prompts_file import GREEDY_EPSILON
from planner.values import is_int

MAX_LOGPROBS = 20  # vLLM's default max_logprobs (OpenAI's top_logprobs limit too)
GENERATION_CONFIG_FIELDS = ("repetition_penalty", "temperature", "top_k", "top_p", "min_p")
# vLLM fields moelens does not implement: setting one to anything but its default is an error naming it.
UNSUPPORTED_DEFAULTS = {
    "best_of": None,
    "prompt_logprobs": None,
    "logit_bias": None,
    "allowed_token_ids": None,
    "bad_words": None,
    "logits_processors": None,
    "truncate_prompt_tokens": None,
    "guided_decoding": None,
    "structured_outputs": None,
    "extra_args": None,
    "detokenize": True,
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
}


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value == value
        and abs(value) != float("inf")
    )


def _fail(cause: str, fix: str) -> UserError:
    return UserError(f"SamplingParams: {cause}", fix)


def cap_max_tokens(max_tokens: int, prompt_len: int, token_limit: int) -> int:
    """`max_tokens`, lowered so that prompt + generation fits in `token_limit` tokens (prompt_len < token_limit)."""
    return min(max_tokens, token_limit - prompt_len)


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    include_stop_str_in_output: bool = False
    output_kind: Any = None  # accepted for vLLM code; outputs are always final
    best_of: Any = field(default=None, repr=False)
    prompt_logprobs: Any = field(default=None, repr=False)
    logit_bias: Any = field(default=None, repr=False)
    allowed_token_ids: Any = field(default=None, repr=False)
    bad_words: Any = field(default=None, repr=False)
    logits_processors: Any = field(default=None, repr=False)
    truncate_prompt_tokens: Any = field(default=None, repr=False)
    guided_decoding: Any = field(default=None, repr=False)
    structured_outputs: Any = field(default=None, repr=False)
    extra_args: Any = field(default=None, repr=False)
    detokenize: Any = field(default=True, repr=False)
    skip_special_tokens: Any = field(default=True, repr=False)
    spaces_between_special_tokens: Any = field(default=True, repr=False)

    def __post_init__(self) -> None:
        for name, default in UNSUPPORTED_DEFAULTS.items():
            if getattr(self, name) != default:
                raise _fail(
                    f"{name}={getattr(self, name)!r:.60} is not supported by moelens",
                    f"drop {name} (supported: n, temperature, top_p, top_k, min_p, the three penalties, "
                    "seed, stop, stop_token_ids, ignore_eos, max_tokens, min_tokens, logprobs, "
                    "include_stop_str_in_output)",
                )
        self._check_counts()
        self._check_rates()
        if self.seed is not None and not is_int(self.seed):
            raise _fail(f"seed={self.seed!r} must be an integer or None", "pass an integer seed")
        for name in ("ignore_eos", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(f"{name}={getattr(self, name)!r} must be a bool", "pass True or False")
        if (
            self.stop is not None
            and not isinstance(self.stop, (str, list, tuple))
            or any(not isinstance(s, str) or not s for s in self.stop_strings)
        ):
            raise _fail(
                f"stop={self.stop!r} must be a non-empty string or a list of them", "fix the stop strings"
            )
        if self.stop_token_ids is not None and (
            not isinstance(self.stop_token_ids, (list, tuple))
            or not all(is_int(t) and t >= 0 for t in self.stop_token_ids)
        ):
            raise _fail(
                f"stop_token_ids={self.stop_token_ids!r} must be a list of token ids",
                "pass a list of non-negative integers",
            )

    def _check_counts(self) -> None:
        if not is_int(self.n) or self.n < 1:
            raise _fail(f"n={self.n!r} must be a positive integer", "pass n >= 1")
        if self.max_tokens is not None and (not is_int(self.max_tokens) or self.max_tokens <= 0):
            raise _fail(
                f"max_tokens={self.max_tokens!r} must be a positive integer or None",
                "pass max_tokens >= 1 (None: up to the model's context)",
            )
        if not is_int(self.min_tokens) or self.min_tokens < 0:
            raise _fail(f"min_tokens={self.min_tokens!r} must be an integer >= 0", "pass min_tokens >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise _fail(
                f"min_tokens={self.min_tokens} exceeds max_tokens={self.max_tokens}",
                "lower min_tokens or raise max_tokens",
            )
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < -1):
            raise _fail(
                f"top_k={self.top_k!r} must be an integer >= 0 (0 or -1: off)", "pass top_k=0 to disable"
            )
        if self.logprobs is not None and (
            not is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise _fail(
                f"logprobs={self.logprobs!r} must be an integer in [0, {MAX_LOGPROBS}] or None",
                f"ask for at most {MAX_LOGPROBS} top logprobs",
            )

    def _check_rates(self) -> None:
        checks = (
            ("temperature", lambda v: v >= 0, "a finite number >= 0", "0 for greedy, > 0 to sample"),
            ("top_p", lambda v: 0 < v <= 1, "in (0, 1]", "top_p=1.0 to disable nucleus sampling"),
            ("min_p", lambda v: 0 <= v <= 1, "in [0, 1]", "min_p=0 to disable"),
            ("presence_penalty", lambda v: -2 <= v <= 2, "in [-2, 2]", "0 to disable"),
            ("frequency_penalty", lambda v: -2 <= v <= 2, "in [-2, 2]", "0 to disable"),
            ("repetition_penalty", lambda v: v > 0, "> 0", "1.0 to disable"),
        )
        for name, ok, what, fix in checks:
            value = getattr(self, name)
            if not _is_number(value) or not ok(value):
                raise _fail(f"{name}={value!r} must be {what}", f"pass {fix}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_EPSILON

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    def with_defaults(
        self, defaults: dict[str, Any], explicit: frozenset[str] = frozenset()
    ) -> SamplingParams:
        """These params with `defaults` (generation_config.json's sampling fields, `max_tokens`) put in the
        fields not in `explicit` (the fields a request set)."""
        known = {f.name for f in fields(self)}
        changes = {k: v for k, v in defaults.items() if k in known and k not in explicit}
        return replace(self, **changes) if changes else self


def generation_config_defaults(config: dict) -> dict[str, Any]:
    """The sampling defaults vLLM reads from generation_config.json (`max_new_tokens` -> max_tokens)."""
    defaults = {k: config[k] for k in GENERATION_CONFIG_FIELDS if config.get(k) is not None}
    if is_int(config.get("max_new_tokens")):
        defaults["max_tokens"] = config["max_new_tokens"]
    return defaults


@dataclass(frozen=True)
class Logprob:
    """vLLM's Logprob: one token's log probability, its rank in the model's distribution and its text."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class GenerationState:
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int]
    detokenize: Callable[[Sequence[int]], str] | None = None
    max_tokens: int | None = None  # None: params.max_tokens (the engine caps at its context)
    seed: int | None = None  # None: params.seed, else drawn from OS entropy
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None
    pending_logprob: dict[int, Logprob] | None = None  # set by the sampler, taken by the next `append`
    _stop_text_end: int | None = None  # where the text ends after a stop string
    _stopped_by_token: bool = False

    def __post_init__(self) -> None:
        if self.params.stop_strings and self.detokenize is None:
            raise UserError(
                "stop strings need a tokenizer to detokenize the output",
                "use a checkpoint with tokenizer.json or drop `stop`",
            )
        if self.max_tokens is None:
            self.max_tokens = self.params.max_tokens
        if self.seed is None:
            self.seed = (
                self.params.seed if self.params.seed is not None else random.SystemRandom().getrandbits(63)
            )
        if self.params.logprobs is not None:
            self.logprobs, self.cumulative_logprob = [], 0.0
        stop_ids = set(self.params.stop_token_ids or ())
        self.stop_ids = frozenset(stop_ids if self.params.ignore_eos else stop_ids | set(self.eos_token_ids))

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        if self.detokenize is None:
            return ""
        ids = self.token_ids
        if self._stopped_by_token and not self.params.include_stop_str_in_output:
            ids = ids[:-1]
        text = self.detokenize(ids)
        return text if self._stop_text_end is None else text[: self._stop_text_end]

    def append(self, token: int) -> bool:
        if self.finished:
            raise RuntimeError("append to a finished sequence")
        self.token_ids.append(token)
        logprob, self.pending_logprob = self.pending_logprob, None
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
            self.cumulative_logprob += logprob[token].logprob
        if len(self.token_ids) >= self.params.min_tokens:
            if token in self.stop_ids:
                self.finish_reason, self._stopped_by_token = "stop", True
                self.stop_reason = token if token in (self.params.stop_token_ids or ()) else None
            elif self._hit_stop_string():
                self.finish_reason = "stop"
        if not self.finished and self.max_tokens is not None and len(self.token_ids) >= self.max_tokens:
            self.finish_reason = "length"
        return self.finished

    def _hit_stop_string(self) -> bool:
        if not self.params.stop_strings:
            return False
        text = self.detokenize(self.token_ids)
        hits = [(i, s) for s in self.params.stop_strings if (i := text.find(s)) >= 0]
        if not hits:
            return False
        start, stop = min(hits)
        self._stop_text_end = start + len(stop) if self.params.include_stop_str_in_output else start
        self.stop_reason = stop
        return True

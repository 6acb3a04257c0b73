"""Workload: the length distribution of an offline job, summarised for the performance model.

How it works: docs/design.md, `planner/plans/workload.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from planner.errors import UserError
from planner.prompts_file import LineError, PromptLine, decode_line, parse_prompt_line
from planner.specs.hf_hub import is_hub_id, require_snapshot
from planner.values import is_finite_number, is_int

MAX_TOKENS_PER_SEQUENCE = 10_000_000  # beyond any model's context: a typo, not a workload
MAX_PROMPTS = 10**12
CHAT_TOKENS_PER_MESSAGE = 4  # role markers and separators of a typical chat template
CHAT_TOKENS_PER_CONVERSATION = 3  # the generation prompt
OPTIONAL_FIELDS = ("sampled_share", "top_p_share")  # absent in older plans: all greedy, as they were priced


@dataclass(frozen=True)
class Workload:
    num_prompts: int
    prompt_len_mean: float
    gen_len_mean: float
    prompt_len_max: int
    gen_len_max: int
    kv_tokens_per_slot: float
    prefill_context: float
    prompt_hist: tuple[tuple[int, int, int], ...] = ()  # (lowest, highest, count) in powers-of-two bins
    gen_hist: tuple[tuple[int, int, int], ...] = ()
    source: str = ""
    token_count: str = "exact"  # exact | tokenizer | bytes/4
    sampled_share: float = 0.0  # completions the engine samples (temperature > 0), not argmax
    top_p_share: float = 0.0  # completions sampled with top_p < 1 (their logits are sorted); <= sampled_share

    def __post_init__(self) -> None:
        if not 1 <= self.num_prompts <= MAX_PROMPTS:
            raise UserError(
                f"number of prompts {self.num_prompts} is out of range", "pass 1 <= --num-prompts <= 1e12"
            )
        for name in ("prompt_len_mean", "gen_len_mean", "prompt_len_max", "gen_len_max"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 1 <= value <= MAX_TOKENS_PER_SEQUENCE):
                raise UserError(
                    f"workload {name}={value!r} must be between 1 and {MAX_TOKENS_PER_SEQUENCE}",
                    "pass positive prompt and generation lengths",
                )
        if not 0.0 <= self.top_p_share <= self.sampled_share <= 1.0:
            raise UserError(
                f"workload shares sampled={self.sampled_share!r}, top_p={self.top_p_share!r} must satisfy "
                "0 <= top_p <= sampled <= 1",
                "re-create the plan with `planner solve`",
            )

    # ----- constructors -----
    @classmethod
    def fixed(cls, prompt_len: int, gen_len: int, num_prompts: int) -> Workload:
        for flag, value in (
            ("--prompt-len", prompt_len),
            ("--gen-len", gen_len),
            ("--num-prompts", num_prompts),
        ):
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{flag} {value!r} must be a positive integer", f"pass {flag} >= 1")
        return cls.from_lengths(
            [prompt_len],
            [gen_len],
            source=f"--prompt-len {prompt_len} --gen-len {gen_len}",
            num_prompts=num_prompts,
        )

    @classmethod
    def from_lengths(
        cls,
        prompt_lens,
        gen_lens,
        source: str = "",
        token_count: str = "exact",
        num_prompts: int | None = None,
        sampled_share: float = 0.0,
        top_p_share: float = 0.0,
    ) -> Workload:
        """`sampled_share` / `top_p_share`: what the requests ask of the sampler (0: all greedy)."""
        p = np.asarray(prompt_lens, dtype=np.float64)
        g = np.asarray(gen_lens, dtype=np.float64)
        if p.size == 0 or p.shape != g.shape:
            raise UserError(
                "a workload needs one generation length per prompt and at least one prompt",
                "pass a non-empty prompts file",
            )
        if p.min() < 1 or g.min() < 1:
            raise UserError("prompt and generation lengths must be at least 1 token", "drop empty prompts")
        if max(p.max(), g.max()) > MAX_TOKENS_PER_SEQUENCE:
            raise UserError(
                f"a length above {MAX_TOKENS_PER_SEQUENCE} tokens is not a plausible workload",
                "check --prompt-len/--gen-len or the prompts file",
            )
        return cls(
            num_prompts=int(num_prompts if num_prompts is not None else p.size),
            prompt_len_mean=float(p.mean()),
            gen_len_mean=float(g.mean()),
            prompt_len_max=int(p.max()),
            gen_len_max=int(g.max()),
            kv_tokens_per_slot=float((g * (p + g / 2)).sum() / g.sum()),
            prefill_context=float((p * p).sum() / (2 * p.sum()) + 0.5),
            prompt_hist=_log2_histogram(p),
            gen_hist=_log2_histogram(g),
            source=source,
            token_count=token_count,
            sampled_share=float(sampled_share),
            top_p_share=float(top_p_share),
        )

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        default_max_tokens: int,
        tokenizer_path: str | Path | None = None,
        num_prompts: int | None = None,
        on_error: str = "fail",
        max_context: int | None = None,
    ) -> Workload:
        """Lengths of the prompts file's requests (one per completion: n of a line with n); lines that are bad
        (`planner.prompts_file`) or whose prompt does not fit `max_context` fail, or are left out with
        `on_error="skip"`; generation lengths are capped to what the context leaves."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"prompts file {path} does not exist", "pass an existing JSONL file to --prompts")
        count_tokens, how = _token_counter(tokenizer_path)
        prompt_lens, gen_lens, sampled, top_p = [], [], 0, 0
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    line = parse_prompt_line(decode_line(raw), number)
                    prompt_len = _prompt_len(line, count_tokens)
                    if max_context is not None and prompt_len >= max_context:
                        raise LineError(
                            f"prompt of about {prompt_len} tokens does not fit the context of {max_context}",
                            "shorten the prompt",
                        )
                except LineError as err:
                    if on_error == "fail":
                        raise UserError(f"{path}, line {number}: {err.cause}", err.fix) from None
                    continue
                gen_len = line.max_tokens or default_max_tokens
                if max_context is not None:
                    gen_len = min(gen_len, max_context - prompt_len)
                prompt_lens += [prompt_len] * line.n
                gen_lens += [gen_len] * line.n
                sampled += 0 if line.is_greedy else line.n
                top_p += line.n if line.uses_top_p else 0
        if not prompt_lens:
            raise UserError(
                f"prompts file {path} has no prompts", "pass a JSONL file with one prompt per line"
            )
        return cls.from_lengths(
            prompt_lens,
            gen_lens,
            source=str(path),
            token_count=how,
            num_prompts=num_prompts,
            sampled_share=sampled / len(prompt_lens),
            top_p_share=top_p / len(prompt_lens),
        )

    def with_num_prompts(self, num_prompts: int) -> Workload:
        return replace(self, num_prompts=num_prompts)

    # ----- derived -----
    @property
    def generated_tokens(self) -> float:
        return self.num_prompts * self.gen_len_mean

    @property
    def prompt_tokens(self) -> float:
        return self.num_prompts * self.prompt_len_mean

    @property
    def decoded_tokens(self) -> float:
        """Tokens decode steps generate: each sequence's first token comes from its prefill forward."""
        return self.num_prompts * max(self.gen_len_mean - 1.0, 0.0)

    @property
    def finishes_in_waves(self) -> bool:
        """Equal generation lengths: sequences started together finish together, so refills come in waves and
        there is no staggered drain at the end of the job."""
        return self.gen_len_max <= self.gen_len_mean + 0.5

    @property
    def kv_held_tokens_per_slot(self) -> float:
        return self.prompt_len_mean + self.gen_len_max if self.finishes_in_waves else self.kv_tokens_per_slot

    @property
    def max_sequence_len(self) -> int:
        return self.prompt_len_max + self.gen_len_max

    @property
    def pme(self) -> float:
        """MoE-Lens parallel-token efficiency of KV memory, 2(p+g)/((2p+g)g), at the mean lengths."""
        p, g = self.prompt_len_mean, self.gen_len_mean
        return 2 * (p + g) / ((2 * p + g) * g)

    def window_read_tokens(self, window: int | None) -> float:
        """Mean KV tokens a decode step reads for one sequence through a layer with this sliding window."""
        p, g = self.prompt_len_mean, self.gen_len_mean
        full = p + (g - 1) / 2
        if window is None or window >= p + g:
            return full
        if window <= p:
            return float(window)
        ramp = window - p  # steps before the context reaches the window
        return (ramp * (p + (ramp - 1) / 2) + (g - ramp) * window) / g

    # ----- (de)serialisation -----
    def to_dict(self) -> dict:
        data = asdict(self)
        data["prompt_hist"] = [list(b) for b in self.prompt_hist]
        data["gen_hist"] = [list(b) for b in self.gen_hist]
        return data

    @classmethod
    def from_dict(cls, data: dict, where: str = "workload") -> Workload:
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a mapping", "re-create the plan with `planner solve`")
        expected = set(cls.__dataclass_fields__)
        unknown = sorted(map(str, set(data) - expected))
        missing = sorted(expected - set(data) - set(OPTIONAL_FIELDS))
        if unknown or missing:
            raise UserError(
                f"{where}: unknown fields {unknown}, missing fields {missing}",
                "re-create the plan with `planner solve`",
            )
        values = dict(data)
        for key in ("prompt_hist", "gen_hist"):
            bins = values[key]
            if not isinstance(bins, list) or not all(
                isinstance(b, list) and len(b) == 3 and all(map(is_int, b)) for b in bins
            ):
                raise UserError(
                    f"{where}.{key}: expected a list of [lowest, highest, count] integers",
                    "re-create the plan with `planner solve`",
                )
            values[key] = tuple(tuple(b) for b in bins)
        for key in ("num_prompts", "prompt_len_max", "gen_len_max"):
            if not is_int(values[key]):
                raise UserError(
                    f"{where}.{key}: expected an integer, got {values[key]!r}",
                    "re-create the plan with `planner solve`",
                )
        for key in (
            "prompt_len_mean",
            "gen_len_mean",
            "kv_tokens_per_slot",
            "prefill_context",
            *OPTIONAL_FIELDS,
        ):
            if key not in values:
                continue
            if not is_finite_number(values[key]):
                raise UserError(
                    f"{where}.{key}: expected a finite number, got {values[key]!r}"[:300],
                    "re-create the plan with `planner solve`",
                )
            values[key] = float(values[key])
        for key in ("source", "token_count"):
            if not isinstance(values[key], str):
                raise UserError(
                    f"{where}.{key}: expected a string, got {values[key]!r}"[:300],
                    "re-create the plan with `planner solve`",
                )
        return cls(**values)

    def describe(self) -> str:
        return (
            f"{self.num_prompts} prompts, prompt {self.prompt_len_mean:.0f} tokens mean "
            f"({self.prompt_len_max} max), generate {self.gen_len_mean:.0f} mean ({self.gen_len_max} max)"
            f"{'' if self.token_count == 'exact' else f', tokens counted by {self.token_count}'}"
        )


def _log2_histogram(values: np.ndarray) -> tuple[tuple[int, int, int], ...]:
    exponents = np.floor(np.log2(values)).astype(int)
    bins = []
    for e in range(int(exponents.min()), int(exponents.max()) + 1):
        count = int((exponents == e).sum())
        if count:
            bins.append((2**e, 2 ** (e + 1) - 1, count))
    return tuple(bins)


def _token_counter(tokenizer_path: str | Path | None):
    if tokenizer_path is None:
        return (lambda text: max(1, math.ceil(len(text.encode("utf-8")) / 4))), "bytes/4"
    path = require_snapshot(str(tokenizer_path)) if is_hub_id(tokenizer_path) else Path(tokenizer_path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UserError(
            f"no tokenizer.json at {path}", "pass --checkpoint DIR holding tokenizer.json, or omit it"
        )
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # the tokenizers package raises a bare Exception on a malformed file
        raise UserError(
            f"cannot read tokenizer {path}: {err}", "pass a checkpoint with a valid tokenizer.json"
        ) from None
    return (lambda text: max(1, len(tokenizer.encode(text).ids))), "tokenizer"


def _prompt_len(line: PromptLine, count_tokens) -> int:
    """Prompt tokens of one line: exact for token ids, counted (or estimated) for text and chat messages."""
    if isinstance(line.prompt, list):
        return len(line.prompt)
    if line.prompt is not None:
        return count_tokens(line.prompt)
    return CHAT_TOKENS_PER_CONVERSATION + sum(
        CHAT_TOKENS_PER_MESSAGE + (count_tokens(m["content"]) if m["content"] else 0) for m in line.messages
    )

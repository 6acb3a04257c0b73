"""One input line of a prompts JSONL file -> one validated `JobRequest`: the planner's parser plus tokens.

How it works: docs/design.md, `runtime/jobio/requests.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from planner.errors import UserError
from planner.prompts_file import LineError, PromptLine, batch_key, native_key, parse_prompt_line
from runtime.sampling import SamplingParams, cap_max_tokens

if TYPE_CHECKING:
    from runtime.checkpoint.tokenizer import CheckpointTokenizer

__all__ = ["LineError", "ParseContext", "JobRequest", "batch_key", "native_key", "parse_line", "stable_seed"]


@dataclass(frozen=True)
class ParseContext:
    tokenizer: CheckpointTokenizer | None  # None: only prompt_token_ids work
    max_context: int  # spec.max_position_embeddings
    vocab_size: int
    default_max_tokens: int = 16
    generation_defaults: dict = field(default_factory=dict)  # generation_config.json's sampling defaults
    kv_capacity_tokens: int | None = None  # the plan's whole KV cache in tokens (None: not limiting)

    @property
    def token_limit(self) -> int:
        return min(self.max_context, self.kv_capacity_tokens or self.max_context)

    @property
    def token_limit_text(self) -> str:
        if self.token_limit < self.max_context:
            return f"the plan's KV cache of {self.token_limit} tokens"
        return f"the model's context of {self.max_context} positions"


@dataclass(frozen=True)
class JobRequest:
    key: str  # unique answer key, see module docstring
    id: str | int  # the id as given (native: id or line number; batch: custom_id)
    line_number: int
    prompt_token_ids: list[int]
    sampling: SamplingParams
    api: str | None = None  # None: native; "completions" | "chat.completions": Batch API line
    asked_max_tokens: int | None = None  # the line's max_tokens when it was capped to the token limit

    @property
    def is_batch_api(self) -> bool:
        return self.api is not None


def stable_seed(key: str) -> int:
    """The seed of a request that gives none: fixed by its key."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def _sampling(line: PromptLine, context: ParseContext, prompt_len: int) -> tuple[SamplingParams, int | None]:
    """The line's sampling parameters, and the max_tokens it asked for when that was capped (else None)."""
    values = {**context.generation_defaults, **line.sampling}
    values.setdefault("seed", stable_seed(line.key))
    given = line.sampling.get("max_tokens")
    values["max_tokens"] = cap_max_tokens(
        values.get("max_tokens") or context.default_max_tokens, prompt_len, context.token_limit
    )
    asked = given if isinstance(given, int) and given > values["max_tokens"] else None
    if values.get("stop") and context.tokenizer is None:
        raise LineError(
            "stop strings need a tokenizer but the checkpoint has no tokenizer.json",
            "drop stop, or add tokenizer.json to the checkpoint",
        )
    try:
        return SamplingParams(**values), asked
    except UserError as err:
        raise LineError(
            err.cause.removeprefix("SamplingParams: "), err.fix or "fix the sampling fields"
        ) from None
    except TypeError as err:  # a value of a type SamplingParams cannot even compare
        raise LineError(f"a sampling field has the wrong type ({err})", "fix the sampling fields") from None


def _checked_ids(ids: list[int], context: ParseContext, where: str) -> list[int]:
    bad = [t for t in ids if not 0 <= t < context.vocab_size]
    if bad:
        raise LineError(
            f"{where} has ids outside the vocabulary [0, {context.vocab_size}): {bad[:5]}",
            "pass ids made by this checkpoint's tokenizer",
        )
    return ids


def _need_tokenizer(context: ParseContext, what: str) -> CheckpointTokenizer:
    if context.tokenizer is None:
        raise LineError(
            f"{what} needs a tokenizer but the checkpoint has no tokenizer.json",
            "pass prompt_token_ids, or add tokenizer.json to the checkpoint",
        )
    return context.tokenizer


def _text_ids(text: str, context: ParseContext) -> list[int]:
    ids = list(_need_tokenizer(context, "a text prompt").encode(text))
    if not ids:
        raise LineError("empty prompt (it encodes to no tokens)", "give a non-empty prompt")
    return ids


def _chat_ids(messages: list[dict], context: ParseContext) -> list[int]:
    tokenizer = _need_tokenizer(context, "a chat prompt (messages)")
    if getattr(tokenizer, "chat_template", None) is None:
        raise LineError(
            "messages need a chat template, but this checkpoint's tokenizer has none",
            "pass a plain prompt, or add chat_template to the checkpoint's tokenizer_config.json",
        )
    try:
        ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    except UserError as err:
        raise LineError(err.cause, err.fix or "fix the messages") from None
    if not ids:
        raise LineError("empty prompt (the chat template produced no tokens)", "give a non-empty message")
    return ids


def _check_context(ids: list[int], context: ParseContext) -> None:
    if len(ids) >= context.token_limit:
        raise LineError(
            f"prompt of {len(ids)} tokens does not fit {context.token_limit_text} "
            "(at least one must be left to generate)",
            f"shorten the prompt to at most {context.token_limit - 1} tokens",
        )


def parse_line(obj: Any, line_number: int, context: ParseContext) -> JobRequest:
    """Validate one decoded JSON line; LineError(cause, fix) when it is not a valid request."""
    line = parse_prompt_line(obj, line_number)
    if line.messages is not None:
        ids = _chat_ids(line.messages, context)
    elif isinstance(line.prompt, str):
        ids = _text_ids(line.prompt, context)
    else:
        ids = _checked_ids(line.prompt, context, "body.prompt" if line.api else "prompt_token_ids")
    _check_context(ids, context)
    sampling, asked = _sampling(line, context, len(ids))
    return JobRequest(line.key, line.id, line_number, ids, sampling, line.api, asked_max_tokens=asked)

"""One input line of a prompts JSONL file -> one validated `Request` (torch-free apart from SamplingParams).

Two line forms:
- native: `{"id": ..., "prompt": "..."}` or `"prompt_token_ids": [...]` or chat `"messages": [...]` (exactly
  one of the three), optional `max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop`, `ignore_eos`.
  A missing id becomes the line number.
- OpenAI Batch API: `{"custom_id": ..., "method": "POST", "url": "/v1/completions" | "/v1/chat/completions",
  "body": {...}}`; the body holds `prompt` (completions) or `messages` (chat) and the sampling fields
  (`max_tokens`, or `max_completion_tokens` for chat; `model`, `user`, `n` = 1 and `stream` = false are
  accepted and ignored).
`parse_line(obj, line_number, context) -> Request` raises `LineError(cause, fix)` for any bad line: unknown
field, wrong type, empty prompt, prompt at or beyond the model's context, max_tokens <= 0, bad sampling value.
A request's `max_tokens` is capped so that prompt + generation fits in the context (finish reason "length").
`Request.key` is unique per answer: `id:<json id>` or `custom_id:<json custom_id>`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from planner.errors import UserError
from runtime.sampling import SamplingParams

SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos")
PROMPT_FIELDS = ("prompt", "prompt_token_ids", "messages")
NATIVE_FIELDS = ("id",) + PROMPT_FIELDS + SAMPLING_FIELDS
BATCH_FIELDS = ("custom_id", "method", "url", "body")
BATCH_URLS = {"/v1/completions": "completions", "/v1/chat/completions": "chat.completions"}
BATCH_IGNORED_BODY_FIELDS = ("model", "user", "n", "stream")
CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")


class LineError(Exception):
    """A bad input line: `cause` and `fix`; the file scanner adds the path and line number."""

    def __init__(self, cause: str, fix: str):
        self.cause = cause
        self.fix = fix
        super().__init__(cause)


@dataclass(frozen=True)
class ParseContext:
    tokenizer: Any                  # CheckpointTokenizer or None (then only prompt_token_ids work)
    max_context: int                # spec.max_position_embeddings
    vocab_size: int
    default_max_tokens: int = 16


@dataclass(frozen=True)
class Request:
    key: str                        # unique answer key, see module docstring
    id: str | int                   # the id as given (native: id or line number; batch: custom_id)
    line_number: int
    prompt_token_ids: list[int]
    sampling: SamplingParams
    api: str | None = None          # None: native; "completions" | "chat.completions": Batch API line

    @property
    def is_batch_api(self) -> bool:
        return self.api is not None


def native_key(request_id: str | int) -> str:
    return "id:" + json.dumps(request_id)


def batch_key(custom_id: str) -> str:
    return "custom_id:" + json.dumps(custom_id)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unknown_fields(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        raise LineError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {where}",
                        f"remove {'them' if len(unknown) > 1 else 'it'}; allowed fields: {', '.join(allowed)}")


def stable_seed(key: str) -> int:
    """The seed of a request that gives none: fixed by its key, so a resumed job samples what it would have."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def _sampling(fields: dict, context: ParseContext, prompt_len: int, key: str) -> SamplingParams:
    values = {k: fields[k] for k in SAMPLING_FIELDS if k in fields and fields[k] is not None}
    values.setdefault("seed", stable_seed(key))
    max_tokens = values.get("max_tokens", context.default_max_tokens)
    if not _is_int(max_tokens) or max_tokens <= 0:
        raise LineError(f"max_tokens={max_tokens!r} must be a positive integer", "set max_tokens >= 1 or omit it")
    values["max_tokens"] = min(max_tokens, context.max_context - prompt_len)
    if values.get("stop") and context.tokenizer is None:
        raise LineError("stop strings need a tokenizer but the checkpoint has no tokenizer.json",
                        "drop stop, or add tokenizer.json to the checkpoint")
    try:
        return SamplingParams(**values)
    except UserError as err:
        raise LineError(err.cause.removeprefix("SamplingParams: "), err.fix or "fix the sampling fields") from None


def _token_ids(value: Any, context: ParseContext, field: str) -> list[int]:
    if not isinstance(value, list) or not all(_is_int(t) for t in value):
        raise LineError(f"{field} must be a list of integer token ids, got {type(value).__name__}",
                        f"pass {field} as [int, ...]")
    if not value:
        raise LineError(f"empty prompt ({field} is [])", "give at least one prompt token or drop the line")
    bad = [t for t in value if not 0 <= t < context.vocab_size]
    if bad:
        raise LineError(f"{field} has ids outside the vocabulary [0, {context.vocab_size}): {bad[:5]}",
                        "pass ids made by this checkpoint's tokenizer")
    return value


def _need_tokenizer(context: ParseContext, what: str) -> Any:
    if context.tokenizer is None:
        raise LineError(f"{what} needs a tokenizer but the checkpoint has no tokenizer.json",
                        "pass prompt_token_ids, or add tokenizer.json to the checkpoint")
    return context.tokenizer


def _text_ids(value: Any, context: ParseContext, field: str) -> list[int]:
    if not isinstance(value, str):
        raise LineError(f"{field} must be a string, got {type(value).__name__}",
                        f"pass {field} as a string (or prompt_token_ids as a list of ints)")
    if not value:
        raise LineError(f"empty prompt ({field} is \"\")", "give a non-empty prompt or drop the line")
    ids = list(_need_tokenizer(context, "a text prompt").encode(value))
    if not ids:
        raise LineError(f"empty prompt ({field} encodes to no tokens)", "give a non-empty prompt")
    return ids


def _message_content(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise LineError(f"messages[{index}].content must be a string or a list of text parts",
                    'use {"role": "user", "content": "..."}')


def _chat_ids(value: Any, context: ParseContext) -> list[int]:
    if not isinstance(value, list):
        raise LineError(f"messages must be a list of {{role, content}} objects, got {type(value).__name__}",
                        'pass "messages": [{"role": "user", "content": "..."}]')
    if not value:
        raise LineError("empty prompt (messages is [])", "give at least one message or drop the line")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES or "content" not in message:
            raise LineError(f"messages[{i}] is not a {{role, content}} object with role in {list(CHAT_ROLES)}",
                            'use {"role": "user", "content": "..."}')
        messages.append({**message, "content": _message_content(message["content"], i)})
    if not any(m["content"] for m in messages):
        raise LineError("empty prompt (every message content is empty)", "give a non-empty message")
    tokenizer = _need_tokenizer(context, "a chat prompt (messages)")
    if getattr(tokenizer, "chat_template", None) is None:
        raise LineError("messages need a chat template, but this checkpoint's tokenizer has none",
                        "pass a plain prompt, or add chat_template to the checkpoint's tokenizer_config.json")
    try:
        ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    except UserError as err:
        raise LineError(err.cause, err.fix or "fix the messages") from None
    if not ids:
        raise LineError("empty prompt (the chat template produced no tokens)", "give a non-empty message")
    return ids


def _check_context(ids: list[int], context: ParseContext) -> None:
    if len(ids) >= context.max_context:
        raise LineError(f"prompt of {len(ids)} tokens does not fit the model's context of {context.max_context} "
                        "positions (at least one must be left to generate)",
                        f"shorten the prompt to at most {context.max_context - 1} tokens")


def _native(obj: dict, line_number: int, context: ParseContext) -> Request:
    _unknown_fields(obj, NATIVE_FIELDS, "a prompt line")
    request_id = obj.get("id", line_number)
    if not (isinstance(request_id, str) or _is_int(request_id)):
        raise LineError(f"id must be a string or an integer, got {type(request_id).__name__}",
                        "use a string or integer id, or omit it (the line number is used)")
    given = [f for f in PROMPT_FIELDS if f in obj]
    if len(given) != 1:
        cause = "no prompt" if not given else f"several prompt fields ({', '.join(given)})"
        raise LineError(f"{cause}: a line needs exactly one of {', '.join(PROMPT_FIELDS)}",
                        'add "prompt": "..." (or prompt_token_ids / messages), only one of them')
    field = given[0]
    if field == "prompt":
        ids = _text_ids(obj[field], context, field)
    elif field == "prompt_token_ids":
        ids = _token_ids(obj[field], context, field)
    else:
        ids = _chat_ids(obj[field], context)
    _check_context(ids, context)
    key = native_key(request_id)
    return Request(key, request_id, line_number, ids, _sampling(obj, context, len(ids), key))


def _batch_body_fields(body: dict, api: str) -> dict:
    prompt_field = "messages" if api == "chat.completions" else "prompt"
    token_fields = ("max_tokens", "max_completion_tokens") if api == "chat.completions" else ("max_tokens",)
    allowed = (prompt_field,) + token_fields + tuple(f for f in SAMPLING_FIELDS if f != "max_tokens") \
        + BATCH_IGNORED_BODY_FIELDS
    _unknown_fields(body, allowed, f"the body of a {api} request")
    if body.get("n", 1) != 1:
        raise LineError(f"body.n={body['n']!r}: one completion per request is supported", "drop n or set it to 1")
    if body.get("stream", False) is not False:
        raise LineError("body.stream must be false in a batch job", "drop stream")
    if prompt_field not in body:
        raise LineError(f"the body of a {api} request has no {prompt_field}", f"add body.{prompt_field}")
    fields = {k: body[k] for k in SAMPLING_FIELDS if k in body}
    if "max_completion_tokens" in body:
        if "max_tokens" in body and body["max_tokens"] != body["max_completion_tokens"]:
            raise LineError("body has both max_tokens and max_completion_tokens, with different values",
                            "keep only max_completion_tokens")
        fields["max_tokens"] = body["max_completion_tokens"]
    return fields


def _batch(obj: dict, line_number: int, context: ParseContext) -> Request:
    _unknown_fields(obj, BATCH_FIELDS, "a Batch API line")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("a Batch API line needs a non-empty string custom_id", 'add "custom_id": "request-1"')
    if obj.get("method", "POST") != "POST":
        raise LineError(f"method={obj['method']!r} is not supported", 'use "method": "POST"')
    url = obj.get("url")
    api = BATCH_URLS.get(url) if isinstance(url, str) else None
    if api is None:
        raise LineError(f"url={obj.get('url')!r} is not a supported endpoint",
                        f"use one of {', '.join(BATCH_URLS)}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError("a Batch API line needs a body object", 'add "body": {"prompt": "..."}')
    fields = _batch_body_fields(body, api)
    if api == "chat.completions":
        ids = _chat_ids(body["messages"], context)
    elif isinstance(body["prompt"], list) and all(_is_int(t) for t in body["prompt"]):
        ids = _token_ids(body["prompt"], context, "body.prompt")
    elif isinstance(body["prompt"], list):
        raise LineError("body.prompt holds several prompts; one prompt per line is supported",
                        "split it into one line per prompt, each with its own custom_id")
    else:
        ids = _text_ids(body["prompt"], context, "body.prompt")
    _check_context(ids, context)
    key = batch_key(custom_id)
    return Request(key, custom_id, line_number, ids, _sampling(fields, context, len(ids), key), api)


def parse_line(obj: Any, line_number: int, context: ParseContext) -> Request:
    """Validate one decoded JSON line; LineError(cause, fix) when it is not a valid request."""
    if not isinstance(obj, dict):
        raise LineError(f"a line must be a JSON object, got {type(obj).__name__}",
                        'write one object per line: {"id": 1, "prompt": "..."}')
    if "custom_id" in obj or "body" in obj:
        return _batch(obj, line_number, context)
    return _native(obj, line_number, context)

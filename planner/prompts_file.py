"""The one parser of prompts JSONL files, torch-free: the planner's workload reader and the runtime's job input
both read lines through it (the runtime adds tokenisation, chat templates and context checks on top).

How it works: docs/design.md, `planner/prompts_file.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from planner.values import is_finite_number, is_int

GREEDY_EPSILON = 1e-5  # vLLM: a temperature below this is greedy

NATIVE_SAMPLING_FIELDS = (
    "max_tokens",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_tokens",
    "logprobs",
    "include_stop_str_in_output",
)
PROMPT_FIELDS = ("prompt", "prompt_token_ids", "messages")
BATCH_FIELDS = ("custom_id", "method", "url", "body")
BATCH_URLS = {"/v1/completions": "completions", "/v1/chat/completions": "chat.completions"}
# Body fields shared by both endpoints that map one to one onto SamplingParams (OpenAI's, then vLLM's extras).
BODY_SAMPLING_FIELDS = (
    "max_tokens",
    "n",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "min_p",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
    "stop_token_ids",
    "include_stop_str_in_output",
)
BODY_IGNORED_FIELDS = (
    "model",
    "user",
    "stream",
    "stream_options",
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
    "skip_special_tokens",
)
CHAT_ONLY_FIELDS = (
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
)
COMPLETION_ONLY_FIELDS = ("prompt", "logprobs", "echo", "best_of", "suffix")
UNSUPPORTED_BODY_FIELDS = (
    "logit_bias",
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
    "prompt_logprobs",
    "reasoning_effort",
)
CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for /v1/completions `logprobs`
MAX_TOP_LOGPROBS = 20  # and for chat `top_logprobs`


class LineError(Exception):
    """A bad input line: `cause` and `fix`; the file readers add the path and line number."""

    def __init__(self, cause: str, fix: str):
        self.cause = cause
        self.fix = fix
        super().__init__(cause)


@dataclass(frozen=True)
class PromptLine:
    line_number: int
    key: str  # unique answer key: native_key(id) or batch_key(custom_id)
    id: str | int  # the id as given (native: id or line number; batch: custom_id)
    api: str | None  # None: native; "completions" | "chat.completions": Batch API line
    prompt: str | list[int] | None  # text or token ids (None for chat)
    messages: list[dict] | None  # chat messages, each content a string
    sampling: dict[str, Any] = field(default_factory=dict)

    @property
    def max_tokens(self) -> int | None:
        return self.sampling.get("max_tokens")

    @property
    def n(self) -> int:
        return self.sampling.get("n", 1)

    def _number(self, name: str, default: float) -> float:
        value = self.sampling.get(name)
        return float(value) if is_finite_number(value) else default

    @property
    def is_greedy(self) -> bool:
        """Whether the engine picks the argmax (vLLM's default temperature 1.0 samples)."""
        return self._number("temperature", 1.0) < GREEDY_EPSILON

    @property
    def uses_top_p(self) -> bool:
        """Whether the engine sorts this line's logits (sampled with top_p < 1)."""
        return not self.is_greedy and self._number("top_p", 1.0) < 1.0


def native_key(request_id: str | int) -> str:
    return "id:" + json.dumps(request_id)


def batch_key(custom_id: str) -> str:
    return "custom_id:" + json.dumps(custom_id)


def decode_line(raw: bytes) -> object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LineError(f"the line is not valid UTF-8 (byte {err.start})", "save the file as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise LineError(
            f"malformed JSON: {err.msg} at column {err.colno}", "make the line one complete JSON object"
        ) from None
    except ValueError as err:  # e.g. an integer beyond Python's digit limit
        raise LineError(f"malformed JSON: {err}"[:200], "make the line one complete JSON object") from None
    except RecursionError:
        raise LineError("malformed JSON: nested too deeply", "make the line one flat JSON object") from None


def line_custom_id(obj: object) -> str | None:
    custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
    return custom_id if isinstance(custom_id, str) and custom_id else None


def _unknown_fields(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    unsupported = [k for k in obj if k in UNSUPPORTED_BODY_FIELDS]
    if unsupported:
        raise LineError(
            f"{', '.join(map(repr, unsupported))} in {where} is not supported by moelens",
            f"drop {', '.join(unsupported)}",
        )
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        raise LineError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {where}",
            f"remove {'them' if len(unknown) > 1 else 'it'}; allowed fields: {', '.join(allowed)}",
        )


def _check_counts(sampling: dict[str, Any]) -> dict[str, Any]:
    for name in ("max_tokens", "n"):
        value = sampling.get(name)
        if value is not None and (not is_int(value) or value <= 0):
            raise LineError(f"{name}={value!r} must be a positive integer", f"set {name} >= 1 or omit it")
    return {k: v for k, v in sampling.items() if v is not None}


def _token_ids(value: Any, where: str) -> list[int]:
    valid = isinstance(value, list) and all(is_int(t) for t in value)
    return _prompt(
        value, where, valid, "a list of integer token ids", "[int, ...]", "[]", "at least one prompt token"
    )


def _text(value: Any, where: str) -> str:
    valid = isinstance(value, str)
    return _prompt(value, where, valid, "a string", "a string (or token ids)", '""', "a non-empty prompt")


def _prompt(value: Any, where: str, valid: bool, kind: str, form: str, empty: str, least: str) -> Any:
    """`value` when of its kind and not empty; a LineError naming `where` otherwise."""
    if not valid:
        raise LineError(f"{where} must be {kind}, got {type(value).__name__}", f"pass {where} as {form}")
    if not value:
        raise LineError(f"empty prompt ({where} is {empty})", f"give {least} or drop the line")
    return value


def _message_content(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    raise LineError(
        f"messages[{index}].content must be a string or a list of text parts",
        'use {"role": "user", "content": "..."}',
    )


def _messages(value: Any) -> list[dict]:
    if not isinstance(value, list):
        raise LineError(
            f"messages must be a list of {{role, content}} objects, got {type(value).__name__}",
            'pass "messages": [{"role": "user", "content": "..."}]',
        )
    if not value:
        raise LineError("empty prompt (messages is [])", "give at least one message or drop the line")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES or "content" not in message:
            raise LineError(
                f"messages[{i}] is not a {{role, content}} object with role in {list(CHAT_ROLES)}",
                'use {"role": "user", "content": "..."}',
            )
        messages.append({**message, "content": _message_content(message["content"], i)})
    if not any(m["content"] for m in messages):
        raise LineError("empty prompt (every message content is empty)", "give a non-empty message")
    return messages


def _native(obj: dict, line_number: int) -> PromptLine:
    _unknown_fields(obj, ("id",) + PROMPT_FIELDS + NATIVE_SAMPLING_FIELDS, "a prompt line")
    request_id = obj.get("id", line_number)
    if not (isinstance(request_id, str) or is_int(request_id)):
        raise LineError(
            f"id must be a string or an integer, got {type(request_id).__name__}",
            "use a string or integer id, or omit it (the line number is used)",
        )
    given = [f for f in PROMPT_FIELDS if f in obj]
    if len(given) != 1:
        cause = "no prompt" if not given else f"several prompt fields ({', '.join(given)})"
        raise LineError(
            f"{cause}: a line needs exactly one of {', '.join(PROMPT_FIELDS)}",
            'add "prompt": "..." (or prompt_token_ids / messages), only one of them',
        )
    prompt, messages = None, None
    if given[0] == "prompt":
        value = obj["prompt"]
        prompt = _token_ids(value, "prompt") if isinstance(value, list) else _text(value, "prompt")
    elif given[0] == "prompt_token_ids":
        prompt = _token_ids(obj["prompt_token_ids"], "prompt_token_ids")
    else:
        messages = _messages(obj["messages"])
    sampling = _check_counts({k: obj[k] for k in NATIVE_SAMPLING_FIELDS if k in obj})
    return PromptLine(line_number, native_key(request_id), request_id, None, prompt, messages, sampling)


def _chat_sampling(body: dict) -> dict[str, Any]:
    sampling = {}
    if body.get("max_completion_tokens") is not None:
        if body.get("max_tokens") is not None and body["max_tokens"] != body["max_completion_tokens"]:
            raise LineError(
                "body has both max_tokens and max_completion_tokens, with different values",
                "keep only max_completion_tokens",
            )
        sampling["max_tokens"] = body["max_completion_tokens"]
    top = body.get("top_logprobs")
    if top is not None and (not is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise LineError(
            f"body.top_logprobs={top!r} must be an integer in [0, {MAX_TOP_LOGPROBS}]",
            "pass top_logprobs between 0 and 20",
        )
    if body.get("logprobs") not in (None, True, False):
        raise LineError(
            f"body.logprobs={body['logprobs']!r} must be true or false for chat", "pass true or false"
        )
    if top is not None and not body.get("logprobs"):
        raise LineError("body.top_logprobs needs body.logprobs = true", 'add "logprobs": true')
    if body.get("logprobs"):
        sampling["logprobs"] = top or 0
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise LineError(
            f'body.response_format={response_format!r:.60} is not supported (only {{"type": "text"}})',
            'drop response_format or use {"type": "text"}',
        )
    if body.get("tools") or body.get("tool_choice") not in (None, "none"):
        raise LineError("tools and tool_choice are not supported by moelens", "drop tools and tool_choice")
    return sampling


def _completion_sampling(body: dict) -> dict[str, Any]:
    sampling = {}
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if not is_int(logprobs) or not 0 <= logprobs <= MAX_COMPLETION_LOGPROBS:
            raise LineError(
                f"body.logprobs={logprobs!r} must be an integer in [0, {MAX_COMPLETION_LOGPROBS}]",
                "pass logprobs between 0 and 5, or omit it",
            )
        sampling["logprobs"] = logprobs
    if body.get("echo") not in (None, False):
        raise LineError("body.echo is not supported by moelens", "drop echo")
    if body.get("suffix") is not None:
        raise LineError("body.suffix is not supported by moelens", "drop suffix")
    if body.get("best_of") not in (None, body.get("n", 1)):
        raise LineError("body.best_of other than n is not supported by moelens", "drop best_of")
    return sampling


def _batch(obj: dict, line_number: int) -> PromptLine:
    _unknown_fields(obj, BATCH_FIELDS, "a Batch API line")
    custom_id = line_custom_id(obj)
    if custom_id is None:
        raise LineError("a Batch API line needs a non-empty string custom_id", 'add "custom_id": "request-1"')
    if obj.get("method", "POST") != "POST":
        raise LineError(f"method={obj['method']!r} is not supported", 'use "method": "POST"')
    url = obj.get("url")
    api = BATCH_URLS.get(url) if isinstance(url, str) else None
    if api is None:
        raise LineError(
            f"url={obj.get('url')!r} is not a supported endpoint", f"use one of {', '.join(BATCH_URLS)}"
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError("a Batch API line needs a body object", 'add "body": {"prompt": "..."}')
    chat = api == "chat.completions"
    own = CHAT_ONLY_FIELDS if chat else COMPLETION_ONLY_FIELDS
    _unknown_fields(body, own + BODY_SAMPLING_FIELDS + BODY_IGNORED_FIELDS, f"the body of a {api} request")
    if body.get("stream", False) not in (False, None):
        raise LineError("body.stream must be false in a batch job", "drop stream")
    prompt_field = "messages" if chat else "prompt"
    if prompt_field not in body:
        raise LineError(f"the body of a {api} request has no {prompt_field}", f"add body.{prompt_field}")
    sampling = {k: body[k] for k in BODY_SAMPLING_FIELDS if k in body}
    sampling.update(_chat_sampling(body) if chat else _completion_sampling(body))
    prompt, messages = None, None
    if chat:
        messages = _messages(body["messages"])
    elif (
        isinstance(body["prompt"], list)
        and body["prompt"]
        and all(isinstance(p, str) for p in body["prompt"])
    ):
        raise LineError(
            "body.prompt holds several prompts; one prompt per line is supported",
            "split it into one line per prompt, each with its own custom_id",
        )
    elif isinstance(body["prompt"], list):
        prompt = _token_ids(body["prompt"], "body.prompt")
    else:
        prompt = _text(body["prompt"], "body.prompt")
    return PromptLine(
        line_number, batch_key(custom_id), custom_id, api, prompt, messages, _check_counts(sampling)
    )


def parse_prompt_line(obj: Any, line_number: int) -> PromptLine:
    """Validate one decoded JSON line; LineError(cause, fix) when it is not a valid request."""
    if not isinstance(obj, dict):
        raise LineError(
            f"a line must be a JSON object, got {type(obj).__name__}",
            'write one object per line: {"id": 1, "prompt": "..."}',
        )
    if "custom_id" in obj or "body" in obj:
        return _batch(obj, line_number)
    return _native(obj, line_number)

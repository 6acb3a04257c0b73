"""Output lines of a job: one per input line, as JSON-ready dicts.

How it works: docs/design.md, `runtime/jobio/records.py`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from runtime.jobio.input_file import SkippedLine
from runtime.jobio.requests import JobRequest, batch_key, native_key
from runtime.sampling import GenerationState, Logprob


def record_key(record: dict) -> str:
    error = record.get("error")
    if isinstance(error, dict) and record.get("response") is None:
        return f"line:{error['line']}"
    if "custom_id" in record:
        return batch_key(record["custom_id"])
    return native_key(record["id"])


def _logprob_token_text(entry: Logprob) -> str:
    return entry.decoded_token or ""


def _chat_logprobs(state: GenerationState, top: int) -> dict:
    content = []
    for token, entry in zip(state.token_ids, state.logprobs):
        chosen = entry[token]
        best = sorted(
            (e for e in entry.values() if e.rank is not None and e.rank <= top), key=lambda e: e.rank
        )
        content.append(
            {
                "token": _logprob_token_text(chosen),
                "logprob": chosen.logprob,
                "bytes": list(_logprob_token_text(chosen).encode()),
                "top_logprobs": [
                    {
                        "token": _logprob_token_text(e),
                        "logprob": e.logprob,
                        "bytes": list(_logprob_token_text(e).encode()),
                    }
                    for e in best
                ],
            }
        )
    return {"content": content, "refusal": None}


def _completion_logprobs(state: GenerationState) -> dict:
    tokens, offsets, offset = [], [], 0
    for token, entry in zip(state.token_ids, state.logprobs):
        tokens.append(_logprob_token_text(entry[token]))
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [entry[t].logprob for t, entry in zip(state.token_ids, state.logprobs)],
        "top_logprobs": [
            {_logprob_token_text(e): e.logprob for e in entry.values()} for entry in state.logprobs
        ],
        "text_offset": offsets,
    }


def _choice(request: JobRequest, index: int, state: GenerationState) -> dict:
    choice: dict = {"index": index}
    asked = request.sampling.logprobs
    if request.api == "chat.completions":
        choice["message"] = {"role": "assistant", "content": state.text, "refusal": None}
        choice["logprobs"] = _chat_logprobs(state, asked) if asked is not None else None
    else:
        choice["text"] = state.text
        choice["logprobs"] = _completion_logprobs(state) if asked is not None else None
    choice.update(
        finish_reason=state.finish_reason, stop_reason=state.stop_reason, token_ids=list(state.token_ids)
    )
    return choice


def _usage(request: JobRequest, states: Sequence[GenerationState]) -> dict:
    prompt_tokens, completion_tokens = len(request.prompt_token_ids), sum(len(s.token_ids) for s in states)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _native_record(request: JobRequest, states: Sequence[GenerationState]) -> dict:
    first = states[0]
    record = {
        "id": request.id,
        "text": first.text,
        "token_ids": list(first.token_ids),
        "finish_reason": first.finish_reason,
        "stop_reason": first.stop_reason,
        "prompt_tokens": len(request.prompt_token_ids),
        "completion_tokens": len(first.token_ids),
    }
    if request.sampling.logprobs is not None:
        record["logprobs"] = [{str(t): e.logprob for t, e in entry.items()} for entry in first.logprobs]
        record["cumulative_logprob"] = first.cumulative_logprob
    if len(states) > 1:
        record["outputs"] = [
            {
                "index": i,
                "text": s.text,
                "token_ids": list(s.token_ids),
                "finish_reason": s.finish_reason,
                "stop_reason": s.stop_reason,
            }
            for i, s in enumerate(states)
        ]
        record["completion_tokens"] = sum(len(s.token_ids) for s in states)
    return record


def answer_record(request: JobRequest, states: Sequence[GenerationState], model_name: str = "") -> dict:
    if not request.is_batch_api:
        return _native_record(request, states)
    chat = request.api == "chat.completions"
    body = {
        "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [_choice(request, i, s) for i, s in enumerate(states)],
        "usage": _usage(request, states),
    }
    return {
        "id": "batch_req_" + uuid.uuid4().hex,
        "custom_id": request.id,
        "response": {"status_code": 200, "request_id": "req_" + uuid.uuid4().hex, "body": body},
        "error": None,
    }


def error_record(skipped: SkippedLine) -> dict:
    return {
        "id": "batch_req_" + uuid.uuid4().hex,
        "custom_id": skipped.custom_id,
        "response": None,
        "error": {
            "code": "invalid_request",
            "message": skipped.reason,
            "line": skipped.line_number,
            "param": None,
        },
    }

"""vLLM-shaped results of `LLM.generate` / `LLM.chat`, and the prompt dicts vLLM code passes in. Torch-free.

`RequestOutput(request_id, prompt, prompt_token_ids, prompt_logprobs, outputs, finished, metrics)` with one
`CompletionOutput(index, text, token_ids, cumulative_logprob, logprobs, finish_reason, stop_reason)` per
completion (n of them). `logprobs` is None unless asked for, else one `{token_id: Logprob}` per generated
token (the sampled token and the top ones); `cumulative_logprob` sums the sampled tokens' logprobs.
finish_reason: "stop" (EOS, a stop token id or a stop string; stop_reason the id or the string, None for
EOS) or "length" (max_tokens or the context). `TextPrompt` / `TokensPrompt` are vLLM's prompt dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from runtime.sampling import GenerationState, Logprob


class TextPrompt(TypedDict):
    prompt: str


class TokensPrompt(TypedDict, total=False):
    prompt_token_ids: list[int]
    prompt: str


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: None = None

    def finished(self) -> bool:
        return self.finish_reason is not None

    @classmethod
    def of(cls, index: int, state: GenerationState) -> CompletionOutput:
        return cls(
            index=index,
            text=state.text,
            token_ids=list(state.token_ids),
            cumulative_logprob=state.cumulative_logprob,
            logprobs=state.logprobs,
            finish_reason=state.finish_reason,
            stop_reason=state.stop_reason,
        )


@dataclass
class RequestMetrics:
    arrival_time: float  # time.time() when generate/chat was called
    finished_time: float  # when the batch holding the request finished
    num_generated_tokens: int = 0


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: None
    outputs: list[CompletionOutput]
    finished: bool = True
    metrics: RequestMetrics | None = None
    lora_request: None = None
    num_cached_tokens: int = 0
    encoder_prompt: None = field(default=None, repr=False)
    encoder_prompt_token_ids: None = field(default=None, repr=False)

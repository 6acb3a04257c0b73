"""The Python API, vLLM-style: `LLM(checkpoint_dir, plan=None).generate(prompts, SamplingParams(...))`.

Prompts: a string, a list of token ids, `{"prompt": str}` or `{"prompt_token_ids": [...]}`, or a list of
those. `sampling_params` is one SamplingParams for all prompts or a list with one per prompt. Returns one
`RequestOutput` per prompt, in order, with `.prompt`, `.prompt_token_ids`, `.token_ids`, `.text` and
`.finish_reason` ("stop": EOS or a stop string, "length": max_tokens). Generation stops at any EOS id
of the tokenizer, config.json or generation_config.json (unless ignore_eos).
`make_backend(checkpoint, plan)` is the one place that picks what runs the requests; it returns an object
with `run(states: list[GenerationState])`: the engine (runtime.engine) when a plan or EngineConfig is
given, else the reference forward.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import UserError
from runtime.sampling import GenerationState, SamplingParams


@dataclass(frozen=True)
class RequestOutput:
    index: int
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str


def make_backend(checkpoint: Any, plan: Any = None):
    """The engine when a plan (Plan, plan.yaml path or EngineConfig) is given, else the reference forward."""
    if plan is not None:
        from runtime.engine import Engine, EngineBackend, engine_config_for

        if isinstance(plan, (str, Path)):
            from planner.plan import Plan

            plan = Plan.load(plan)
        return EngineBackend(Engine(checkpoint, engine_config_for(plan)))
    from runtime.model.generation import ReferenceBackend
    from runtime.model.reference import ReferenceModel

    return ReferenceBackend(ReferenceModel(checkpoint.spec, checkpoint.weights))


def eos_token_ids(checkpoint: Any) -> frozenset[int]:
    ids: set[int] = set()
    tokenizer = getattr(checkpoint, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    for filename in ("config.json", "generation_config.json"):
        path = Path(checkpoint.dir) / filename
        if not path.is_file():
            continue
        value = json.loads(path.read_text()).get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _is_token_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def _as_prompt_list(prompts: Any) -> list[Any]:
    if isinstance(prompts, (str, dict)) or _is_token_list(prompts):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts:
        return list(prompts)
    raise UserError(f"prompts={prompts!r:.80} is not a prompt or a non-empty list of prompts",
                    "pass a string, a list of token ids, {'prompt': ...}, {'prompt_token_ids': [...]} or a list")


class LLM:
    def __init__(self, checkpoint: str | Path, plan: Any = None):
        from runtime.checkpoint import open_checkpoint

        self.checkpoint = open_checkpoint(checkpoint)
        self.spec = self.checkpoint.spec
        self.tokenizer = self.checkpoint.tokenizer
        self.plan = plan
        self.eos_token_ids = eos_token_ids(self.checkpoint)
        self.backend = make_backend(self.checkpoint, plan)

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise UserError(f"{self.checkpoint.dir} has no tokenizer, so text prompts cannot be encoded",
                            "add tokenizer.json to the checkpoint or pass prompt token ids")
        return list(self.tokenizer.encode(text))

    def _detokenize(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids))

    def _prompt_tokens(self, prompt: Any) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            text, ids = prompt, self.encode(prompt)
        elif isinstance(prompt, dict):
            unknown = set(prompt) - {"prompt", "prompt_token_ids"}
            if unknown or not prompt:
                raise UserError(f"prompt dict keys {sorted(prompt)} are not understood",
                                "use {'prompt': text} or {'prompt_token_ids': [ids]}")
            if "prompt_token_ids" in prompt:
                text, ids = prompt.get("prompt"), prompt["prompt_token_ids"]
            else:
                text, ids = prompt["prompt"], self.encode(prompt["prompt"])
        else:
            text, ids = None, prompt
        if not _is_token_list(ids):
            raise UserError(f"prompt {prompt!r:.80} has no tokens (or non-integer ones)",
                            "pass a non-empty text or a non-empty list of integer token ids")
        bad = [t for t in ids if not 0 <= t < self.spec.vocab_size]
        if bad:
            raise UserError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.spec.vocab_size})",
                            "pass token ids produced by this checkpoint's tokenizer")
        return text, list(ids)

    def generate(self, prompts: Any, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 ) -> list[RequestOutput]:
        prompt_list = _as_prompt_list(prompts)
        params_list = self._params_per_prompt(sampling_params, len(prompt_list))
        detokenize = self._detokenize if self.tokenizer is not None else None
        texts, states = [], []
        for prompt, params in zip(prompt_list, params_list):
            text, ids = self._prompt_tokens(prompt)
            if len(ids) + params.max_tokens > self.spec.max_position_embeddings:
                raise UserError(f"prompt of {len(ids)} tokens + max_tokens {params.max_tokens} exceeds the "
                                f"model's {self.spec.max_position_embeddings} positions",
                                "shorten the prompt or lower max_tokens")
            texts.append(text)
            states.append(GenerationState(ids, params, self.eos_token_ids, detokenize))
        self.backend.run(states)
        return [RequestOutput(index=i, prompt=text, prompt_token_ids=state.prompt_token_ids,
                              token_ids=list(state.token_ids), text=state.text,
                              finish_reason=state.finish_reason)
                for i, (text, state) in enumerate(zip(texts, states))]

    @staticmethod
    def _params_per_prompt(sampling_params: Any, count: int) -> list[SamplingParams]:
        if sampling_params is None:
            return [SamplingParams()] * count
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * count
        params = list(sampling_params)
        if len(params) != count or not all(isinstance(p, SamplingParams) for p in params):
            raise UserError(f"got {len(params)} sampling params for {count} prompts",
                            "pass one SamplingParams, or a list with one per prompt")
        return params

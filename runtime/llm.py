"""The Python API, vLLM's offline one: `LLM(model=...).generate(prompts, SamplingParams(...))` and `.chat(...)`.

How it works: docs/design.md, `runtime/llm.py`.
"""

from __future__ import annotations

import itertools
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner.errors import UserError
from planner.values import is_int
from runtime.outputs import CompletionOutput, RequestMetrics, RequestOutput
from runtime.sampling import GenerationState, SamplingParams, cap_max_tokens

if TYPE_CHECKING:
    from planner.plans.plan import Plan
    from runtime.checkpoint import Checkpoint, CheckpointTokenizer
    from runtime.engine import EngineBackend, EngineConfig
    from runtime.model.generation import ReferenceBackend

IGNORED_ENGINE_ARGS = {
    "gpu_memory_utilization",
    "enforce_eager",
    "disable_log_stats",
    "swap_space",
    "max_seq_len_to_capture",
    "disable_custom_all_reduce",
    "enable_prefix_caching",
    "compilation_config",
    "tokenizer_mode",
    "disable_async_output_proc",
    "block_size",
}
DEFAULT_ENGINE_ARGS = {
    "tokenizer": None,
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 1,
    "dtype": "auto",
    "quantization": None,
    "revision": None,
    "tokenizer_revision": None,
    "cpu_offload_gb": 0,
    "hf_token": None,
    "hf_overrides": None,
    "task": "auto",
    "skip_tokenizer_init": False,
    "kv_cache_dtype": "auto",
}


class CappedMaxTokensWarning(UserWarning):
    """Some requests asked for more tokens than fit; they were capped (finish reason "length")."""


def make_backend(
    checkpoint: Checkpoint,
    plan: Plan | EngineConfig | str | Path | None = None,
    max_model_len: int | None = None,
) -> EngineBackend | ReferenceBackend:
    """The engine for a Plan (or plan.yaml path, or EngineConfig); the reference forward for plan=None."""
    if plan is None:
        from runtime.model.generation import ReferenceBackend
        from runtime.model.reference import ReferenceModel

        weights = checkpoint.weights
        dequantized = getattr(weights, "dequantized", None)  # quantized weights: float on access
        return ReferenceBackend(ReferenceModel(checkpoint.spec, dequantized() if dequantized else weights))
    from runtime.engine import Engine, EngineBackend, engine_config_for

    if isinstance(plan, (str, Path)):
        from planner.plans.plan import Plan

        plan = Plan.load(plan)
    overrides = {"max_model_len": max_model_len} if max_model_len else {}
    return EngineBackend(Engine(checkpoint, engine_config_for(plan, overrides)))


def _is_token_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(is_int(t) for t in value)


def _as_prompt_list(prompts: Any) -> list[Any]:
    if isinstance(prompts, (str, dict)) or _is_token_list(prompts):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts:
        return list(prompts)
    raise UserError(
        f"prompts={prompts!r:.80} is not a prompt or a non-empty list of prompts",
        "pass a string, a list of token ids, {'prompt': ...}, {'prompt_token_ids': [...]} or a list",
    )


def _check_engine_args(engine_args: dict) -> None:
    for name, value in engine_args.items():
        if name in IGNORED_ENGINE_ARGS or (
            name in DEFAULT_ENGINE_ARGS and value == DEFAULT_ENGINE_ARGS[name]
        ):
            continue
        if name in DEFAULT_ENGINE_ARGS:
            raise UserError(
                f"LLM: {name}={value!r:.60} is not supported by moelens",
                f"drop {name} (moelens runs the checkpoint as stored, on one machine)",
            )
        raise UserError(
            f"LLM: argument {name!r} is not supported by moelens (it never runs code from a "
            "checkpoint, and runs on one machine)",
            "drop it; moelens takes model, plan, profile, kv_gb, max_num_seqs, max_model_len, seed, "
            "generation_config and reference",
        )


class LLM:
    def __init__(
        self,
        model: str | Path,
        *,
        plan: Plan | EngineConfig | str | Path | None = None,
        profile: str | None = None,
        kv_gb: float | None = None,
        max_num_seqs: int | None = None,
        max_model_len: int | None = None,
        seed: int | None = None,
        generation_config: str | None = "auto",
        reference: bool = False,
        **engine_args: Any,
    ):
        from runtime.checkpoint import CheckpointGeneration, open_checkpoint
        from runtime.checkpoint.generation import read_generation_config

        _check_engine_args(engine_args)
        self.checkpoint = open_checkpoint(model)
        self.spec = self.checkpoint.spec
        self.tokenizer = self.checkpoint.tokenizer
        self.max_model_len = min(
            max_model_len or self.spec.max_position_embeddings, self.spec.max_position_embeddings
        )
        self.generation = CheckpointGeneration.of(self.checkpoint)
        self.eos_token_ids = self.generation.eos_token_ids
        self.generation_defaults = read_generation_config(generation_config, Path(self.checkpoint.dir))
        self._seeds = random.Random(seed) if seed is not None else random.SystemRandom()
        self._request_counter = itertools.count()
        if reference:
            if plan is not None:
                raise UserError("LLM: both plan and reference=True given", "pass one of them")
        elif plan is None:
            from runtime.auto_plan import auto_plan, guess_workload

            plan = auto_plan(
                self.spec, str(model), guess_workload(self.max_model_len), kv_gb, profile, max_num_seqs
            )
        self.plan = plan
        self.backend = make_backend(self.checkpoint, plan, max_model_len)

    @property
    def token_limit(self) -> int:
        """The most tokens one request may span, prompt + generation."""
        return min(self.max_model_len, getattr(self.backend, "token_limit", self.max_model_len))

    # ----- vLLM's accessors -----
    def get_tokenizer(self) -> CheckpointTokenizer | None:
        return self.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        return SamplingParams().with_defaults(self.generation_defaults)

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise UserError(
                f"{self.checkpoint.dir} has no tokenizer, so text prompts cannot be encoded",
                "add tokenizer.json to the checkpoint or pass prompt token ids",
            )
        return list(self.tokenizer.encode(text))

    # ----- generation -----
    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        lora_request: Any = None,
        priority: Any = None,
    ) -> list[RequestOutput]:
        if lora_request is not None or priority is not None:
            raise UserError("LLM.generate: lora_request and priority are not supported", "drop them")
        prompt_list = _as_prompt_list(prompts)
        return self._run(
            [self._prompt_tokens(p) for p in prompt_list],
            self._params_per_prompt(sampling_params, len(prompt_list)),
        )

    def chat(
        self,
        messages: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: Any = None,
        chat_template: str | None = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: Any = None,
        chat_template_kwargs: Any = None,
        mm_processor_kwargs: Any = None,
    ) -> list[RequestOutput]:
        unsupported = {
            "lora_request": lora_request,
            "tools": tools,
            "chat_template_kwargs": chat_template_kwargs,
            "mm_processor_kwargs": mm_processor_kwargs,
            "continue_final_message": continue_final_message or None,
        }
        given = [name for name, value in unsupported.items() if value is not None]
        if given:
            raise UserError(f"LLM.chat: {', '.join(given)} not supported by moelens", "drop them")
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tokenizer = self._chat_tokenizer(chat_template)
        prompts = []
        for conversation in conversations:
            if (
                not isinstance(conversation, (list, tuple))
                or not conversation
                or not all(isinstance(m, dict) and "role" in m and "content" in m for m in conversation)
            ):
                raise UserError(
                    "LLM.chat: a conversation must be a non-empty list of {role, content} dicts",
                    'pass [{"role": "user", "content": "..."}] or a list of such lists',
                )
            text = tokenizer.apply_chat_template(
                list(conversation), add_generation_prompt=add_generation_prompt
            )
            prompts.append(self._checked_prompt(text, tokenizer.encode(text, add_special_tokens=False)))
        return self._run(prompts, self._params_per_prompt(sampling_params, len(prompts)))

    # ----- internals -----
    def _chat_tokenizer(self, chat_template: str | None) -> Any:
        if self.tokenizer is None:
            raise UserError(
                f"{self.checkpoint.dir} has no tokenizer, so chat messages cannot be rendered",
                "add tokenizer.json (and a chat template) to the checkpoint",
            )
        return replace(self.tokenizer, chat_template=chat_template) if chat_template else self.tokenizer

    def _prompt_tokens(self, prompt: Any) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return self._checked_prompt(prompt, self.encode(prompt))
        if isinstance(prompt, dict):
            unknown = set(prompt) - {"prompt", "prompt_token_ids"}
            if unknown or not prompt:
                raise UserError(
                    f"prompt dict keys {sorted(prompt)} are not understood",
                    "use {'prompt': text} (TextPrompt) or {'prompt_token_ids': [ids]} (TokensPrompt)",
                )
            if "prompt_token_ids" in prompt:
                return self._checked_prompt(prompt.get("prompt"), prompt["prompt_token_ids"])
            return self._checked_prompt(prompt["prompt"], self.encode(prompt["prompt"]))
        return self._checked_prompt(None, prompt)

    def _checked_prompt(self, text: str | None, ids: Any) -> tuple[str | None, list[int]]:
        if not _is_token_list(ids):
            raise UserError(
                f"prompt {text or ids!r:.80} has no tokens (or non-integer ones)",
                "pass a non-empty text or a non-empty list of integer token ids",
            )
        bad = [t for t in ids if not 0 <= t < self.spec.vocab_size]
        if bad:
            raise UserError(
                f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.spec.vocab_size})",
                "pass token ids produced by this checkpoint's tokenizer",
            )
        limit = self.token_limit
        if len(ids) >= limit:
            where = (
                f"the model's {limit} positions"
                if limit == self.max_model_len
                else f"the {limit} tokens the plan's KV cache holds"
            )
            raise UserError(
                f"a prompt of {len(ids)} tokens leaves no room to generate within {where}",
                f"shorten it to at most {limit - 1} tokens",
            )
        return text, list(ids)

    def _states(self, ids: list[int], params: SamplingParams) -> list[GenerationState]:
        max_tokens = (
            self.token_limit - len(ids)
            if params.max_tokens is None
            else cap_max_tokens(params.max_tokens, len(ids), self.token_limit)
        )
        return [
            self.generation.state(
                ids,
                params,
                max_tokens=max_tokens,
                seed=params.seed + i if params.seed is not None else self._seeds.getrandbits(63),
            )
            for i in range(params.n)
        ]

    def _run(
        self, prompts: list[tuple[str | None, list[int]]], params: list[SamplingParams]
    ) -> list[RequestOutput]:
        arrival = time.time()
        per_request = [self._states(ids, p) for (_, ids), p in zip(prompts, params)]
        capped = sum(
            p.max_tokens is not None and len(ids) + p.max_tokens > self.token_limit
            for (_, ids), p in zip(prompts, params)
        )
        if capped:
            warnings.warn(
                f"{capped} of {len(prompts)} requests ask for more tokens than one request can hold "
                f"({self.token_limit}); their max_tokens is capped to fit and they end with "
                'finish_reason "length"',
                CappedMaxTokensWarning,
                stacklevel=3,
            )
        self.backend.run([state for states in per_request for state in states])
        finished = time.time()
        return [
            RequestOutput(
                request_id=str(next(self._request_counter)),
                prompt=text,
                prompt_token_ids=ids,
                prompt_logprobs=None,
                outputs=[CompletionOutput.of(i, s) for i, s in enumerate(states)],
                finished=True,
                metrics=RequestMetrics(arrival, finished, sum(len(s.token_ids) for s in states)),
            )
            for (text, ids), states in zip(prompts, per_request)
        ]

    def _params_per_prompt(self, sampling_params: Any, count: int) -> list[SamplingParams]:
        if sampling_params is None:
            return [self.get_default_sampling_params()] * count
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * count
        params = list(sampling_params)
        if len(params) != count or not all(isinstance(p, SamplingParams) for p in params):
            raise UserError(
                f"got {len(params)} sampling params for {count} prompts",
                "pass one SamplingParams, or a list with one per prompt",
            )
        return params

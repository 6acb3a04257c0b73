"""What a checkpoint says about generating text: its EOS ids, its detokenizer, and new generation states.

`CheckpointGeneration.of(checkpoint)`: `eos_token_ids` (the tokenizer's EOS plus every `eos_token_id` of
config.json and generation_config.json; a checkpoint without tokenizer or files has only what it has),
`detokenize` (token ids -> text; None without a tokenizer) and `state(prompt_ids, params, ...)`, the one way
every caller (`runtime.LLM`, `runtime execute`, cluster workers, the engine for bare requests) starts a
completion. The engine code itself never detokenizes.
`read_generation_config(source, checkpoint_dir)`: sampling defaults from generation_config.json ("auto": the
checkpoint's; "vllm" or None: none; else a directory holding one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from planner.errors import UserError
from runtime.sampling import GenerationState, SamplingParams, generation_config_defaults

if TYPE_CHECKING:
    from runtime.checkpoint.loader import Checkpoint


def eos_token_ids(checkpoint: Checkpoint) -> frozenset[int]:
    ids: set[int] = set()
    tokenizer = getattr(checkpoint, "tokenizer", None)
    if tokenizer is not None:
        ids.update(tokenizer.eos_token_ids)
    directory = getattr(checkpoint, "dir", None)  # None: weights built in memory, no files
    for filename in ("config.json", "generation_config.json") if directory is not None else ():
        path = Path(directory) / filename
        if not path.is_file():
            continue
        value = json.loads(path.read_text()).get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    return frozenset(ids)


@dataclass(frozen=True)
class CheckpointGeneration:
    eos_token_ids: frozenset[int]
    detokenize: Callable[[Sequence[int]], str] | None

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> CheckpointGeneration:
        tokenizer = getattr(checkpoint, "tokenizer", None)
        detokenize = (lambda ids: tokenizer.decode(list(ids))) if tokenizer is not None else None
        return cls(eos_token_ids(checkpoint), detokenize)

    def state(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> GenerationState:
        return GenerationState(
            list(prompt_token_ids),
            params,
            self.eos_token_ids,
            self.detokenize,
            max_tokens=max_tokens,
            seed=seed,
        )


def read_generation_config(source: str | Path | None, checkpoint_dir: Path) -> dict:
    if source in (None, "vllm"):
        return {}
    directory = checkpoint_dir if source == "auto" else Path(source)
    path = directory / "generation_config.json"
    if source != "auto" and not path.is_file():
        raise UserError(
            f"generation_config={source!r}: no generation_config.json there",
            'pass "auto" (the checkpoint\'s), "vllm" (no defaults) or a directory holding one',
        )
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot read {path}: {err}", "fix the file or pass generation_config='vllm'"
        ) from None
    return generation_config_defaults(config if isinstance(config, dict) else {})

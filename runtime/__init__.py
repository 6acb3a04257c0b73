"""moelens runtime: checkpoints, model layers, generation, engine, profiler and the `runtime` command.

`from runtime import LLM, SamplingParams` is the Python API, vLLM's offline one (see `runtime.llm`); with
`RequestOutput`, `CompletionOutput`, `TextPrompt` and `TokensPrompt` (`runtime.outputs`). The names are imported
lazily so that importing `runtime` (and `runtime --help`) does not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.llm import LLM
    from runtime.outputs import CompletionOutput, RequestOutput, TextPrompt, TokensPrompt
    from runtime.sampling import SamplingParams

__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams", "TextPrompt", "TokensPrompt"]

_LAZY = {
    "LLM": "runtime.llm",
    "SamplingParams": "runtime.sampling",
    **{
        name: "runtime.outputs"
        for name in ("CompletionOutput", "RequestOutput", "TextPrompt", "TokensPrompt")
    },
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")

"""moelens runtime: checkpoints, model layers, generation, engine, profiler and the `runtime` command.

`from runtime import LLM, SamplingParams` is the Python API (see `runtime.llm`). Both names are imported
lazily so that importing `runtime` (and `runtime --help`) does not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.llm import LLM, RequestOutput
    from runtime.sampling import SamplingParams

__all__ = ["LLM", "RequestOutput", "SamplingParams"]

_LAZY = {"LLM": "runtime.llm", "RequestOutput": "runtime.llm", "SamplingParams": "runtime.sampling"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")

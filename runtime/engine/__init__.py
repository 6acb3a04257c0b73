"""The module-based batching engine (see engine.py for the API, forward.py for the execution order).

`Engine(checkpoint, EngineConfig)` + `engine.run(requests, on_finish) -> RunStats`; `EngineConfig.from_plan`
reads a Plan's decisions. Importing this package imports torch.
"""

from __future__ import annotations

from runtime.engine.config import EngineConfig
from runtime.engine.engine import Engine, EngineBackend, engine_config_for
from runtime.engine.scheduler import Request
from runtime.engine.stats import Completion, RunStats

__all__ = [
    "Completion",
    "Engine",
    "EngineBackend",
    "EngineConfig",
    "Request",
    "RunStats",
    "engine_config_for",
]

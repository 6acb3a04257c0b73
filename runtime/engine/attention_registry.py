"""`ATTENTION_BACKENDS`: `spec.attention` -> the engine's backend class (interface in `attention_backend`)."""

from __future__ import annotations

from runtime.engine.attention_backend import GQABackend
from runtime.engine.mla_layer import MLABackend

ATTENTION_BACKENDS: dict[str, type] = {
    "gqa": GQABackend,
    "mla": MLABackend,
}

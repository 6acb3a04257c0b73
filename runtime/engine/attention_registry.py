"""`ATTENTION_BACKENDS`: `spec.attention` -> the engine's backend class (the `AttentionBackend` Protocol)."""

from __future__ import annotations

from runtime.engine.attention_backend import AttentionBackend, GQABackend
from runtime.engine.mla_layer import MLABackend

ATTENTION_BACKENDS: dict[str, type[AttentionBackend]] = {
    "gqa": GQABackend,
    "mla": MLABackend,
}

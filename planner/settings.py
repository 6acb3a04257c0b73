"""Every `MOELENS_*` environment variable: its name, meaning and reader, here only (an empty value is unset)."""

from __future__ import annotations

import os

HOME = "MOELENS_HOME"  # the per-user data directory (planner.locations)
MODELS_DIR = "MOELENS_MODELS_DIR"  # the user's model-spec folder
PROFILES_DIR = "MOELENS_PROFILES_DIR"  # the user's profile folder
ATTENTION_BACKEND = "MOELENS_ATTENTION_BACKEND"  # auto | reference | an ISA of runtime.attention.kernel
GROUPED_EXPERTS = "MOELENS_GROUPED_EXPERTS"  # 1 / 0: routed experts as grouped GEMMs or the per-expert loop
BENCH_DIR = "MOELENS_BENCH_DIR"  # where the benchmarks keep their checkpoints
BIG_TESTS = "MOELENS_BIG"  # 1: run the tests marked big


def setting(name: str) -> str | None:
    """The variable's value, None when unset or empty."""
    return os.environ.get(name) or None


def attention_backend_setting() -> str | None:
    return setting(ATTENTION_BACKEND)


def grouped_experts_setting() -> bool | None:
    """True / False when MOELENS_GROUPED_EXPERTS says 1 / anything else, None when unset."""
    value = setting(GROUPED_EXPERTS)
    return None if value is None else value == "1"


def big_tests() -> bool:
    return setting(BIG_TESTS) == "1"

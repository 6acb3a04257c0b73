"""Shared pytest setup: tests marked `big` (gigabytes of disk or memory) run only with MOELENS_BIG=1."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("MOELENS_BIG") == "1":
        return
    skip_big = pytest.mark.skip(reason="big test: set MOELENS_BIG=1 to run it")
    for item in items:
        if "big" in item.keywords:
            item.add_marker(skip_big)

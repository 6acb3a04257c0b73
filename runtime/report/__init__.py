"""The report of a `runtime execute` run: predicted against achieved (torch-free).

`build_report(...)` -> report dict (report.json; keys in `runtime.report.build`), `format_report(report)`
and `throughput_line(report)` print it; `runtime.report.metrics` holds the S-MBU / S-MFU math and the
`ContextTally` that `runtime execute` fills from finished requests. `write_report(path, report)` writes
the JSON atomically (`-`: standard output).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from planner.outputs import write_text_output
from runtime.report.build import build_report, relative_error
from runtime.report.metrics import ContextTally, sparse_utilisation
from runtime.report.table import format_report, throughput_line

__all__ = [
    "ContextTally",
    "build_report",
    "format_report",
    "relative_error",
    "sparse_utilisation",
    "throughput_line",
    "write_report",
]


def _strict_json(value: Any) -> Any:
    """Infinities and NaNs (an unbounded prediction) become null, so the file is standard JSON."""
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Whole or not at all (`planner.outputs.write_text_output`); `-` is standard output."""
    write_text_output(path, json.dumps(_strict_json(report), indent=1, allow_nan=False) + "\n")
    return Path(path)

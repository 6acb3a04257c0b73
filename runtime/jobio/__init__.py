"""Job input and output for `runtime execute`: prompts JSONL parsing and validation, resumable output.

`requests`: one line -> `JobRequest`; `input_file`: `scan_input` (validate the whole file up front) and
`iter_requests` (stream it into the engine); `writer`: `JobOutput` (append-only output + job state, resume); `opening.open_job`: the start of every job.
"""

from __future__ import annotations

from runtime.jobio.input_file import InputScan, SkippedLine, iter_requests, scan_input
from runtime.jobio.opening import file_sha256, open_job
from runtime.jobio.requests import JobRequest, LineError, ParseContext, parse_line
from runtime.jobio.writer import JobIdentity, JobOutput, check_output_writable, state_path

__all__ = [
    "InputScan",
    "JobIdentity",
    "JobOutput",
    "LineError",
    "ParseContext",
    "JobRequest",
    "SkippedLine",
    "check_output_writable",
    "file_sha256",
    "iter_requests",
    "open_job",
    "parse_line",
    "scan_input",
    "state_path",
]

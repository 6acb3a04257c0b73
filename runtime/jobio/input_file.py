"""A prompts JSONL file, validated whole before any work starts, then streamed into the engine.

How it works: docs/design.md, `runtime/jobio/input_file.py`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from planner.errors import UserError
from planner.prompts_file import decode_line, line_custom_id
from runtime.jobio.requests import JobRequest, LineError, ParseContext, parse_line

ON_ERROR_CHOICES = ("fail", "skip", "record")


@dataclass(frozen=True)
class SkippedLine:
    line_number: int
    reason: str
    custom_id: str | None = None  # the line's custom_id when it has one (for its error record)

    @property
    def key(self) -> str:
        """The answer key of its error record (`writer.record_key`)."""
        return f"line:{self.line_number}"


@dataclass
class InputScan:
    path: Path
    sha256: str = ""
    num_requests: int = 0
    num_lines: int = 0
    prompt_tokens: int = 0
    max_prompt_tokens: int = 0
    requested_output_tokens: int = 0  # sum of n x max_tokens after capping to the token limit
    capped_requests: int = 0  # lines whose explicit max_tokens was capped to the token limit
    skipped: list[SkippedLine] = field(default_factory=list)

    @property
    def skipped_line_numbers(self) -> frozenset[int]:
        return frozenset(s.line_number for s in self.skipped)


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as f:
            yield from enumerate(f, start=1)
    except OSError as err:
        raise UserError(
            f"cannot read the input file {path}: {err.strerror or err}",
            "pass --input an existing, readable JSONL file",
        ) from None


def _parse(raw: bytes, line_number: int, context: ParseContext) -> JobRequest | None:
    if not raw.strip():
        return None
    return parse_line(decode_line(raw), line_number, context)


def _custom_id(raw: bytes) -> str | None:
    try:
        return line_custom_id(decode_line(raw))
    except LineError:
        return None


def _line_error(path: Path, line_number: int, err: LineError) -> UserError:
    return UserError(f"{path}, line {line_number}: {err.cause}", err.fix)


def scan_input(path: str | Path, context: ParseContext, on_error: str = "fail") -> InputScan:
    """Validate the whole file; see the module docstring."""
    if on_error not in ON_ERROR_CHOICES:
        raise UserError(
            f"--on-error {on_error!r} is not one of {list(ON_ERROR_CHOICES)}", "pass fail, skip or record"
        )
    path = Path(path)
    if not path.is_file():
        raise UserError(f"the input file {path} does not exist", "pass --input an existing JSONL file")
    scan = InputScan(path=path)
    digest = hashlib.sha256()
    seen: dict[str, int] = {}
    for line_number, raw in _raw_lines(path):
        digest.update(raw)
        scan.num_lines = line_number
        try:
            request = _parse(raw, line_number, context)
            if request is None:
                continue
            if request.key in seen:
                name = "custom_id" if request.is_batch_api else "id"
                raise LineError(
                    f"duplicate {name} {request.id!r} (first on line {seen[request.key]})",
                    f"give every line a unique {name}",
                )
        except LineError as err:
            if on_error == "fail":
                raise _line_error(path, line_number, err) from None
            scan.skipped.append(SkippedLine(line_number, err.cause, _custom_id(raw)))
            continue
        seen[request.key] = line_number
        scan.num_requests += 1
        scan.prompt_tokens += len(request.prompt_token_ids)
        scan.max_prompt_tokens = max(scan.max_prompt_tokens, len(request.prompt_token_ids))
        scan.requested_output_tokens += request.sampling.max_tokens * request.sampling.n
        scan.capped_requests += request.asked_max_tokens is not None
    scan.sha256 = digest.hexdigest()
    if scan.num_requests == 0 and not (on_error == "record" and scan.skipped):
        reason = f" ({len(scan.skipped)} bad lines skipped)" if scan.skipped else ""
        raise UserError(
            f"the input file {path} holds no valid prompts{reason}",
            'write one JSON object per line, e.g. {"id": 1, "prompt": "Hello"}',
        )
    return scan


def iter_requests(
    path: str | Path,
    context: ParseContext,
    scan: InputScan,
    skip_keys: frozenset[str] | set[str] = frozenset(),
) -> Iterator[JobRequest]:
    """Yield the scan's valid requests in file order, leaving out `skip_keys`."""
    path = Path(path)
    skipped = scan.skipped_line_numbers
    for line_number, raw in _raw_lines(path):
        if line_number in skipped:
            continue
        try:
            request = _parse(raw, line_number, context)
        except LineError as err:
            raise UserError(
                f"{path} changed while the job ran (line {line_number}: {err.cause})",
                "do not edit the input during a job; rerun the command to resume",
            ) from None
        if request is not None and request.key not in skip_keys:
            yield request

"""The job's output JSONL and its state file: every answer written whole, once, and resumable after a crash.
Each answer is one complete line written with one `os.write`; a crash leaves whole lines plus at most one torn
tail, which a resume (same input and plan) cuts off.

How it works: docs/design.md, `runtime/jobio/writer.py`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from planner.errors import UserError
from planner.outputs import DISK_FULL_ERRNOS, check_output_path, disk_full_error, is_stdout
from runtime.jobio.input_file import SkippedLine
from runtime.jobio.records import answer_record, error_record, record_key
from runtime.jobio.requests import JobRequest
from runtime.sampling import GenerationState

STATE_SCHEMA_VERSION = 1
TAIL_CHUNK = 1 << 16


@dataclass(frozen=True)
class JobIdentity:
    input_sha256: str
    plan_sha256: str
    num_requests: int


def state_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".state.json")


def check_output_writable(path: str | Path, inputs: tuple = ()) -> None:
    """UserError unless `path` can be created or appended to without touching `inputs`; creates nothing."""
    check_output_path(path, "--output", inputs)
    if is_stdout(path):
        return
    target = state_path(path)
    if target.exists() and not os.access(target, os.W_OK):
        raise UserError(
            f"{target} exists and is not writable", "pass --output a path in a writable directory"
        )


def _read_state(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state_atomically(path: Path, state: dict) -> None:
    temp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with temp.open("w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def truncate_torn_tail(path: Path) -> int:
    """Cut the file back to just after its last newline; returns the bytes dropped."""
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - TAIL_CHUNK)
            f.seek(start)
            chunk = f.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep


def read_done_keys(path: Path) -> set[str]:
    """Keys of the complete lines of an existing output; UserError if one is corrupt or repeated."""
    done: set[str] = set()
    fix = "pass --overwrite to start the job again, or choose a new --output path"
    with path.open("rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                key = record_key(json.loads(raw))
            except (ValueError, KeyError, TypeError):
                raise UserError(
                    f"{path}, line {line_number}, is not an output line of this job", fix
                ) from None
            if key in done:
                raise UserError(f"{path}, line {line_number}, answers {key} a second time", fix)
            done.add(key)
    return done


class JobOutput:
    def __init__(
        self, path: Path, identity: JobIdentity, done_keys: set[str], model_name: str, fsync_interval_s: float
    ):
        self.path = path
        self._fresh = not is_stdout(path) and not path.exists()
        self.identity = identity
        self.done_keys = done_keys
        self.resumed_count = len(done_keys)
        self.model_name = model_name
        self.fsync_interval_s = fsync_interval_s
        self._fd = self._open_descriptor()
        self._last_sync = time.monotonic()
        self._dirty = False
        self._guarded(self._write_state)

    def _open_descriptor(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @classmethod
    def open(
        cls,
        path: str | Path,
        identity: JobIdentity,
        *,
        overwrite: bool = False,
        model_name: str = "",
        fsync_interval_s: float = 1.0,
    ) -> JobOutput:
        if is_stdout(path):
            return StdoutJobOutput(Path(path), identity, set(), model_name, fsync_interval_s)
        path = Path(path)
        check_output_writable(path)
        done: set[str] = set()
        if overwrite and path.exists():
            path.unlink()
        elif path.exists() and path.stat().st_size > 0:
            cls._check_same_job(path, identity)
            truncate_torn_tail(path)
            done = read_done_keys(path)
        return cls(path, identity, done, model_name, fsync_interval_s)

    @staticmethod
    def _check_same_job(path: Path, identity: JobIdentity) -> None:
        fix = "pass --overwrite to replace it, or choose a new --output path"
        state = _read_state(state_path(path))
        if state is None:
            raise UserError(
                f"{path} already exists and has no readable job state ({state_path(path).name})", fix
            )
        for name, label in (("input_sha256", "input file"), ("plan_sha256", "plan")):
            if state.get(name) != getattr(identity, name):
                raise UserError(
                    f"{path} holds the output of a job with a different {label} "
                    f"({name} {str(state.get(name))[:12]} != {getattr(identity, name)[:12]})",
                    fix,
                )

    @property
    def num_done(self) -> int:
        return len(self.done_keys)

    @property
    def num_errors(self) -> int:
        """Error records written (this run or an earlier one)."""
        return sum(key.startswith("line:") for key in self.done_keys)

    def write(self, request: JobRequest, states: Sequence[GenerationState]) -> None:
        """Append the answer of `request` from its n finished completions."""
        self._append(request.key, answer_record(request, states, self.model_name))

    def write_record(self, key: str, record: dict) -> None:
        """Append an answer built elsewhere (a cluster worker's `answer_record`), under its answer key."""
        self._append(key, record)

    def write_error(self, skipped: SkippedLine) -> None:
        """Append the error record of a bad input line (`--on-error record`)."""
        self._append(skipped.key, error_record(skipped))

    def _append(self, key: str, record: dict) -> None:
        if key in self.done_keys:
            raise RuntimeError(f"{key} answered twice")
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            written = os.write(self._fd, line)
            while written < len(line):  # short writes happen only on a full disk or a signal
                written += os.write(self._fd, line[written:])
        except BrokenPipeError:
            raise
        except OSError as err:
            self._cut_partial_line()
            raise self._write_error(err) from None
        self.done_keys.add(key)
        self._dirty = True
        if time.monotonic() - self._last_sync >= self.fsync_interval_s:
            self.sync()

    def _cut_partial_line(self) -> None:
        try:
            truncate_torn_tail(self.path)
        except OSError:
            pass  # the next run cuts it instead

    def _write_error(self, err: OSError) -> UserError:
        kept = (
            f"the {self.num_done} answers finished before it are kept in {self.path} "
            f"({self.num_done} of {self.identity.num_requests})"
        )
        if err.errno in DISK_FULL_ERRNOS:
            return disk_full_error(self.path, err, kept)
        return UserError(
            f"writing {self.path} failed: {err.strerror or err}; {kept}",
            "fix the cause and rerun the same command to resume",
        )

    def _guarded(self, action) -> None:
        try:
            action()
        except BrokenPipeError:
            raise
        except OSError as err:
            raise self._write_error(err) from None

    def sync(self) -> None:
        self._guarded(self._sync)

    def _sync(self) -> None:
        os.fsync(self._fd)
        self._dirty = False
        self._last_sync = time.monotonic()
        self._write_state()

    def _write_state(self) -> None:
        state = {
            "schema_version": STATE_SCHEMA_VERSION,
            "input_sha256": self.identity.input_sha256,
            "plan_sha256": self.identity.plan_sha256,
            "num_requests": self.identity.num_requests,
            "done": self.num_done,
            "complete": self.num_done >= self.identity.num_requests,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_state_atomically(state_path(self.path), state)

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.sync()
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JobOutput:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except (OSError, UserError):
            pass  # the error already on its way out is the one to report
        if self._fresh and not self.done_keys:
            self.path.unlink(missing_ok=True)
            state_path(self.path).unlink(missing_ok=True)


class StdoutJobOutput(JobOutput):
    """`--output -`: each answer goes to standard output as it finishes; nothing is kept to resume from."""

    def _open_descriptor(self) -> int:
        sys.stdout.flush()
        return os.dup(sys.stdout.fileno())

    def _cut_partial_line(self) -> None:
        pass

    def _sync(self) -> None:
        self._dirty = False
        self._last_sync = time.monotonic()

    def _write_state(self) -> None:
        pass

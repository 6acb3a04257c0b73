"""Where a command writes its results: checked before any work; `-` means standard output (torch-free).

How it works: docs/design.md, `planner/outputs.py`.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from planner.errors import UserError

STDOUT = "-"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def is_stdout(path: str | Path | None) -> bool:
    return path is not None and str(path) == STDOUT


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(path: str | Path, flag: str, inputs: Iterable[str | Path | None] = ()) -> None:
    """UserError unless `path` can be created or replaced without touching any of `inputs`; creates nothing."""
    if is_stdout(path):
        return
    fix = f"pass {flag} a new file path in an existing, writable directory (or - for standard output)"
    if not str(path):
        raise UserError(f"{flag} is empty", fix)
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory", fix)
    for source in inputs:
        if source is not None and not is_stdout(source) and _same_file(path, Path(source)):
            raise UserError(
                f"{flag} {path} is the input file {source}: writing it would destroy the input", fix
            )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(
            f"the output directory {parent} does not exist", f"create it first (mkdir -p {parent})"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"the output directory {parent} is not writable", fix)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{path} exists and is not writable", fix)


def disk_full_error(path: str | Path, err: OSError, kept: str) -> UserError:
    """The message for a write refused by the disk or a file-size limit; `kept` says what is safe."""
    reason = {
        errno.EFBIG: "the file-size limit (ulimit -f) was reached",
        errno.EDQUOT: "the disk quota is exhausted",
    }.get(err.errno, "the disk is full")
    return UserError(
        f"writing {path} failed: {reason} ({os.strerror(err.errno or 0)}); {kept}",
        "free space (or raise the limit) and rerun the same command",
    )


def write_text_output(path: str | Path, text: str) -> str:
    if is_stdout(path):
        sys.stdout.write(text)
        sys.stdout.flush()
        return "standard output"
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    except OSError as err:
        temp.unlink(missing_ok=True)
        if err.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(path, err, "nothing was written") from None
        raise UserError(f"cannot write {path}: {err.strerror}", "choose another output path") from None
    return str(path)


def say_to(path: str | Path | None) -> TextIO:
    return sys.stderr if is_stdout(path) else sys.stdout

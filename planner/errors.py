"""User-facing errors: one message naming the cause and the fix; the CLIs turn them into exit code 2.

How it works: docs/design.md, `planner/errors.py`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps


class UserError(Exception):
    """A problem the user can fix. `str(err)` is the whole message: the cause, then the fix."""

    def __init__(self, cause: str, fix: str | None = None):
        self.cause = cause
        self.fix = fix
        super().__init__(cause if not fix else f"{cause}\n  fix: {fix}")


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C."""


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextmanager
def process_signals() -> Iterator[None]:
    """SIGTERM raises `Terminated`, SIGXFSZ is ignored; both restored after (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = {signal.SIGTERM: _raise_terminated}
    if hasattr(signal, "SIGXFSZ"):
        wanted[signal.SIGXFSZ] = signal.SIG_IGN
    previous = {signum: signal.signal(signum, handler) for signum, handler in wanted.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _discard_stdout() -> None:
    """Point file descriptor 1 at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def exits_cleanly(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI entry point: user errors, interrupts and a closed standard output end in one line."""

    @wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            with process_signals():
                code = main(*args, **kwargs) or 0
                sys.stdout.flush()
                return code
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR
        except BrokenPipeError:
            _discard_stdout()
            return EXIT_BROKEN_PIPE
        except Terminated:
            print("terminated", file=sys.stderr)
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapper

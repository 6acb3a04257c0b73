"""User-facing errors: one message naming the cause and the fix; the CLIs turn them into exit code 2.

Anything a user can cause (a bad file, flag, plan, checkpoint or budget) raises `UserError`; bugs raise
anything else and keep their traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps


class UserError(Exception):
    """A problem the user can fix. `str(err)` is the whole message: the cause, then the fix."""

    def __init__(self, cause: str, fix: str | None = None):
        self.cause = cause
        self.fix = fix
        super().__init__(cause if not fix else f"{cause}\n  fix: {fix}")


EXIT_USER_ERROR = 2


def exits_cleanly(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI entry point so a UserError prints one message and exits with code 2."""

    @wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper

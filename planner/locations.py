"""Where moelens finds and keeps its data files: the one home of every path to model specs and profiles.

How it works: docs/design.md, `planner/locations.py`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from planner import settings
from planner.errors import UserError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

KINDS = ("models", "profiles")
HOME_VARIABLE = settings.HOME
FOLDER_VARIABLES = {"models": settings.MODELS_DIR, "profiles": settings.PROFILES_DIR}


def user_home() -> Path:
    """The per-user data directory (`$MOELENS_HOME` overrides the platform's default)."""
    override = settings.setting(HOME_VARIABLE)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("moelens", appauthor=False))


def user_dir(kind: str) -> Path:
    """The writable folder of `kind` files: `$MOELENS_<KIND>_DIR`, else `<user home>/<kind>`."""
    override = settings.setting(FOLDER_VARIABLES[kind])
    return Path(override).expanduser() if override else user_home() / kind


def shipped_dir(kind: str) -> Traversable:
    """The read-only folder of shipped `kind` files: package data in a wheel, else the checkout's folder."""
    assert kind in KINDS, kind
    packaged = resources.files("planner") / "data" / kind
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / kind


def search_dirs(kind: str) -> list[Traversable]:
    """Where names are looked up, first match wins: the user dir, then shipped data."""
    return [user_dir(kind), shipped_dir(kind)]


def known_names(kind: str) -> list[str]:
    """Every `kind` name (file stem) found in any search dir, sorted."""
    found = {
        entry.name[: -len(".yaml")]
        for directory in search_dirs(kind)
        if directory.is_dir()
        for entry in directory.iterdir()
        if entry.name.endswith(".yaml") and entry.is_file()
    }
    return sorted(found)


def find(kind: str, name: str) -> Traversable | None:
    """The file `<name>.yaml` in the first search dir that has it, or None."""
    for directory in search_dirs(kind):
        candidate = directory / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


def user_file(kind: str, name: str) -> Path:
    """Where a `kind` file called `name` is written by default (the user dir; it may not exist yet)."""
    return user_dir(kind) / f"{name}.yaml"


def is_shipped(path: str | Path) -> bool:
    """Whether `path` lies in a shipped data folder (so must never be written)."""
    target = Path(path).expanduser().resolve()
    for kind in KINDS:
        folder = Path(str(shipped_dir(kind))).resolve()
        if target == folder or folder in target.parents:
            return True
    return False


def refuse_shipped(path: str | Path, flag: str) -> None:
    """UserError when `path` (given with `flag`) would write into shipped data."""
    if is_shipped(path):
        raise UserError(
            f"{flag} {path} is in moelens's shipped data, which is never overwritten",
            f"leave {flag} out to write to {user_dir('profiles')}, or pass a path outside "
            f"{Path(str(shipped_dir('profiles'))).parent}",
        )

"""Loads the C++ decode-attention extension `runtime.attention._C`, compiled when moelens is built or installed.

Nothing here compiles: setup.py builds the binary (`pip install .`, `pip wheel .`, `make install`), so no
user command ever waits on a compiler or on a lock a killed build left behind. One binary holds the AVX-512
(+bf16), AVX-512, AVX2 and scalar paths; the best one this CPU supports is chosen at run time.
`load_extension()` returns the module, or None after one warning that says why (not built, cannot be loaded,
compiled against another torch, or older than this source's `INTERFACE_VERSION`) and how to rebuild; the
caller then uses the torch fallback.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

MODULE_NAME = "runtime.attention._C"
REBUILD_HINT = (
    "rebuild it with `make install` in a checkout (or `python setup.py build_ext --inplace` there), "
    "or `pip install --no-build-isolation --force-reinstall --no-deps .` in the moelens source tree"
)

INTERFACE_VERSION = 2  # bindings.cpp `interface_version`; 2: decode_gqa takes sinks

_module: ModuleType | None = None
_failed: str | None = None


def _import() -> ModuleType:
    return importlib.import_module(MODULE_NAME)


def _mismatch(module: ModuleType) -> str | None:
    import torch

    built_for = getattr(module, "torch_version", "an unknown version")
    running = torch.__version__.split("+")[0]
    if built_for != running:
        return f"was compiled for torch {built_for}, but torch {running} is running"
    interface = getattr(module, "interface_version", 1)
    if interface != INTERFACE_VERSION:
        return f"was built from older sources (interface {interface}, this code needs {INTERFACE_VERSION})"
    return None


def _why_unavailable() -> tuple[ModuleType | None, str | None]:
    try:
        module = _import()
    except ModuleNotFoundError as err:
        if err.name != MODULE_NAME:
            raise
        return None, "is not built"
    except (ImportError, OSError) as err:  # e.g. undefined symbols: built against another torch
        return None, f"cannot be loaded ({str(err).strip().splitlines()[-1][:200]})"
    reason = _mismatch(module)
    return (None, reason) if reason else (module, None)


def load_extension() -> ModuleType | None:
    """The compiled module, or None (warned once, with the reason and the fix) when it is unusable."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    _module, _failed = _why_unavailable()
    if _failed is not None:
        warnings.warn(
            f"moelens CPU attention extension {_failed}; using the slower torch fallback. "
            f"To fix: {REBUILD_HINT}",
            RuntimeWarning,
            stacklevel=2,
        )
    return _module


def describe() -> str:
    """One line on the extension's state, for `make install` and bug reports."""
    module = load_extension()
    if module is None:
        return f"attention extension {_failed}: the torch fallback is used ({REBUILD_HINT})"
    supported = list(module.supported_isas())
    return (
        f"attention extension for torch {module.torch_version}: ISA paths {', '.join(module.compiled_isas())}, "
        f"this CPU uses {supported[0]}"
    )

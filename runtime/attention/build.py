"""Builds and loads the C++ decode-attention extension (`python -m runtime.attention.build`).

`load_extension()` compiles `csrc/*.cpp` with torch's cpp_extension (JIT, ninja) into
`$MOELENS_BUILD_DIR/attention` or `<repo>/build/attention` and returns the module, or None (after one
warning) when it cannot be built or loaded. One binary holds the AVX-512 (+bf16), AVX-512, AVX2 and
scalar paths, compiled with target pragmas; the best one this CPU supports is chosen at run time.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
EXTENSION_NAME = "moelens_attention"
_REPO_ROOT = Path(__file__).resolve().parents[2]

_module: ModuleType | None = None
_failed: str | None = None


def build_dir() -> Path:
    root = os.environ.get("MOELENS_BUILD_DIR")
    return (Path(root) if root else _REPO_ROOT / "build") / "attention"


def _compile(verbose: bool) -> ModuleType:
    from torch.utils import cpp_extension

    out_dir = build_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=EXTENSION_NAME,
        sources=sorted(str(p) for p in CSRC_DIR.glob("*.cpp")),
        extra_include_paths=[str(CSRC_DIR)],
        extra_cflags=["-O3", "-fopenmp", "-fno-math-errno"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(out_dir),
        verbose=verbose,
    )


def load_extension(verbose: bool = False) -> ModuleType | None:
    """The compiled module, building it on first use; None if that fails (warned once)."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    try:
        _module = _compile(verbose)
    except Exception as err:  # any compiler or loader failure means: use the torch fallback
        _failed = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        warnings.warn(
            f"moelens CPU attention extension unavailable ({_failed}); using the slower torch fallback",
            RuntimeWarning,
            stacklevel=2,
        )
    return _module


def main() -> int:
    module = load_extension(verbose="-v" in sys.argv[1:])
    if module is None:
        print(f"attention extension: build failed ({_failed}); the torch fallback will be used")
        return 1
    supported = list(module.supported_isas())
    print(f"attention extension: built in {build_dir()}")
    print(f"  ISA paths compiled: {', '.join(module.compiled_isas())}")
    print(f"  supported by this CPU: {', '.join(supported)} (using {supported[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

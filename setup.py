"""Package build: the C++ decode-attention extension and the shipped data (everything else is pyproject.toml).

- `runtime.attention._C` is compiled here, by torch's `BuildExtension`, whenever the project is built or
  installed (`pip install .`, `pip wheel .`, `make install`); nothing compiles at run time. One binary holds
  the AVX-512 (+bf16), AVX-512, AVX2 and scalar paths (target pragmas in csrc/); the best one this CPU
  supports is chosen at run time.
- The repository's top-level `models/` and `profiles/` YAML files are copied into the wheel as
  `planner/data/models/` and `planner/data/profiles/`, read with importlib.resources (planner.locations).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).resolve().parent
CSRC = Path("runtime/attention/csrc")
SHIPPED_DATA = ("models", "profiles")


class BuildPyWithData(build_py):
    """The standard build_py, plus the top-level data folders copied to planner/data/ in the build."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's folders directly
            return
        for folder in SHIPPED_DATA:
            target = Path(self.build_lib) / "planner" / "data" / folder
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for source in sorted((ROOT / folder).glob("*.yaml")):
                shutil.copyfile(source, target / source.name)


extension = CppExtension(
    name="runtime.attention._C",
    sources=sorted(str(p) for p in CSRC.glob("*.cpp")),
    include_dirs=[str(ROOT / CSRC)],
    extra_compile_args=["-O3", "-g0", "-fopenmp", "-fno-math-errno"],
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension, "build_py": BuildPyWithData})

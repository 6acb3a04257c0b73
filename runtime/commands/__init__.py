"""The `runtime` subcommands: one module per command, listed in `COMMAND_MODULES`.

Each module exposes `add_parser(subparsers) -> argparse.ArgumentParser` (registers its subcommand, its help
and its flags) and `run(args) -> int` (the exit code). Modules import heavy dependencies (torch) inside
`run`, so `runtime --help` stays fast. Add a command by appending its module path here.
"""

from __future__ import annotations

COMMAND_MODULES = [
    "runtime.commands.make_checkpoint",
    "runtime.commands.profile",
    "runtime.commands.profile_overheads",
    "runtime.commands.datasheet_profiles",
    "runtime.commands.generate",
    "runtime.commands.execute",
    "runtime.commands.run_batch",
    "runtime.commands.demo",
]

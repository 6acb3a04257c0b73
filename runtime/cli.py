"""The `runtime` command: argparse subcommands, one module each (see `runtime.commands`).

`main(argv=None) -> int` is the console script and `python -m runtime`; a `UserError` anywhere ends in one
message and exit code 2 (`planner.errors.exits_cleanly`), as do bad flags (argparse). SIGTERM is handled
like Ctrl-C and a closed standard output ends output quietly (also `exits_cleanly`). `--version` prints the
installed version.
"""

from __future__ import annotations

import argparse
import importlib

from planner.errors import exits_cleanly
from planner.version import add_version_flag
from runtime.commands import COMMAND_MODULES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runtime", description="moelens runtime: run MoE models on this machine"
    )
    add_version_flag(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        module.add_parser(subparsers).set_defaults(run_command=module.run)
    return parser


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run_command(args)

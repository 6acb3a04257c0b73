"""`runtime datasheet-profiles [--out DIR]`: (re)write the shipped datasheet profiles from published figures.

One `profiles/<name>.yaml` per machine in `runtime.profiler.datasheet_machines.MACHINES`, derived by
`runtime.profiler.datasheet.build`, dated today; prints each path written.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "datasheet-profiles",
        help="rewrite the datasheet profiles from published figures",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory (default: the checkout's profiles/, which ships them)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import datetime

    from planner import locations
    from runtime.profiler.datasheet import build
    from runtime.profiler.datasheet_machines import MACHINES

    out_dir = args.out or Path(str(locations.shipped_dir("profiles")))
    today = datetime.date.today().isoformat()
    for machine in MACHINES:
        print(build(machine, today).save(out_dir / f"{machine.name}.yaml"))
    return 0

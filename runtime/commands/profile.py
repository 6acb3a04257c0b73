"""`runtime profile [--out PATH] [--quick]`: measure this machine into a hardware profile YAML.

Writes `profiles/<machine name>.yaml` by default (`planner.profile.path_for_this_machine`: the name
`find_profile_for_this_machine` looks for, with a tag of the machine's rates when a profile of another machine
with the same CPU and cores holds that name), prints the path and a one-line summary. `--quick` measures
fewer, smaller points (~1.5 min with the probe jobs); `--sizing tiny` is for tests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from planner.errors import UserError, exits_cleanly
from planner.profile import profiles_dir


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("profile", help="measure this machine into profiles/<machine name>.yaml",
                                   description=__doc__.splitlines()[0])
    _add_arguments(parser)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the profile (default: profiles/<machine name>.yaml)")
    parser.add_argument("--quick", action="store_true", help="fewer and smaller measurements (~1.5 min)")
    parser.add_argument("--sizing", choices=("full", "quick", "tiny"), default=None,
                        help="explicit sizing (overrides --quick); tiny is for tests")


def run(args: argparse.Namespace) -> int:
    from runtime.profiler.measure import SIZINGS, measure_profile

    sizing = SIZINGS[args.sizing or ("quick" if args.quick else "full")]
    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {args.out} is a directory", "pass a file path such as profiles/mine.yaml")
    command = "runtime profile" + (f" --sizing {sizing.name}" if sizing.name != "full" else "")
    profile = measure_profile(sizing, command=command)
    path = profile.save(args.out or profiles_dir() / f"{profile.name}.yaml")
    gemm_peak = max(max(c.tflops) for c in profile.gemm_curves)
    attention = profile.attention_gbps(profile.max_threads)
    link = f"h2d {profile.h2d_gbps(1 << 30):.1f} GB/s, " if profile.has_device else "no device, "
    print(path)
    print(f"{profile.name}: {link}GEMM up to {gemm_peak:.3g} TFLOP/s, attention {attention:.1f} GB/s, "
          f"memory read {profile.memory.read_gbps:.1f} GB/s (fingerprint {profile.fingerprint()})",
          file=sys.stderr)
    return 0


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runtime profile", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

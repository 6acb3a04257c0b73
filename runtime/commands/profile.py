"""`runtime profile [--out PATH] [--quick]`: measure this machine into a hardware profile YAML.

How it works: docs/design.md, `runtime/commands/profile.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from planner import locations
from planner.errors import UserError
from planner.outputs import check_output_path, say_to, write_text_output


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "profile",
        help="measure this machine into a profile in the user dir",
        description=__doc__.splitlines()[0],
    )
    _add_arguments(parser)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the profile (default: <user dir>/profiles/<machine name>.yaml; "
        "see MOELENS_HOME; - for standard output)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer and smaller measurements (~1.5 min)")
    parser.add_argument(
        "--sizing",
        choices=("full", "quick", "tiny"),
        default=None,
        help="explicit sizing (overrides --quick); tiny is for tests",
    )
    _add_emulation_arguments(parser)


def _add_emulation_arguments(parser: argparse.ArgumentParser) -> None:
    emulation = parser.add_argument_group("emulated accelerator (the link-bound regime on a CPU)")
    emulation.add_argument(
        "--emulate-link",
        type=float,
        metavar="GBPS",
        help="the device is this CPU behind a link paced to GBPS GB/s each way",
    )
    emulation.add_argument(
        "--emulate-device-gb",
        type=float,
        metavar="G",
        help="device memory of the emulated accelerator, GiB (with --emulate-link)",
    )
    emulation.add_argument(
        "--from",
        dest="from_profile",
        metavar="PROFILE",
        help="take the CPU measurements from this profile instead of measuring (with --emulate-link)",
    )


def _emulation(args: argparse.Namespace):
    """The emulation the flags ask for as (GBPS, G), None without one; UserError on a half-given one."""
    given = (args.emulate_link is not None, args.emulate_device_gb is not None)
    if given == (False, False):
        if args.from_profile:
            raise UserError(
                "--from is only for an emulated link", "add --emulate-link GBPS --emulate-device-gb G"
            )
        return None
    if not all(given):
        raise UserError(
            "--emulate-link and --emulate-device-gb go together",
            "pass both, e.g. --emulate-link 1.0 --emulate-device-gb 0.4",
        )
    from planner.hardware.emulated_link import check_link_args

    check_link_args(args.emulate_link, args.emulate_device_gb)
    return args.emulate_link, args.emulate_device_gb


def _emulated(args: argparse.Namespace, emulation, measure):
    """The profile with the emulated link on top: of this CPU measured now, or of the `--from` profile."""
    from planner.hardware.emulated_link import emulate_link
    from planner.hardware.profile import load_profile

    return emulate_link(load_profile(args.from_profile) if args.from_profile else measure(), *emulation)


def run(args: argparse.Namespace) -> int:
    from runtime.profiler.measure import SIZINGS, measure_profile

    sizing = SIZINGS[args.sizing or ("quick" if args.quick else "full")]
    if args.out is not None:
        check_output_path(args.out, "--out")
        locations.refuse_shipped(args.out, "--out")
    command = "runtime profile" + (f" --sizing {sizing.name}" if sizing.name != "full" else "")
    emulation = _emulation(args)
    if emulation is not None:
        # the emulated device computes in the model dtype, so its curves are measured in it (no float32 pick)
        command += f" --emulate-link {emulation[0]:g} --emulate-device-gb {emulation[1]:g}"
        profile = _emulated(
            args, emulation, lambda: measure_profile(sizing, command=command, model_dtype_gemms=True)
        )
    else:
        profile = measure_profile(sizing, command=command)
    if args.out is not None:
        path = write_text_output(args.out, profile.to_yaml())
    else:
        path = profile.save(locations.user_file("profiles", profile.name))
    gemm_peak = max(max(c.tflops) for c in profile.gemm_curves)
    attention = profile.attention_gbps(profile.max_threads)
    link = f"h2d {profile.h2d_gbps(1 << 30):.1f} GB/s, " if profile.has_device else "no device, "
    if profile.emulated_link is not None:
        link = f"{profile.machine.device}, "
    print(path, file=say_to(args.out))
    print(
        f"{profile.name}: {link}GEMM up to {gemm_peak:.3g} TFLOP/s, attention {attention:.1f} GB/s, "
        f"memory read {profile.memory.read_gbps:.1f} GB/s (fingerprint {profile.fingerprint()})",
        file=sys.stderr,
    )
    return 0

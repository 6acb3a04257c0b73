"""`runtime profile-overheads [--sizing S] [--into PROFILE.yaml]`: measure only a profile's `overheads` section.

Prints each fixed and elementwise cost (`runtime.profiler.overheads`); with `--into`, replaces that profile's
`overheads` section and adds a note saying when and how it was measured.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "profile-overheads",
        help="measure only the overheads section of a profile",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--sizing", choices=("full", "quick", "tiny"), default="full")
    parser.add_argument(
        "--into", help="a profile YAML whose `overheads` section to replace (a note is added)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import datetime
    import os
    from dataclasses import replace

    from planner.hardware.profile import load_profile
    from runtime.device import default_device
    from runtime.profiler.measure import SIZINGS, sized_overheads
    from runtime.profiler.overheads import ELEMENTWISE_COSTS

    sizing, device = SIZINGS[args.sizing], default_device()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    overheads = sized_overheads(device, sizing)
    for name, seconds in overheads.call_s.to_dict().items():
        print(f"call_s.{name:<18} {seconds * 1e6:9.1f} us")
    for name, seconds in (overheads.mla_call_s or {}).items():
        print(f"mla_call_s.{name:<14} {seconds * 1e6:9.1f} us")
    print(f"mla_attention_score_ns {overheads.mla_attention_score_ns:9.3g} ns")
    for name in ELEMENTWISE_COSTS:
        print(f"elementwise_ns.{name:<11} {getattr(overheads.elementwise_ns, name):9.3g} ns")
    by_size = overheads.elementwise_ns.by_size
    for name, values in by_size.ns.items():
        print(
            f"elementwise_ns.by_size.{name:<4} "
            + " ".join(f"{e}:{v:.3g}" for e, v in zip(by_size.elements, values))
        )
    if args.into:
        profile = load_profile(args.into)
        note = (
            f"overheads measured alone by `runtime profile-overheads --sizing {sizing.name}` on "
            f"{datetime.date.today().isoformat()} ({device}, 1-minute load average {load:.1f})."
        )
        notes = f"{profile.notes}\n{note}" if profile.notes else note
        print(f"wrote {replace(profile, overheads=overheads, notes=notes).save(args.into)}")
    return 0

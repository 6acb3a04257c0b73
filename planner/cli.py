"""The `planner` command (also `python -m planner`): solve, explain, sweep, bound, calibrate.

How it works: docs/design.md, `planner/cli.py`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from planner.calibration import calibrate as calibration
from planner.errors import UserError, exits_cleanly
from planner.hardware.profile import find_profile_for_this_machine, list_profiles, load_profile
from planner.outputs import check_output_path, say_to, write_text_output
from planner.perf.bound import compute_bound
from planner.perf.memory import Budgets, GiB
from planner.perf.model import BATCHING_MODES, PerfModel
from planner.plans.build import model_ref_of, plan_from_solution, profile_ref_of
from planner.plans.explain import explain, plan_device_words, resource_words, table
from planner.plans.fleet import fleet_summary, parse_member, solve_fleet
from planner.plans.plan import Plan
from planner.plans.solver import check_budgets, solve
from planner.plans.sweep import VARIABLE_INPUTS, Problem, parse_vary, run_sweep, sweep_values
from planner.plans.workload import Workload
from planner.specs.spec import DTYPE_BYTES, load_spec
from planner.specs.weight_formats import QUANT_MODULES
from planner.version import add_version_flag

DEFAULT_PROMPT_LEN = 512
DEFAULT_GEN_LEN = 256
DEFAULT_NUM_PROMPTS = 10_000
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
WEIGHT_FORMATS = {"fp8": QUANT_MODULES, "mxfp4": ("experts",)}  # --dtype fp8|mxfp4: what is stored so


def _problem_arguments(parser: argparse.ArgumentParser, fleet: bool = False) -> None:
    parser.add_argument(
        "--model",
        help="model spec name (mixtral, qwen3-30b-a3b, ...), spec YAML, or checkpoint dir "
        "(default: --checkpoint)",
    )
    parser.add_argument("--kv-gb", type=float, required=True, help="most host memory for the KV cache, GiB")
    if fleet:
        parser.add_argument(
            "--profile",
            action="append",
            help="hardware profile name (user dir, then shipped) or a "
            "YAML path (default: this machine's measured profile); NAME:COUNT, repeatable, predicts a "
            "fleet",
        )
    else:
        parser.add_argument(
            "--profile",
            help="hardware profile name (user dir, then shipped) or a YAML path "
            "(default: this machine's measured profile)",
        )
    parser.add_argument("--device-gb", type=float, help="device memory to use, GiB (default: the profile's)")
    parser.add_argument("--host-gb", type=float, help="host memory to use, GiB (default: the profile's)")
    parser.add_argument("--prompt-len", type=int, help=f"tokens per prompt (default {DEFAULT_PROMPT_LEN})")
    parser.add_argument(
        "--gen-len",
        type=int,
        help=f"tokens generated per prompt, and max_tokens for prompts-file "
        f"lines without one (default {DEFAULT_GEN_LEN})",
    )
    parser.add_argument("--prompts", help="prompts JSONL file: its length distribution is the workload")
    parser.add_argument(
        "--num-prompts",
        type=int,
        help=f"prompts in the job (default {DEFAULT_NUM_PROMPTS}, or the lines of --prompts)",
    )
    parser.add_argument(
        "--dtype",
        help="weights to plan for: bf16, fp16, fp32, or fp8 / mxfp4 stored weights computed in the spec dtype "
        "(fp8: every linear layer, mxfp4: the routed experts; default: the spec or checkpoint)",
    )
    parser.add_argument(
        "--batching",
        choices=BATCHING_MODES,
        default="module",
        help="module: the engine's module-based batching (default); model: one batch size for every "
        "module with the KV cache in device memory (FlexGen / HF-offload style, to compare)",
    )
    parser.add_argument(
        "--checkpoint",
        help="checkpoint dir: its tokenizer.json counts --prompts tokens "
        "(else bytes/4), and its config.json is the model if --model is absent",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="planner", description="Plan throughput-optimal offline MoE inference."
    )
    add_version_flag(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    solve_p = commands.add_parser("solve", help="solve for the throughput-optimal plan")
    _problem_arguments(solve_p, fleet=True)
    solve_p.add_argument(
        "--out",
        help="write the plan YAML here (- for standard output; a fleet: one plan per "
        "profile, NAME-PROFILE.yaml)",
    )
    explain_p = commands.add_parser("explain", help="explain a plan: tables, binding resource, what-ifs")
    explain_p.add_argument("plan")
    explain_p.add_argument("--no-what-if", action="store_true", help="skip re-solving with resources doubled")
    sweep_p = commands.add_parser("sweep", help="predictions over a range of one input, as CSV")
    _problem_arguments(sweep_p)
    sweep_p.add_argument("--vary", required=True, help=f"NAME=LOW:HIGH, NAME in {', '.join(VARIABLE_INPUTS)}")
    sweep_p.add_argument("--steps", type=int, default=8, help="values, geometrically spaced (default 8)")
    sweep_p.add_argument("--out", required=True, help="CSV file to write (- for standard output)")
    bound_p = commands.add_parser("bound", help="the hardware upper bound alone, with its terms")
    _problem_arguments(bound_p)
    calibrate_p = commands.add_parser(
        "calibrate", help="fit the profile's efficiency constants to runtime reports"
    )
    calibration.add_arguments(calibrate_p)
    return parser


def _profile(ref: str | None):
    if ref:
        return load_profile(ref), ref
    try:
        profile = find_profile_for_this_machine()
    except UserError as err:
        shipped = ", ".join(list_profiles()) or "none"
        raise UserError(
            f"{err.cause}; shipped profiles: {shipped}",
            "pass --profile NAME (one of those), or run `make profile` to measure this machine",
        ) from None
    return profile, profile.name


def problem_from_args(args: argparse.Namespace) -> Problem:
    model_ref = args.model or args.checkpoint
    if not model_ref:
        raise UserError("no model given", "pass --model NAME (e.g. mixtral) or --checkpoint DIR")
    spec = load_spec(model_ref)
    if (
        args.dtype in WEIGHT_FORMATS
    ):  # stored quantized, computed in the spec's dtype (as the runtime runs it)
        spec = spec.with_weight_formats(dict.fromkeys(WEIGHT_FORMATS[args.dtype], args.dtype))
    elif args.dtype:
        dtype = DTYPE_ALIASES.get(args.dtype, args.dtype)
        if dtype not in DTYPE_BYTES:
            choices = sorted([*DTYPE_ALIASES, *WEIGHT_FORMATS])
            raise UserError(f"unknown --dtype {args.dtype!r}", f"use one of {choices}")
        spec = replace(spec, dtype=dtype, weight_formats={})  # every weight stored in that dtype
    profile, profile_ref = _profile(args.profile)
    if args.num_prompts is not None and args.num_prompts < 1:
        raise UserError(f"--num-prompts {args.num_prompts} must be positive", "pass --num-prompts >= 1")
    gen_len = DEFAULT_GEN_LEN if args.gen_len is None else args.gen_len
    if args.prompts:
        if args.prompt_len is not None:
            raise UserError("--prompts and --prompt-len both given", "pass one of them")
        if gen_len < 1:
            raise UserError(f"--gen-len {gen_len} must be positive", "pass --gen-len >= 1")
        workload = Workload.from_file(args.prompts, gen_len, args.checkpoint, args.num_prompts)
    else:
        prompt_len = DEFAULT_PROMPT_LEN if args.prompt_len is None else args.prompt_len
        workload = Workload.fixed(prompt_len, gen_len, args.num_prompts or DEFAULT_NUM_PROMPTS)
    if workload.max_sequence_len > spec.max_position_embeddings:
        raise UserError(
            f"prompt + generation ({workload.max_sequence_len} tokens) exceeds {spec.name}'s context of "
            f"{spec.max_position_embeddings}",
            "shorten --prompt-len/--gen-len or the prompts' max_tokens",
        )
    budgets = Budgets.from_args(profile, args.kv_gb, args.host_gb, args.device_gb)
    return Problem(
        spec,
        profile,
        workload,
        budgets,
        model_ref=str(model_ref),
        profile_ref=str(profile_ref),
        batching=args.batching,
    )


def plan_summary(plan: Plan) -> str:
    p, b = plan.predicted, plan.bound
    lines = [
        f"plan for {plan.model.name} (weights {plan.weights_words}) on {plan.profile.name} ({plan.profile.kind} profile, "
        f"{plan_device_words(plan)}{', model-based batching' if plan.decisions.batching == 'model' else ''})",
        f"  workload: {plan.workload.describe()}",
        f"  generated {p.generated_tok_s:,.1f} tok/s end to end (decode {p.decode_tok_s:,.1f}, prefill "
        f"{p.prefill_tok_s:,.0f} tok/s); wall time {p.wall_time_s / 3600:.2f} h",
        f"  {plan.decisions.num_seqs} sequences in flight, attn_batch {plan.decisions.attn_batch}, expert_batch {plan.decisions.expert_batch}, "
        f"prefill_chunk {plan.decisions.prefill_chunk}, KV {plan.decisions.kv_budget_bytes / GiB:.1f} GiB",
        f"  on the device: {', '.join(plan.decisions.resident_modules) if plan.decisions.stream_weights else 'everything (no streaming)'}"
        + (
            f"; {plan.decisions.resident_experts_per_layer} routed experts per layer"
            if plan.decisions.stream_weights
            else ""
        ),
        f"  bottleneck: {resource_words(plan, plan.bottleneck)} ({plan.utilisation[plan.bottleneck]:.0%} busy); bound {b.end_to_end_tok_s:,.1f} "
        f"tok/s end to end (decode {b.tok_s:,.1f}, {b.binding}; the prompts' prefill at peak loads the compute term), the plan "
        f"reaches {p.generated_tok_s / b.end_to_end_tok_s:.0%}",
    ]
    if p.usd_per_million_tokens is not None:
        lines.append(f"  ${p.usd_per_million_tokens:.3f} per million generated tokens")
    return "\n".join(lines)


def _check_out(args: argparse.Namespace) -> None:
    if args.out is not None:
        check_output_path(args.out, "--out", [args.prompts, getattr(args, "plan", None)])


def cmd_solve(args: argparse.Namespace) -> int:
    _check_out(args)
    texts = args.profile or []
    members = [parse_member(text) for text in texts]
    args.profile = members[0][0] if members else None
    if len(members) > 1 or (members and members[0][0] != texts[0]):
        return _solve_fleet(args, members)
    problem = problem_from_args(args)
    model = PerfModel(
        problem.spec, problem.profile, problem.workload, problem.budgets, batching=problem.batching
    )
    began = time.perf_counter()
    solution = solve(model)
    seconds = time.perf_counter() - began
    plan = plan_from_solution(
        model,
        solution,
        model_ref_of(problem.spec, problem.model_ref),
        profile_ref_of(problem.profile, problem.profile_ref),
    )
    written = None if args.out is None else write_text_output(args.out, plan.to_yaml())  # before any print
    say = say_to(args.out)
    print(plan_summary(plan), file=say)
    print(f"  solved in {seconds:.2f} s ({solution.evaluations} model evaluations)", file=say)
    if written:
        print(f"  wrote {written}", file=say)
    return 0


def _solve_fleet(args: argparse.Namespace, members: list[tuple[str, int]]) -> int:
    problem = problem_from_args(args)
    profiles = [(problem.profile, members[0][0], members[0][1])]
    profiles += [(load_profile(ref), ref, count) for ref, count in members[1:]]
    fleet = solve_fleet(
        problem.spec,
        profiles,
        problem.workload,
        args.kv_gb,
        args.host_gb,
        args.device_gb,
        problem.model_ref,
        problem.batching,
    )
    written = []
    if args.out:  # saved before anything is printed
        out = Path(args.out)
        for member in fleet.members:
            path = out.with_name(f"{out.stem}-{member.plan.profile.name}{out.suffix or '.yaml'}")
            written.append(write_text_output(path, member.plan.to_yaml()))
    print(f"{problem.spec.name} ({problem.spec.dtype}): {problem.workload.describe()}")
    print(fleet_summary(fleet))
    for path in written:
        print(f"  wrote {path}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    print(explain(Plan.load(args.plan), what_if=not args.no_what_if))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    _check_out(args)
    problem = problem_from_args(args)
    name, lo, hi = parse_vary(args.vary)
    frame = run_sweep(problem, name, sweep_values(name, lo, hi, args.steps))
    written = write_text_output(args.out, frame.to_csv(index=False))
    say = say_to(args.out)
    shown = [
        c for c in (name, "generated_tok_s", "num_seqs", "bottleneck", "bound_tok_s", "error") if c in frame
    ]
    print(frame[shown].to_string(index=False), file=say)
    print(f"wrote {written} ({len(frame)} rows)", file=say)
    return 0


def cmd_bound(args: argparse.Namespace) -> int:
    problem = problem_from_args(args)
    model = PerfModel(problem.spec, problem.profile, problem.workload, problem.budgets)
    check_budgets(model)
    bound = compute_bound(model)
    print(f"upper bound for {problem.spec.name} on {problem.profile.name}: {problem.workload.describe()}")
    print(table(["term", "generated tok/s"], [[k, v] for k, v in bound.terms.items()]))
    print(
        f"bound {bound.tok_s:,.1f} tok/s, set by {bound.binding}; KV capacity {bound.kv_capacity_tokens:,.0f} tokens, "
        f"PME {bound.pme:.4g}" + (f", delta {bound.delta_s:.3g} s" if bound.delta_s is not None else "")
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    profile, _ = _profile(args.profile)
    return calibration.run_command(args, profile)


COMMANDS = {
    "solve": cmd_solve,
    "explain": cmd_explain,
    "sweep": cmd_sweep,
    "bound": cmd_bound,
    "calibrate": cmd_calibrate,
}


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)

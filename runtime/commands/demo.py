"""`runtime demo` (`make demo`): the whole loop on this machine in a few minutes, predicted against achieved.

How it works: docs/design.md, `runtime/commands/demo.py`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SUBJECTS = (
    "the old lighthouse keeper",
    "a curious fox",
    "our chemistry teacher",
    "the night train to Oslo",
    "a retired astronaut",
    "the village baker",
    "an orbiting telescope",
    "the committee",
    "my neighbour's cat",
    "a glacier in Patagonia",
    "the jazz quartet",
    "a hungry caterpillar",
    "the city council",
    "a lone sailor",
    "the museum's robot guide",
    "a marathon runner",
    "the quantum computer",
    "an apprentice blacksmith",
)
VERBS = (
    "painted",
    "forgot",
    "measured",
    "discovered",
    "translated",
    "repaired",
    "questioned",
    "celebrated",
    "described",
    "ignored",
    "borrowed",
    "predicted",
    "sketched",
    "carried",
    "rebuilt",
    "counted",
)
OBJECTS = (
    "a map of forgotten islands",
    "seventeen copper kettles",
    "the theory of continental drift",
    "an unfinished symphony",
    "the price of winter wheat",
    "a recipe for plum dumplings",
    "the last eclipse",
    "a crate of rare orchids",
    "the rules of chess",
    "a broken pocket watch",
    "the migration of eels",
    "three volumes of poetry",
    "the tide tables",
    "a hand-drawn calendar",
    "the neural network weights",
)
PLACES = (
    "before sunrise",
    "in a crowded market",
    "under the bridge",
    "during the storm",
    "at the harbour",
    "on the third floor",
    "near the border",
    "in the botanical garden",
    "after the lecture",
    "by candlelight",
)
SIZE_LADDER = ((32, 128, 64), (32, 96, 48), (24, 64, 32), (16, 48, 24), (16, 32, 16))  # min, max prompt; gen
ASKS = (
    "Explain why.",
    "Continue the story.",
    "Summarise this in one line.",
    "What happened next?",
    "Write a short poem about it.",
    "List three consequences.",
    "Describe the scene in detail.",
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="make mixtral-mini, profile, plan and execute 256 prompts",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("demo-out"), help="working directory (default demo-out)"
    )
    parser.add_argument("--model", default="mixtral-mini", help="model spec to make (default mixtral-mini)")
    parser.add_argument("--num-prompts", type=int, default=256, help="prompts in the job (default 256)")
    parser.add_argument("--min-prompt-tokens", type=int, help="shortest prompt (default: see Lengths)")
    parser.add_argument("--max-prompt-tokens", type=int, help="longest prompt (default: see Lengths)")
    parser.add_argument("--gen-len", type=int, help="tokens generated per prompt (default: see Lengths)")
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=300.0,
        help="longest predicted execute time before the demo picks shorter lengths (default 300)",
    )
    parser.add_argument(
        "--kv-gb", type=float, default=2.0, help="KV cache budget for the plan, GiB (default 2)"
    )
    parser.add_argument(
        "--profile",
        help="profile name or YAML to plan with (default: this machine's, "
        "measured quickly if missing; another machine's runs with --force)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the prompts")
    return parser


def sentence(rng: random.Random) -> str:
    return (
        f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}."
    )


def make_prompts(tokenizer, count: int, min_tokens: int, max_tokens: int, seed: int) -> list[list[int]]:
    """`count` distinct prompts (token ids), each cut at a target length drawn in [min_tokens, max_tokens]."""
    rng = random.Random(seed)
    prompts: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    while len(prompts) < count:
        target = rng.randint(min_tokens, max_tokens)
        text = f"Note {len(prompts) + 1}. {rng.choice(ASKS)}"
        ids = tokenizer.encode(text)
        while len(ids) < target:
            text += " " + sentence(rng)
            ids = tokenizer.encode(text)
        ids = ids[:target]
        if tuple(ids) not in seen:
            seen.add(tuple(ids))
            prompts.append(ids)
    return prompts


def _checkpoint(args: argparse.Namespace, say) -> Path:
    from planner.errors import UserError
    from planner.specs.spec import load_spec
    from runtime.checkpoint import open_checkpoint
    from runtime.checkpoint.writer import write_random_checkpoint

    spec = load_spec(args.model)
    directory = args.dir / spec.name
    if (directory / "config.json").is_file():
        try:
            open_checkpoint(directory)
            say(f"[1/4] reusing the checkpoint in {directory}")
            return directory
        except UserError as err:
            say(f"[1/4] {directory} is unusable ({err.cause}); writing it again")
    say(f"[1/4] writing a random-weight {spec.name} checkpoint (bf16) to {directory}")
    written = write_random_checkpoint(spec, directory, dtype="bf16", seed=args.seed)
    say(
        f"      {written.num_parameters / 1e9:.2f} B parameters, {written.total_bytes / 1e9:.2f} GB, "
        f"{written.seconds:.0f} s"
    )
    return directory


def _find_or_measure_profile(args: argparse.Namespace, say):
    from planner import locations
    from planner.errors import UserError
    from planner.hardware.profile import find_profile_for_this_machine, load_profile
    from runtime.device import default_device
    from runtime.profiler.spot_check import measure_rates

    if args.profile:
        profile = load_profile(args.profile)
        say(f"[2/4] using profile {profile.name}")
        return profile
    try:
        profile = find_profile_for_this_machine(measure_rates(default_device()))
        say(f"[2/4] using this machine's profile {profile.name} (fingerprint {profile.fingerprint()})")
        return profile
    except UserError as err:
        say(f"[2/4] {err.cause}")
    from runtime.profiler.measure import SIZINGS, measure_profile

    say("      measuring this machine (runtime profile --quick)")
    profile = measure_profile(SIZINGS["quick"], command="runtime profile --quick")
    path = profile.save(locations.user_file("profiles", profile.name))
    say(f"      saved {path}")
    return profile


def _size_ladder(args: argparse.Namespace) -> tuple[tuple[int, int, int], ...]:
    given = (args.min_prompt_tokens, args.max_prompt_tokens, args.gen_len)
    if all(v is None for v in given):
        return SIZE_LADDER
    return (tuple(d if v is None else v for v, d in zip(given, SIZE_LADDER[0])),)


def _plan_job(args: argparse.Namespace, checkpoint, checkpoint_dir: Path, profile, profile_ref: str, say):
    """The first lengths of the ladder whose plan fits the time budget: (prompts, gen_len, plan)."""
    from planner.errors import UserError
    from planner.perf.memory import Budgets
    from planner.plans.build import make_plan
    from planner.plans.workload import Workload

    ladder = _size_ladder(args)
    for min_tokens, max_tokens, gen_len in ladder:
        if not 1 <= min_tokens <= max_tokens or gen_len < 1:
            raise UserError(
                f"demo lengths {min_tokens}..{max_tokens} / {gen_len} are not valid",
                "pass 1 <= --min-prompt-tokens <= --max-prompt-tokens and --gen-len >= 1",
            )
        prompts = make_prompts(checkpoint.tokenizer, args.num_prompts, min_tokens, max_tokens, args.seed)
        input_path = args.dir / "prompts.jsonl"
        input_path.write_text(
            "".join(
                json.dumps({"id": i, "prompt_token_ids": ids, "max_tokens": gen_len, "ignore_eos": True})
                + "\n"
                for i, ids in enumerate(prompts)
            )
        )  # no temperature: vLLM's default 1.0 samples, and the workload read from the file says so
        workload = Workload.from_file(input_path, default_max_tokens=gen_len)
        plan = make_plan(
            checkpoint.spec,
            profile,
            workload,
            Budgets.from_args(profile, args.kv_gb),
            model_ref=str(checkpoint_dir),
            profile_ref=profile_ref,
        )
        wall = plan.predicted.wall_time_s
        say(
            f"[3/4] prompts of {min_tokens}-{max_tokens} tokens (mean {workload.prompt_len_mean:.0f}), {gen_len} "
            f"generated each: N={plan.decisions.num_seqs} in flight, predicted {plan.predicted.generated_tok_s:.1f} "
            f"generated tok/s, {wall:.0f} s, bottleneck {plan.bottleneck}"
        )
        if wall <= args.time_budget_s or (min_tokens, max_tokens, gen_len) == ladder[-1]:
            return prompts, gen_len, plan
        say(f"      over the {args.time_budget_s:.0f} s budget: trying shorter lengths")
    raise AssertionError("unreachable: the last rung is always returned")


def run(args: argparse.Namespace) -> int:
    from planner.errors import UserError
    from runtime.checkpoint import open_checkpoint
    from runtime.commands.execute import ExecuteOptions, execute_job

    if args.num_prompts < 1 or args.time_budget_s <= 0:
        raise UserError("--num-prompts and --time-budget-s must be positive", "fix the flags")

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    args.dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = _checkpoint(args, say)
    checkpoint = open_checkpoint(checkpoint_dir)
    if checkpoint.tokenizer is None:
        raise UserError(
            f"{checkpoint_dir} has no tokenizer.json", f"delete {checkpoint_dir} and rerun the demo"
        )
    profile = _find_or_measure_profile(args, say)
    profile_ref = str(
        profile.save(args.dir / "profile.yaml")
    )  # the plan names this copy: stable if re-profiled
    prompts, gen_len, plan = _plan_job(args, checkpoint, checkpoint_dir, profile, profile_ref, say)
    input_path = args.dir / "prompts.jsonl"  # written by _plan_job for the lengths it chose
    plan_path = plan.save(args.dir / "plan.yaml")

    output = args.dir / "outputs.jsonl"
    say(
        f"[4/4] runtime execute {plan_path} --checkpoint {checkpoint_dir} --input {input_path} --output {output}"
    )
    report = execute_job(
        ExecuteOptions(
            plan=plan_path,
            input=input_path,
            output=output,
            checkpoint=checkpoint_dir,
            report=args.dir / "report.json",
            overwrite=True,
            force=bool(args.profile),
        )
    )  # another machine's profile: run anyway
    end_to_end = report["throughput"]["end_to_end"]
    say(
        f"\npredicted {end_to_end['predicted']:.1f} generated tok/s, achieved {end_to_end['achieved']:.1f} "
        f"({100 * (end_to_end['relative_error'] or 0):+.1f}%); report: {args.dir / 'report.json'}"
    )
    return 0

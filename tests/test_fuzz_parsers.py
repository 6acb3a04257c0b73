"""Fuzzing the four user-facing parsers: plan, hardware profile, model spec (YAML and config.json), JSONL lines.

Inputs are mutations of valid documents (a field dropped, replaced by a value of the wrong type, a
negative / NaN / infinite / huge number, unicode, deep nesting, an unknown key) and random YAML- or
JSON-shaped values; some go through the file entry points (`Plan.load`, `load_profile`, `load_spec`,
`scan_input`), the rest through the dict parsers. The only allowed outcomes are a valid object (which must
then read back from its own serialised form) or a `UserError` (`LineError` for one JSONL line, which the
file scanner turns into a `UserError`). Any other exception is a parser defect. Hostile files (nesting
20,000 deep, 5000-digit integers, a Python-object YAML tag, bytes that are not UTF-8) must be clean errors too.

Quick mode (CI): `FUZZ_EXAMPLES` = 2500 cases per parser, 10^4 in all, derandomized. Set
`MOELENS_FUZZ_EXAMPLES=N` for a longer run.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.errors import UserError
from planner.hardware.profile import HardwareProfile, load_profile
from planner.perf.memory import Budgets
from planner.plans.build import make_plan
from planner.plans.plan import Plan
from planner.plans.workload import Workload
from planner.specs.hf_config import spec_from_hf_config, spec_to_hf_config
from planner.specs.spec import ModelSpec, load_spec
from runtime.jobio import LineError, ParseContext, parse_line, scan_input

ROOT = Path(__file__).resolve().parent.parent
FUZZ_EXAMPLES = int(os.environ.get("MOELENS_FUZZ_EXAMPLES", "2500"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
HALF = settings(FUZZ, max_examples=max(1, FUZZ_EXAMPLES // 2))
FILE_ROUTE = 3  # a route drawn away from the ends, which hypothesis favours

# ----- value strategies -----
SPECIAL_VALUES = [
    0,
    -1,
    1,
    -(2**63),
    2**63,
    2**64 + 1,
    10**400,
    -(10**400),
    1e308,
    -1e308,
    5e-324,
    0.5,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    None,
    "",
    "0",
    "1",
    "nan",
    "inf",
    "-1",
    "1e999",
    [],
    {},
    [None],
    {"": None},
]
STRANGE_TEXT = [
    "",
    " ",
    "\x00",
    "\ud800",
    "a\udfffb",
    "\u202eevil",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "日本語",
    "\n\r\t",
    "é" * 50,
    "../../etc/passwd",
    "{{ 7*7 }}",
    "{% for x in range(10**9) %}{% endfor %}",
    "<|user|>",
    "</s>",
]
texts = st.one_of(st.text(max_size=16), st.sampled_from(STRANGE_TEXT))
numbers = st.one_of(
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIAL_VALUES[:17])
)
json_leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
yaml_leaves = st.one_of(json_leaves, st.dates(), st.datetimes(), st.binary(max_size=8))
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)
yaml_keys = st.one_of(texts, st.integers(-2, 2), st.booleans(), st.none(), st.floats(allow_nan=False))
yaml_values = st.recursive(
    yaml_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(yaml_keys, inner, max_size=4)),
    max_leaves=12,
)


def nested(depth: int, leaf: object, as_dict: bool) -> object:
    for _ in range(depth):
        leaf = {"a": leaf} if as_dict else [leaf]
    return leaf


def all_paths(doc: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += all_paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += all_paths(value, prefix + (i,))
    return out


def at(doc: object, path: tuple) -> object:
    for key in path:
        doc = doc[key]
    return doc


def replacement(draw, kind: str, target: object, values) -> object:
    if kind == "special":
        return copy.deepcopy(draw(st.sampled_from(SPECIAL_VALUES)))  # the list's own [] / {} stay pristine
    if kind == "wrap":
        return [target]
    if kind == "stringify":
        return str(target)
    if kind == "deep":
        return nested(draw(st.integers(20, 200)), target, draw(st.booleans()))
    return draw(values)


@st.composite
def mutated(draw, seeds: list, values=yaml_values, keys=yaml_keys) -> object:
    """A deep copy of one seed document with 1-3 mutations at random places (or a random value)."""
    if draw(st.integers(0, 19)) == 0:
        return draw(values)
    doc = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        paths = all_paths(doc)
        path = paths[draw(st.integers(0, len(paths) - 1))]
        kind = draw(st.sampled_from(["drop", "replace", "special", "add_key", "wrap", "deep", "stringify"]))
        target = at(doc, path)
        if kind == "add_key" and isinstance(target, dict):
            target[draw(keys)] = draw(values)
            continue
        if kind == "drop" and path:
            parent = at(doc, path[:-1])
            del parent[path[-1]]
            continue
        new = replacement(draw, kind, target, values)
        if not path:
            doc = new
        else:
            at(doc, path[:-1])[path[-1]] = new
    return doc


def expect_clean(parse, *args):
    """Run a parser: a valid object or UserError; anything else propagates and fails the test."""
    try:
        return parse(*args)
    except UserError as err:
        assert err.cause, "a UserError needs a cause"
        return None


def write_yaml(path: Path, doc: object) -> Path:
    try:
        path.write_text(yaml.dump(doc, Dumper=yaml.CSafeDumper, allow_unicode=False))
    except (yaml.YAMLError, RecursionError, UnicodeEncodeError):
        path.write_text(repr(doc)[:10000])  # unrepresentable: the loader sees arbitrary text instead
    return path


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ----- seeds -----
def _yaml_files(directory: Path) -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in sorted(directory.glob("*.yaml"))]


PROFILE_SEEDS = _yaml_files(ROOT / "profiles")
SPEC_SEEDS = _yaml_files(ROOT / "models")
HF_SEEDS = [spec_to_hf_config(ModelSpec.from_dict(d)) for d in SPEC_SEEDS]


def _plan_seeds() -> list[dict]:
    cpu_profile = HardwareProfile.from_dict(
        next(p for p in PROFILE_SEEDS if p["links"] is None), "cpu profile"
    )
    gpu_profile = HardwareProfile.from_dict(
        next(p for p in PROFILE_SEEDS if p["links"] is not None), "gpu profile"
    )
    spec = ModelSpec.from_dict(next(d for d in SPEC_SEEDS if d["name"] == "qwen2-moe-mini"))
    return [
        make_plan(spec, profile, Workload.fixed(64, 32, 100), Budgets.from_args(profile, 1.0)).to_dict()
        for profile in (cpu_profile, gpu_profile)
    ]


PLAN_SEEDS = _plan_seeds()


# ----- plan -----
def check_plan(plan: Plan | None, via_yaml: bool) -> None:
    if plan is not None:
        assert (Plan.from_yaml(plan.to_yaml()) if via_yaml else Plan.from_dict(plan.to_dict())) == plan


@FUZZ
@given(doc=mutated(PLAN_SEEDS), route=st.integers(0, 24))
def test_plan_parser(scratch, doc, route):
    if route == FILE_ROUTE:  # the file entry point (pure-Python YAML is slow: a few cases)
        check_plan(expect_clean(Plan.load, write_yaml(scratch / "plan.yaml", doc)), via_yaml=True)
    else:
        check_plan(expect_clean(Plan.from_dict, doc), via_yaml=False)


# ----- hardware profile -----
def check_profile(profile: HardwareProfile | None, via_yaml: bool) -> None:
    if profile is not None:
        again = HardwareProfile.from_dict(
            yaml.safe_load(profile.to_yaml()) if via_yaml else profile.to_dict()
        )
        assert again == profile and again.fingerprint() == profile.fingerprint()


@FUZZ
@given(doc=mutated(PROFILE_SEEDS), route=st.integers(0, 24))
def test_profile_parser(scratch, doc, route):
    if route == FILE_ROUTE:
        check_profile(expect_clean(load_profile, write_yaml(scratch / "profile.yaml", doc)), via_yaml=True)
    else:
        check_profile(expect_clean(HardwareProfile.from_dict, doc), via_yaml=False)


# ----- model spec: YAML and config.json -----
def check_spec(spec: ModelSpec | None) -> None:
    if spec is not None:
        again = ModelSpec.from_dict(
            yaml.safe_load(yaml.dump(spec.to_dict(), Dumper=yaml.CSafeDumper, sort_keys=False))
        )
        assert repr(again) == repr(spec)  # repr: `extra` is free-form and may hold NaN


@HALF
@given(doc=mutated(SPEC_SEEDS), route=st.integers(0, 4))
def test_model_spec_yaml_parser(scratch, doc, route):
    if route == FILE_ROUTE:
        check_spec(expect_clean(load_spec, write_yaml(scratch / "spec.yaml", doc)))
    else:
        check_spec(expect_clean(ModelSpec.from_dict, doc))


def write_json(path: Path, doc: object) -> Path:
    try:
        path.write_text(json.dumps(doc, default=str))
    except (ValueError, RecursionError):
        path.write_text(repr(doc)[:10000])
    return path


@HALF
@given(doc=mutated(HF_SEEDS, values=json_values, keys=texts), route=st.integers(0, 4))
def test_hf_config_parser(scratch, doc, route):
    if route == FILE_ROUTE:
        directory = scratch / "ckpt"
        directory.mkdir(exist_ok=True)
        spec = expect_clean(load_spec, write_json(directory / "config.json", doc))
    else:
        spec = expect_clean(spec_from_hf_config, doc) if isinstance(doc, dict) else None
    if spec is not None:  # what make-checkpoint would write from it reads back as the same model
        again = spec_from_hf_config(spec_to_hf_config(spec))
        assert (again.name, again.family, again.num_layers, again.num_experts) == (
            spec.name,
            spec.family,
            spec.num_layers,
            spec.num_experts,
        )


# ----- JSONL request lines -----
LINE_SEEDS = [
    {"id": 1, "prompt": "Hello there", "max_tokens": 8},
    {
        "id": "a",
        "prompt_token_ids": [1, 5, 9],
        "max_tokens": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 5,
        "seed": 3,
        "stop": ["\n"],
        "ignore_eos": True,
    },
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
    {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": "m", "prompt": "Once", "max_tokens": 5, "n": 1, "stream": False},
    },
    {
        "custom_id": "r2",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Why?"}]}],
            "max_completion_tokens": 3,
            "temperature": 0,
        },
    },
]


@pytest.fixture(scope="module")
def line_context(tmp_path_factory) -> ParseContext:
    from runtime.checkpoint.tokenizer import load_tokenizer
    from runtime.checkpoint.tokenizer_build import write_tokenizer_files

    directory = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer_files(directory, vocab_size=600, model_max_length=64)
    return ParseContext(load_tokenizer(directory), max_context=64, vocab_size=600, default_max_tokens=16)


def raw_line(doc: object, mangle: int, cut: int) -> bytes:
    """Serialised line, sometimes damaged: truncated, a byte flipped, or a deeply nested array."""
    try:
        raw = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        raw = b"{"
    if mangle == 1 and raw:
        raw = raw[: cut % len(raw)]
    elif mangle == 2 and raw:
        i = cut % len(raw)
        raw = raw[:i] + bytes([raw[i] ^ 0x80 | 0x20]) + raw[i + 1 :]
    elif mangle == 3:
        raw = b"[" * (cut % 100_000) + b"]" * (cut % 100_000)
    elif mangle == 4:
        raw = b"1" * (cut % 10_000)  # an integer longer than Python's int parsing limit
    return raw


def check_request(request, context: ParseContext) -> None:
    assert request.prompt_token_ids and len(request.prompt_token_ids) < context.max_context
    assert all(0 <= t < context.vocab_size for t in request.prompt_token_ids)
    assert 1 <= request.sampling.max_tokens <= context.max_context - len(request.prompt_token_ids)


@FUZZ
@given(
    doc=mutated(LINE_SEEDS, values=json_values, keys=texts),
    route=st.integers(0, 4),
    mangle=st.integers(0, 6),
    cut=st.integers(0, 1 << 20),
)
def test_jsonl_request_parser(scratch, line_context, doc, route, mangle, cut):
    if route == FILE_ROUTE:
        path = scratch / "in.jsonl"
        path.write_bytes(raw_line(doc, mangle, cut) + b"\n")
        scan = expect_clean(scan_input, path, line_context, "fail")
        assert scan is None or scan.num_requests == 1
        return
    try:
        request = parse_line(doc, 1, line_context)
    except LineError as err:
        assert err.cause and err.fix
        return
    check_request(request, line_context)


DEEP = 20_000
HOSTILE_TEXTS = {
    "deeply nested YAML": "a: " + "[" * DEEP + "]" * DEEP + "\n",
    "deeply nested mapping": "{a: " * DEEP + "1" + "}" * DEEP + "\n",
    "an integer of 5000 digits": "schema_version: " + "9" * 5000 + "\n",
    "a YAML tag for a Python object": "!!python/object/apply:os.system ['echo pwned']\n",
    "not UTF-8": "\udcff",
}


@pytest.mark.parametrize("text", HOSTILE_TEXTS.values(), ids=HOSTILE_TEXTS.keys())
@pytest.mark.parametrize("loader", [Plan.load, load_profile, load_spec], ids=["plan", "profile", "spec"])
def test_hostile_yaml_files_are_clean_errors(scratch, loader, text):
    path = scratch / "hostile.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(UserError):
        loader(path)


HOSTILE_JSON = {
    "deeply nested": '{"model_type": "mixtral", "x": ' + "[" * DEEP + "]" * DEEP + "}",
    "an integer of 5000 digits": '{"model_type": "mixtral", "hidden_size": ' + "9" * 5000 + "}",
    "NaN sizes": '{"model_type": "mixtral", "hidden_size": NaN, "num_hidden_layers": Infinity}',
    "not UTF-8": b'{"model_type": "\xff"}'.decode("latin-1"),
}


@pytest.mark.parametrize("text", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_hostile_config_json_is_a_clean_error(scratch, text):
    directory = scratch / "hostile-ckpt"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    with pytest.raises(UserError):
        load_spec(directory)


def test_yaml_seeds_parse():
    """The seeds themselves are valid, so mutations start from documents that parse."""
    assert all(HardwareProfile.from_dict(d) for d in PROFILE_SEEDS)
    assert all(ModelSpec.from_dict(d) for d in SPEC_SEEDS) and len(HF_SEEDS) == len(SPEC_SEEDS)
    assert all(Plan.from_dict(d) for d in PLAN_SEEDS)


# ----- both CLIs' argv, built from their own flag vocabulary -----
# Values are words of each CLI's vocabulary (for the planner also real model and profile names: its commands
# take a fraction of a second) and random text. The runtime's words never name a real model or checkpoint, and
# its two commands that would start long work with defaults get a flag appended that stops them at the first
# check, so no example launches a job. Allowed outcomes: exit 0 or 2 (argparse's own exits included), with no
# traceback; anything else escaping `main` fails the test. Text holds no lone surrogates: a real argv decodes
# to those only from undecodable bytes, which the real standard error prints escaped (pytest's capture would not).
CLI_EXAMPLES = max(40, FUZZ_EXAMPLES // 20)
CLI_FUZZ = settings(FUZZ, max_examples=CLI_EXAMPLES)
COMMON_WORDS = [
    "",
    " ",
    "-",
    "--",
    "0",
    "1",
    "-1",
    "3",
    "64",
    "1e9",
    "1e400",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "/nonexistent/file.yaml",
    "missing.jsonl",
    "out.yaml",
    "out.csv",
    "x.txt",
    "bf16",
    "fp32",
    "fp8",
    "\u202eevil",
    "日本語",
    "../../etc/passwd",
]
PLANNER_WORDS = COMMON_WORDS + [
    "mixtral",
    "qwen2-moe-mini",
    "deepseek-v3",
    "h100-sxm-lambda",
    "cpu-amd-epyc-2c",
    "kv-gb=16:64",
    "host-gb=1:0",
    "speed=1:2",
    "kv-gb=nan:inf",
    "float16",
    "fp4",
]
PLANNER_HINTS = {
    "--model": ["mixtral", "qwen2-moe-mini", "deepseek-v3", "qwen3-30b-a3b"],  # flags drawn often,
    "--profile": ["h100-sxm-lambda", "cpu-amd-epyc-2c", "a5000-epyc7453"],  # from these words
    "--vary": ["kv-gb=16:64", "host-gb=64:128", "prompt-len=64:512", "kv-gb=64:16", "kv-gb=0:1"],
}
RUNTIME_WORDS = COMMON_WORDS + ["no-such-model", "/nonexistent/ckpt", "full", "quick", "tiny", "skip", "fail"]
argv_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=16)


def subcommands(parser) -> dict:
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


NUMBER_WORDS = [
    "0",
    "1",
    "-1",
    "2",
    "8",
    "16",
    "64",
    "0.5",
    "1e-9",
    "1e9",
    "1e308",
    "nan",
    "inf",
    "-inf",
    "1_0",
]


def flag_value(draw, action, words: list[str], hints: dict[str, list[str]]) -> str:
    hint = next((hints[f] for f in action.option_strings if f in hints), None)
    if hint and draw(st.integers(0, 3)):
        return draw(st.sampled_from(hint))
    if action.choices and draw(st.integers(0, 3)):
        return str(draw(st.sampled_from(sorted(map(str, action.choices)))))
    if action.type in (int, float) and draw(st.integers(0, 3)):
        return draw(st.one_of(st.sampled_from(NUMBER_WORDS), st.integers(-3, 40).map(str)))
    return draw(st.one_of(st.sampled_from(words), st.integers(-3, 40).map(str), argv_texts))


@st.composite
def cli_argv(
    draw, parser, words: list[str], stoppers: dict[str, list[str]], hints: dict[str, list[str]] | None = None
) -> list[str]:
    hints = hints or {}
    commands = subcommands(parser)
    if draw(st.integers(0, 24)) == 0:
        return [draw(st.sampled_from(["--version", "--help", "--bogus", "", "-"]))]
    name = (
        draw(st.one_of(st.sampled_from(sorted(commands)), argv_texts))
        if draw(st.integers(0, 9)) == 0
        else draw(st.sampled_from(sorted(commands)))
    )
    sub = commands.get(name)
    groups: list[list[str]] = []
    if sub is not None:
        for action in (a for a in sub._actions if not a.option_strings):
            if draw(st.integers(0, 5)):
                count = draw(st.integers(1, 2)) if action.nargs in ("+", "*") else 1
                groups.append([flag_value(draw, action, words, hints) for _ in range(count)])
        options = [a for a in sub._actions if a.option_strings]
        hinted = [
            a
            for a in options
            if (a.required or set(a.option_strings) & set(hints)) and draw(st.integers(0, 9))
        ]
        for action in hinted + draw(st.lists(st.sampled_from(options), max_size=6)):
            if "--help" in action.option_strings and draw(st.integers(0, 4)):
                continue
            flag = draw(st.sampled_from(action.option_strings))
            groups.append([flag] if action.nargs == 0 else [flag, flag_value(draw, action, words, hints)])
    if draw(st.integers(0, 6)) == 0:
        groups.append([draw(argv_texts)])
    ordered = draw(st.permutations(groups)) if draw(st.booleans()) else groups
    return [name, *(token for group in ordered for token in group), *stoppers.get(name, [])]


def run_cli(main, argv: list[str], capsys) -> None:
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse: --help / --version (0) or a bad flag (2)
        code = exited.code
    err = capsys.readouterr().err
    assert code in (0, 2), f"{argv!r} exited {code}: {err[-2000:]}"
    assert "Traceback" not in err, f"{argv!r}: {err[-2000:]}"


@CLI_FUZZ
@given(data=st.data())
def test_planner_cli_argv(tmp_path, monkeypatch, capsys, data):
    from planner.cli import build_parser, main

    monkeypatch.chdir(tmp_path)
    stoppers = {"sweep": ["--steps", "2"]}  # a sweep solves once per step
    run_cli(main, data.draw(cli_argv(build_parser(), PLANNER_WORDS, stoppers, PLANNER_HINTS)), capsys)


@CLI_FUZZ
@given(data=st.data())
def test_runtime_cli_argv(tmp_path, monkeypatch, capsys, data):
    from runtime.cli import build_parser, main

    monkeypatch.chdir(tmp_path)
    stoppers = {
        "profile": ["--out", str(tmp_path)],  # a directory: refused before measuring anything
        "demo": ["--num-prompts", "0"],
    }  # refused before the demo writes its checkpoint
    run_cli(main, data.draw(cli_argv(build_parser(), RUNTIME_WORDS, stoppers)), capsys)

"""Safety: no code path can unpickle, run remote code or construct arbitrary YAML objects, and safetensors
headers are checked against the file before anything is read.

The code scan parses every Python file of planner/, runtime/ and bench/ (docstrings and comments do not count)
and refuses pickle-family imports, `torch.load` / `torch.jit.load`, numpy / pandas pickle readers,
`trust_remote_code` in any form, and any yaml loader other than `safe_load` / `safe_load_all`. It is shown to
catch each kind on planted sources, so it cannot pass vacuously.
The shard tests craft broken safetensors files byte by byte and expect one `UserError` naming the file.
"""

from __future__ import annotations

import ast
import json
import struct
from pathlib import Path

import pytest

from planner.errors import UserError
from runtime.checkpoint.safetensors_io import INDEX_FILE, read_entries, read_shard_header

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("planner", "runtime", "bench")
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
FORBIDDEN_CALLS = {
    "torch.load",
    "torch.jit.load",
    "torch.serialization.load",
    "np.load",
    "numpy.load",
    "pd.read_pickle",
    "pandas.read_pickle",
    "torch.hub.load",
}
UNSAFE_YAML = {
    "load",
    "load_all",
    "full_load",
    "full_load_all",
    "unsafe_load",
    "unsafe_load_all",
    "Loader",
    "FullLoader",
    "UnsafeLoader",
    "CLoader",
    "CFullLoader",
    "CUnsafeLoader",
}
FORBIDDEN_WORDS = {"trust_remote_code", "allow_pickle"}


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def unsafe_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every unsafe deserialisation construct in `source`, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    docstrings = _docstring_nodes(tree)
    found = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    flag(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            names = {alias.name for alias in node.names}
            if root in PICKLE_MODULES:
                flag(node, f"from {node.module} import ...")
            if root == "torch" and "load" in names:
                flag(node, f"from {node.module} import load")
            if root == "yaml" and names & UNSAFE_YAML:
                flag(node, f"from yaml import {sorted(names & UNSAFE_YAML)}")
        elif isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name in FORBIDDEN_CALLS:
                flag(node, name)
            elif name and name.startswith("yaml.") and name.split(".")[1] in UNSAFE_YAML:
                flag(node, name)
            if node.attr in FORBIDDEN_WORDS:
                flag(node, node.attr)
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_WORDS | PICKLE_MODULES:
            flag(node, node.id)
        elif isinstance(node, ast.keyword) and node.arg in FORBIDDEN_WORDS:
            flag(node, f"{node.arg}=")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            for word in FORBIDDEN_WORDS:
                if word in node.value:
                    flag(node, f"string {word!r}")
    return found


def scanned_files() -> list[Path]:
    return sorted(p for folder in SCANNED if (ROOT / folder).is_dir() for p in (ROOT / folder).rglob("*.py"))


def test_no_unsafe_deserialisation_in_the_code():
    files = scanned_files()
    assert any(p.parts[-2:] == ("checkpoint", "loader.py") for p in files)  # the scan sees the loader
    problems = [hit for path in files for hit in unsafe_uses(path.read_text(), str(path.relative_to(ROOT)))]
    assert problems == []


PLANTED = [
    ("import pickle\n", "import pickle"),
    ("import cloudpickle as cp\n", "import cloudpickle"),
    ("from joblib import load\n", "from joblib"),
    ("import torch\nw = torch.load('x.pt')\n", "torch.load"),
    ("from torch import load\n", "import load"),
    ("import torch\nm = torch.jit.load('m.pt')\n", "torch.jit.load"),
    ("import numpy as np\na = np.load('a.npy', allow_pickle=True)\n", "np.load"),
    ("import yaml\nd = yaml.load(open('x'), Loader=yaml.Loader)\n", "yaml.load"),
    ("import yaml\nd = yaml.unsafe_load('a: 1')\n", "yaml.unsafe_load"),
    ("import yaml\nd = yaml.full_load('a: 1')\n", "yaml.full_load"),
    ("from yaml import load\n", "from yaml import"),
    ("f(model, trust_remote_code=True)\n", "trust_remote_code="),
    ("kwargs = {'trust_remote_code': True}\n", "string 'trust_remote_code'"),
]


@pytest.mark.parametrize("source,what", PLANTED, ids=[w for _, w in PLANTED])
def test_the_scan_catches_each_unsafe_construct(source, what):
    hits = unsafe_uses(source)
    assert hits and any(what in hit for hit in hits), hits


def test_the_scan_allows_safe_yaml_and_prose():
    source = (
        '"""Never torch.load, pickle or trust_remote_code: safetensors and yaml.safe_load only."""\n'
        "import yaml\n# torch.load is forbidden\n"
        "data = yaml.safe_load('a: 1')\ntext = yaml.safe_dump(data)\n"
    )
    assert unsafe_uses(source) == []


# ----- safetensors headers -----
def shard_bytes(header: object, data: bytes = b"", header_len: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


GOOD_HEADER = {
    "__metadata__": {"format": "pt"},
    "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
}
BAD_SHARDS = {
    "shorter than the length field": (b"\x01\x02\x03", "fewer than the 8-byte header length"),
    "header length past the end": (shard_bytes(GOOD_HEADER, bytes(16), header_len=10_000), "does not fit"),
    "header length one byte too long": (shard_bytes(b'{"a":1}', header_len=8), "does not fit"),
    "absurd header length": (shard_bytes(b"{}", header_len=(1 << 63) + 5), "does not fit"),
    "header length over 100 MB": (shard_bytes(b"{}", header_len=200 << 20), "does not fit"),
    "header not JSON": (shard_bytes(b"{this is not json}"), "not valid JSON"),
    "header not UTF-8": (shard_bytes(b'{"\xff\xfe": 1}'), "not valid JSON"),
    "header not an object": (shard_bytes([1, 2, 3]), "not a JSON object"),
    "tensor entry not an object": (shard_bytes({"w": [0, 16]}), "lacks dtype"),
    "deeply nested header": (
        shard_bytes(b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "not valid JSON",
    ),
    "integer of 5000 digits in the header": (shard_bytes(b'{"w": ' + b"9" * 5000 + b"}"), "not valid JSON"),
    "offsets beyond EOF": (
        shard_bytes({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, bytes(8)),
        "truncated",
    ),
    "huge offsets": (
        shard_bytes({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 1 << 42]}}),
        "truncated",
    ),
    "offsets disagree with shape": (
        shard_bytes({"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}}, bytes(16)),
        "needs 36",
    ),
    "reversed offsets": (
        shard_bytes({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, bytes(8)),
        "malformed",
    ),
    "negative shape": (
        shard_bytes({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 0]}}),
        "malformed",
    ),
    "unsupported dtype": (
        shard_bytes({"w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)),
        "dtype I64",
    ),
}


@pytest.mark.parametrize("content,message", BAD_SHARDS.values(), ids=BAD_SHARDS.keys())
def test_bad_shard_header_is_a_user_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_shard_header(path)
    assert message in err.value.cause and str(path) in err.value.cause and err.value.fix


def test_header_length_is_checked_before_reading(tmp_path, monkeypatch):
    """No read asks for more bytes than the file holds, whatever the length field claims."""
    import runtime.checkpoint.safetensors_io as io

    path = tmp_path / "model.safetensors"
    path.write_bytes(shard_bytes(b"{}", header_len=1 << 40))
    requested = []
    real_open = open

    class CountingFile:
        def __init__(self, f):
            self._f = f

        def read(self, n=-1):
            requested.append(n)
            return self._f.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(io, "open", lambda *a, **k: CountingFile(real_open(*a, **k)), raising=False)
    with pytest.raises(UserError):
        read_shard_header(path)
    assert requested and max(requested) <= path.stat().st_size


@pytest.mark.parametrize(
    "index",
    [
        '{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "\udcff",
        '{"weight_map": {"w": "/etc/passwd"}}',
        '{"weight_map": {"w": "a/../../b"}}',
    ],
    ids=["deeply nested", "not UTF-8", "absolute shard path", "shard path leaving"],
)
def test_bad_index_is_a_user_error(tmp_path, index):
    (tmp_path / INDEX_FILE).write_bytes(index.encode("utf-8", "surrogateescape"))
    with pytest.raises(UserError):
        read_entries(tmp_path)


def test_good_shard_header_reads(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(shard_bytes(GOOD_HEADER, bytes(16)))
    entry = read_shard_header(path)["w"]
    assert entry.shape == (2, 2) and entry.nbytes == 16

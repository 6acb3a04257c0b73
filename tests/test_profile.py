"""Hardware profiles: schema validation, round trips, shipped profiles, interpolation, and the profiler."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from planner import locations
from planner.errors import UserError
from planner.hardware.profile import (
    HardwareProfile,
    find_profile_for_this_machine,
    list_profiles,
    load_profile,
)
from planner.hardware.this_machine import MachineIdentity, this_machine

DATASHEET_NAMES = {
    "a5000-epyc7453",
    "a40-xeon8380",
    "l4-aws-g6-16xlarge",
    "t4-aws-g4dn-8xlarge",
    "a100-pcie-80gb-azure-nc24ads",
    "h100-pcie-lambda",
    "h100-sxm-lambda",
    "h200-sxm-hgx",
    "rtx4090-ryzen7950x",
}


def _curve(rows, tflops, n=1024, k=1024, shape="expert_ffn test"):
    return {"shape": shape, "n": n, "k": k, "rows": list(rows), "tflops": list(tflops)}


def _rate(sizes, gbps):
    return {"sizes": list(sizes), "gbps": list(gbps)}


def _profile_dict(device: bool = True) -> dict:
    sizes = [1 << 20, 1 << 24, 1 << 28]
    return {
        "schema_version": 1,
        "name": "synthetic",
        "provenance": {"kind": "measured", "date": "2025-01-01", "command": "test"},
        "machine": {
            "cpu": "Test CPU",
            "cores": 8,
            "host_memory_gib": 64,
            "device": "Test GPU" if device else None,
            "device_memory_gib": 16 if device else 0,
        },
        "links": {
            "h2d_pinned": _rate(sizes, [10, 20, 25]),
            "h2d_pageable": _rate(sizes, [5, 8, 9]),
            "d2h_pinned": _rate(sizes, [11, 21, 26]),
            "d2h_pageable": _rate(sizes, [4, 7, 8]),
        }
        if device
        else None,
        "memory": {"read_gbps": 40, "copy_gbps": 15},
        "gemm": {
            "dtype": "bfloat16",
            "curves": [
                _curve([1, 16, 256, 4096], [1, 16, 100, 120], n=1000, k=1000),
                _curve([1, 16, 256, 4096], [2, 30, 200, 240], n=4000, k=4000, shape="linear big"),
            ],
        },
        "attention": {
            "curves": [
                {
                    "layout": "gqa",
                    "batch": 64,
                    "context": 2048,
                    "group": 4,
                    "threads": [1, 2, 8],
                    "gbps": [5, 10, 30],
                },
                {
                    "layout": "gqa",
                    "batch": 8,
                    "context": 256,
                    "group": 4,
                    "threads": [1, 2, 8],
                    "gbps": [3, 6, 12],
                },
                {
                    "layout": "mla",
                    "batch": 64,
                    "context": 2048,
                    "group": 16,
                    "threads": [1, 8],
                    "gbps": [2, 12],
                },
            ]
        },
    }


# ---- shipped profiles ------------------------------------------------------------------------------
def test_every_shipped_profile_loads_and_round_trips(tmp_path):
    names = list_profiles()
    assert DATASHEET_NAMES <= set(names)
    for name in names:
        profile = load_profile(name)
        assert profile.name == name
        again = load_profile(profile.save(tmp_path / f"{name}.yaml"))
        assert again == profile
        assert again.fingerprint() == profile.fingerprint()
        if profile.provenance.kind == "datasheet":
            assert profile.provenance.sources and profile.notes
            assert profile.price.usd_per_hour or profile.price.purchase_usd


def test_datasheet_files_match_their_derivation():
    from runtime.profiler.datasheet import build
    from runtime.profiler.datasheet_machines import MACHINES

    assert {m.name for m in MACHINES} == DATASHEET_NAMES
    for machine in MACHINES:
        shipped = load_profile(machine.name)
        assert build(machine, shipped.provenance.date).fingerprint() == shipped.fingerprint(), machine.name


def test_datasheet_curves_are_physical():
    for name in DATASHEET_NAMES:
        p = load_profile(name)
        for curve in p.gemm_curves:
            assert all(b >= a for a, b in zip(curve.tflops, curve.tflops[1:])), curve.shape
        for link in (p.links.h2d_pinned, p.links.h2d_pageable, p.links.d2h_pinned):
            assert all(b >= a for a, b in zip(link.gbps, link.gbps[1:]))
            assert link.gbps[-1] / link.gbps[-2] < 1.05  # saturated by 1 GiB
        assert p.h2d_gbps(1 << 30, pinned=False) < p.h2d_gbps(1 << 30)
        assert p.attention_gbps(p.max_threads, "mla") <= p.attention_gbps(p.max_threads, "gqa")


# ---- round trip and validation -----------------------------------------------------------------------
def test_round_trip_through_yaml(tmp_path):
    for device in (True, False):
        profile = HardwareProfile.from_dict(_profile_dict(device))
        path = profile.save(tmp_path / "p.yaml")
        assert load_profile(path) == profile
        assert HardwareProfile.from_dict(yaml.safe_load(profile.to_yaml())) == profile


def test_fingerprint_tracks_measured_content_only():
    base = HardwareProfile.from_dict(_profile_dict())
    renamed = _profile_dict()
    renamed["name"] = "other"
    renamed["price"] = {"usd_per_hour": 1.0}
    assert HardwareProfile.from_dict(renamed).fingerprint() == base.fingerprint()
    changed = _profile_dict()
    changed["memory"]["read_gbps"] = 41
    assert HardwareProfile.from_dict(changed).fingerprint() != base.fingerprint()
    assert base.with_efficiency(gemm=0.8).fingerprint() != base.fingerprint()


def _set(data: dict, path: str, value) -> None:
    keys = path.replace("[", ".").replace("]", "").split(".")
    for key in keys[:-1]:
        data = data[int(key)] if key.isdigit() else data[key]
    last = keys[-1]
    if value is _DELETE:
        del data[last]
    else:
        data[int(last) if last.isdigit() else last] = value


_DELETE = object()

BROKEN = [
    ("schema_version", 2, "schema_version: 2 is not supported"),
    ("gemm.curves[1].tflops", [1, -2, 3, 4], "gemm.curves[1].tflops: expected a non-empty list of positive"),
    ("gemm.curves[0].tflops", [1, 2, 3], "gemm.curves[0].tflops: has 3 values but rows has 4"),
    ("gemm.curves[0].rows", [1, 16, 16, 4096], "gemm.curves[0].rows: expected strictly increasing"),
    ("gemm.curves[0].n", 0, "gemm.curves[0].n: expected a positive integer"),
    ("gemm.curves[0].tflops", _DELETE, "gemm.curves[0].tflops: missing"),
    ("gemm.dtype", "int4", "gemm.dtype: expected one of"),
    ("memory.read_gbps", 0, "memory.read_gbps: expected a positive number"),
    ("memory.copy_gbps", "fast", "memory.copy_gbps: expected a positive number"),
    ("links.h2d_pinned.gbps", [10, 20], "links.h2d_pinned.gbps: has 2 values but sizes has 3"),
    ("links.d2h_pageable", _DELETE, "links.d2h_pageable: missing"),
    ("links", None, "links: missing (required when machine.device is set)"),
    ("machine.cores", 2.5, "machine.cores: expected a positive integer"),
    ("machine.turbo", True, "machine: unknown field(s) turbo"),
    ("provenance.kind", "guessed", "provenance.kind: expected one of measured, datasheet, calibrated"),
    ("attention.curves[2].layout", "mha", "attention.curves[2].layout: expected one of gqa, mla"),
    ("attention.curves", [], "attention.curves: expected a non-empty list"),
    ("efficiency", {"gemm": -1}, "efficiency.gemm: expected a positive number"),
    ("gemm", _DELETE, "gemm: missing"),
]


@pytest.mark.parametrize(("path", "value", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_field_is_named(tmp_path, path, value, message):
    data = copy.deepcopy(_profile_dict())
    _set(data, path, value)
    file = tmp_path / "broken.yaml"
    file.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError) as err:
        load_profile(file)
    assert message in str(err.value)
    assert str(file) in str(err.value)


def test_links_must_be_null_without_device():
    data = _profile_dict(device=False)
    data["links"] = _profile_dict()["links"]
    with pytest.raises(UserError, match="links: must be null"):
        HardwareProfile.from_dict(data)


def test_datasheet_profile_must_name_sources():
    data = _profile_dict()
    data["provenance"] = {"kind": "datasheet"}
    with pytest.raises(UserError, match="provenance.sources"):
        HardwareProfile.from_dict(data)


def test_truncated_file_names_a_missing_field(tmp_path):
    text = HardwareProfile.from_dict(_profile_dict()).to_yaml()
    lines = text.splitlines()
    in_attention = lines.index("attention:") + 4  # inside the first curve
    for cut in (len(lines) // 3, len(lines) // 2, in_attention):
        file = tmp_path / "partial.yaml"
        file.write_text("\n".join(lines[:cut]) + "\n")
        with pytest.raises(UserError, match=r"partial\.yaml: \S+: "):
            load_profile(file)


def test_unknown_name_and_bad_yaml(only_user_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MOELENS_PROFILES_DIR", str(tmp_path))
    assert list_profiles() == []
    with pytest.raises(UserError, match="no hardware profile named 'nope'"):
        load_profile("nope")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_profile("bad")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_profile("list")


# ---- interpolation ---------------------------------------------------------------------------------
def test_gemm_interpolation_monotone_and_clamped():
    data = _profile_dict()
    data["gemm"]["curves"][0]["shape"] = "linear small"
    p = HardwareProfile.from_dict(data)
    small = [p.gemm_tflops(m, 1000, 1000) for m in (1, 2, 5, 16, 50, 256, 1000, 4096)]
    assert small == sorted(small)
    assert p.gemm_tflops(16, 1000, 1000) == pytest.approx(16)
    assert p.gemm_tflops(4, 1000, 1000) == pytest.approx(4)  # log-log linear: 1 -> 16
    assert p.gemm_tflops(0.5, 1000, 1000) == pytest.approx(1)  # clamped below
    assert p.gemm_tflops(1e6, 1000, 1000) == pytest.approx(120)  # clamped above
    # unmeasured shapes: seconds = a + b * elements fitted at m; two curves pin a and b exactly
    t_small, t_big = 2e6 * 256 / 100e12, 2 * 1.6e7 * 256 / 200e12
    b = (t_big - t_small) / 1.5e7
    a = t_small - b * 1e6
    assert p.gemm_time_model(256) == (pytest.approx(a), pytest.approx(b))
    assert p.gemm_tflops(256, 2000, 2000) == pytest.approx(2 * 4e6 * 256 / (a + b * 4e6) / 1e12)
    assert 100 < p.gemm_tflops(256, 2000, 2000) < 200
    assert p.gemm_tflops(256, 10, 10) < 0.1  # a tiny shape pays the fixed cost
    assert p.gemm_tflops(256, 10**5, 10**5) == pytest.approx(2 * 256 / b / 1e12, rel=1e-3)  # bytes/FLOPs only
    assert p.gemm_tflops(256, 1000, 1000, matrices=3) == pytest.approx(100)  # three such GEMMs: the same rate


def test_link_and_attention_interpolation():
    p = HardwareProfile.from_dict(_profile_dict())
    assert p.has_device
    rates = [p.h2d_gbps(s) for s in (1e5, 1 << 20, 4 << 20, 1 << 24, 1 << 27, 1 << 28, 1e12)]
    assert rates == sorted(rates) and rates[0] == 10 and rates[-1] == 25
    assert p.h2d_gbps(1 << 28, pinned=False) == 9
    assert p.d2h_gbps(1 << 28) == 26 and p.d2h_gbps(1 << 28, pinned=False) == 8
    assert p.attention_gbps(1) == 5 and p.attention_gbps(8) == 30  # largest batch x context
    assert p.attention_gbps(5) == pytest.approx(20)  # linear in threads
    assert p.attention_gbps(64) == 30  # clamped
    assert p.attention_gbps(8, batch=8, context=300) == 12  # nearest operating point
    assert p.attention_gbps(8, "mla") == 12
    cpu_only = HardwareProfile.from_dict(_profile_dict(device=False))
    assert not cpu_only.has_device and cpu_only.h2d_gbps(1 << 30) == 15  # host copy rate
    data = _profile_dict()
    data["attention"]["curves"] = data["attention"]["curves"][:1]
    assert HardwareProfile.from_dict(data).attention_gbps(8, "mla") == 30  # falls back to another layout


def test_machine_profile_names():
    assert (
        MachineIdentity("Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz", 80, "NVIDIA A40").profile_name
        == "nvidia-a40-intel-xeon-platinum-8380-80c"
    )
    assert (
        MachineIdentity("AMD EPYC 7453 28-Core Processor", 56, None).profile_name == "cpu-amd-epyc-7453-56c"
    )


def test_find_profile_for_this_machine(only_user_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MOELENS_PROFILES_DIR", str(tmp_path))
    assert locations.user_dir("profiles") == tmp_path
    with pytest.raises(UserError, match="make profile"):
        find_profile_for_this_machine()
    name = this_machine().profile_name
    HardwareProfile.from_dict({**_profile_dict(), "name": name}).save(tmp_path / f"{name}.yaml")
    assert find_profile_for_this_machine().name == name


def test_planner_profile_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, planner.hardware.profile; planner.hardware.profile.list_profiles(); sys.exit('torch' in sys.modules)"
    repo_root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=str(repo_root)).returncode == 0


# ---- the profiler ----------------------------------------------------------------------------------
def _roughly_non_decreasing(values, tolerance=0.5) -> bool:
    """Each value at least `tolerance` x the best before it (noise allowed, real drops not)."""
    best = values[0]
    for value in values[1:]:
        if value < tolerance * best:
            return False
        best = max(best, value)
    return True


@pytest.mark.slow
def test_tiny_profile_measures_this_machine(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from runtime.cli import main
    from runtime.profiler.grids import thread_grid

    monkeypatch.setenv("MOELENS_PROFILES_DIR", str(tmp_path / "profiles"))
    out = tmp_path / "measured.yaml"
    assert main(["profile", "--sizing", "tiny", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    profile = load_profile(out)  # validation: all rates positive
    assert profile.provenance.kind == "measured" and profile.machine.cores >= 1
    assert profile.name == this_machine().profile_name
    assert profile.machine.fingerprint is not None  # the spot check's figures, stored
    for curve in profile.gemm_curves:
        assert len(curve.rows) >= 2
        assert curve.tflops[-1] > 2 * curve.tflops[0], curve  # 64 rows >> 1 row
        assert _roughly_non_decreasing(curve.tflops), curve
    assert {c.layout for c in profile.attention_curves} == {"gqa", "mla"}
    assert all(c.threads == thread_grid(profile.machine.cores) for c in profile.attention_curves)
    assert profile.overheads.measured and profile.overheads.call_s.decode_step > 0
    if profile.has_device:
        for link in (profile.links.h2d_pinned, profile.links.d2h_pinned):
            assert _roughly_non_decreasing(link.gbps), link
    else:
        assert profile.links is None and profile.machine.device_memory_gib == 0


def test_copy_to_device_on_cpu_copies():
    torch = pytest.importorskip("torch")
    from runtime.transfer import copy_to_device, copy_to_host

    src = torch.arange(10, dtype=torch.float32)
    dst = torch.empty_like(src)
    assert copy_to_device(dst, src, None) is None and torch.equal(dst, src)
    back = torch.zeros_like(src)
    copy_to_host(back, dst)
    assert torch.equal(back, src)

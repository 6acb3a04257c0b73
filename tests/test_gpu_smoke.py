"""`bench.gpu_smoke --dry-run`: every stage's logic on the CPU at small shapes, each result saved as it ends; a
stage past its budget is stopped and saved with what it had."""

from __future__ import annotations

import json
import time

import pytest

from bench import gpu_smoke

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_dry_run_runs_every_stage_and_saves_each_result(tmp_path):
    assert gpu_smoke.main(["--dry-run", "--out", str(tmp_path)]) == 0
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in results] == [name for name, _, _ in gpu_smoke.stages()]
    assert all(r["status"] in ("ok", "skipped") for r in results), [
        (r["stage"], r.get("error")) for r in results
    ]
    by_stage = {r["stage"]: r for r in results}
    assert by_stage["exactness"]["all_identical"]
    assert set(by_stage["exactness"]["variants"]) == {
        "resident",
        "streamed",
        "streamed_three_slots",
        "streamed_delayed",
    }
    pins = by_stage["pinning_and_link"]["pinning"]
    assert all(p["exact_pinned_bytes"] == p["asked_bytes"] for p in pins)  # pinned exactly what was asked
    assert all(r["grouped_s"] and r["looped_s"] > 0 for r in by_stage["gemm"]["experts"].values())
    assert (tmp_path / "trace.json").stat().st_size > 0 and by_stage["sync_audit"]["trace"]["steps"] == 3
    for stage in ("predicted_mixtral", "predicted_deepseek"):
        assert by_stage[stage]["stream_weights"] and by_stage[stage]["achieved_tok_s"] > 0
        assert by_stage[stage]["predicted_tok_s"] > 0 and by_stage[stage]["streamed_bytes_per_token"] > 0
    assert "## exactness: ok" in (tmp_path / "summary.md").read_text()


def test_a_stage_past_its_budget_is_saved_with_what_it_had(tmp_path):
    ctx = gpu_smoke.Context(device=None, dry_run=True, out=tmp_path, budget_s=0.0)

    def slow(context):
        context.keep("first_half", 1)
        time.sleep(5)
        return {"never": True}

    result = gpu_smoke.run_stage("slow", 0.2, slow, ctx)
    assert result["status"] == "timeout" and result["first_half"] == 1 and "never" not in result
    assert result["seconds"] < 2
    gpu_smoke.save(tmp_path, result)
    assert json.loads((tmp_path / "results.jsonl").read_text())["status"] == "timeout"

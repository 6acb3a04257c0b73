"""`bench.bench_link_batching` split over holds of the machine: `--pass K` runs and saves one pass, `--summarize`
reads the saved passes back into the medians (no engine runs here: each run's report is made up from its plan)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from bench import bench_link_batching
from bench.common import cpu_times, steal_share
from planner.errors import UserError
from planner.specs.spec import load_spec

ACHIEVED = {1: 0.9, 2: 0.7, 3: 1.1}  # each pass's achieved tok/s, as a share of the plan's


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    import runtime.checkpoint

    checkpoint = SimpleNamespace(spec=load_spec("qwen3-mini"), tokenizer=None)
    monkeypatch.setattr(bench_link_batching, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(bench_link_batching, "ensure_checkpoint", lambda model, layers: tmp_path)
    monkeypatch.setattr(runtime.checkpoint, "open_checkpoint", lambda path: checkpoint)
    monkeypatch.setattr(bench_link_batching, "fixed_prompts", lambda tok, count, length, seed: [seed])

    def run_engine(checkpoint, plan, profile, prompts, gen_len):
        predicted = plan.predicted.generated_tok_s
        achieved = predicted * ACHIEVED[prompts[0] + 1]
        return {
            "throughput": {"end_to_end": {"achieved": achieved, "predicted": predicted}},
            "utilisation": {"resources": {"link": {"achieved": 0.5}}},
            "plan": json.loads(json.dumps(plan.to_dict(), default=str)),
        }

    monkeypatch.setattr(bench_link_batching, "run_engine", run_engine)
    speeds = iter([1.0, 0.9, 1.1, 0.8] * 20)  # the spot GEMM's speed before and after each run
    monkeypatch.setattr("runtime.profiler.spot_check.machine_speed", lambda profile, device: next(speeds))
    return tmp_path


def test_passes_run_one_at_a_time_then_summarize(fake_runs):
    common = ["--profile", "cpu-amd-epyc-2c", "--passes", "3", "--no-markdown"]
    for k in (1, 2, 3):
        assert bench_link_batching.main([*common, "--pass", str(k)]) == 0
    assert not (fake_runs / "link-batching.csv").exists()  # a single pass writes no summary
    assert bench_link_batching.main([*common, "--summarize"]) == 0
    rows = (fake_runs / "link-batching.csv").read_text().splitlines()
    assert len(rows) == 4  # header, module batching, model batching at N and at N/2
    with pytest.raises(UserError, match="not planned as this run plans"):
        bench_link_batching.main([*common, "--gen-len", "16", "--summarize"])
    with pytest.raises(UserError, match="missing"):
        bench_link_batching.main([*common, "--passes", "4", "--summarize"])


def test_the_summary_is_the_median_pass(fake_runs):
    common = ["--profile", "cpu-amd-epyc-2c", "--passes", "3", "--no-markdown"]
    for k in (3, 1, 2):
        bench_link_batching.main([*common, "--pass", str(k)])
    bench_link_batching.main([*common, "--summarize"])
    frame = pd.read_csv(fake_runs / "link-batching.csv")
    assert (frame["achieved_tok_s"] / frame["predicted_tok_s"]).round(4).tolist() == [0.9] * 3
    # passes 1..3 (run in the order 3, 1, 2), each process's first reading a warm-up
    assert frame["machine_speed"].iloc[0] == "1.00, 0.90 / 0.80, 1.00 / 0.90, 1.10"


def test_steal_share_is_the_stolen_ticks_over_all_ticks():
    assert steal_share((10, 100), (30, 300)) == 0.1
    assert steal_share((5, 50), (5, 50)) == 0.0
    steal, total = cpu_times()
    assert 0 <= steal <= total

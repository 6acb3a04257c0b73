"""The emulated accelerator link: a paced copy worker, a capped device memory, the planner's emulated mode
and model-based batching.

- `PacedLink` books transfers on the wall clock (checked with a fake clock: schedule, occupancy, busy time
  inside a window) and its achieved rate is within 10% of the requested one for 8-64 MiB copies (a behaviour
  test of pacing: the copy runs at memory speed, far faster than the link, and sleeps out the rest).
- A 2-layer model under an emulated 0.2 GB/s link gives the same greedy tokens as unemulated, with every
  streamed byte through the link; a device set larger than the emulated memory is refused with a UserError.
- Planner: an emulated profile round-trips, plans link-bound with the routed experts streamed, one token
  group and the device memory as the limit; model-based batching holds the KV cache on the device (N bounded
  by it); a too-small device is refused with a clear message; `--vary link-gbps` needs an emulated profile.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from planner.errors import UserError
from planner.hardware.emulated_link import emulate_link
from planner.hardware.profile import HardwareProfile, load_profile
from planner.perf.memory import Budgets
from planner.plans.build import make_plan
from planner.plans.plan import Plan
from planner.plans.sweep import Problem, run_sweep
from planner.plans.workload import Workload
from planner.specs.spec import load_spec
from runtime.transfer import PacedLink

MiB = 1 << 20


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_paced_link_books_transfers_back_to_back_on_the_wall_clock():
    clock = FakeClock()
    link = PacedLink(2.0, clock=clock)
    link.occupy(int(1e9))  # 0.5 s of activation traffic, not waited for
    link.occupy(int(2e9))  # queued behind it: 100.5 .. 101.5
    clock.now = 103.0  # idle link: the next transfer starts now
    link.occupy(int(1e9))  # 103.0 .. 103.5
    assert link.busy_seconds == pytest.approx(2.0)
    assert link.bytes_moved == int(4e9)
    assert link.busy_between(100.25, 101.0) == pytest.approx(0.75)
    assert link.busy_between(101.2, 103.25) == pytest.approx(0.55)
    assert link.busy_between(101.6, 102.9) == 0.0
    assert link.busy_between(0.0, 200.0) == pytest.approx(2.0)


def test_paced_link_achieves_the_requested_rate_for_8_to_64_mib_copies():
    link = PacedLink(0.5)
    for size in (8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB):
        src = np.ones(size, dtype=np.uint8)
        dst = np.empty_like(src)
        np.copyto(dst, src)  # warm, as the streamer's reused slots are
        copies = 256 * MiB // size  # back to back, as the copy worker streams layers: 0.54 s each
        began = time.perf_counter()
        busy = sum(link.copy(dst, src) for _ in range(copies))
        achieved = copies * size / (time.perf_counter() - began) / 1e9
        assert achieved == pytest.approx(0.5, rel=0.10), f"{size // MiB} MiB copies at {achieved:.3f} GB/s"
        assert busy == pytest.approx(copies * size / 0.5e9)
        assert dst[-1] == 1
    assert link.bytes_moved == 4 * 256 * MiB


# ----- the engine under an emulated link -----
TINY = dict(
    name="emulated-tiny",
    num_layers=2,
    hidden_size=128,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    vocab_size=320,
    num_experts=6,
    top_k=2,
    moe_intermediate_size=48,
    max_position_embeddings=256,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from runtime.checkpoint import open_checkpoint, write_random_checkpoint

    directory = tmp_path_factory.mktemp("emulated")
    write_random_checkpoint(
        dataclasses.replace(load_spec("mixtral-mini"), **TINY), directory, dtype="fp32", seed=3
    )
    return open_checkpoint(directory)


def _greedy_tokens(checkpoint, config) -> tuple[dict, object]:
    from runtime.engine import Engine, Request
    from runtime.sampling import SamplingParams

    rng = np.random.default_rng(0)
    requests = [
        Request(
            id=i,
            prompt_token_ids=rng.integers(3, 320, size=5 + i).tolist(),
            params=SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
        )
        for i in range(6)
    ]
    out = {}
    engine = Engine(checkpoint, config)
    try:
        stats = engine.run(requests, lambda done: out.__setitem__(done.id, done.token_ids))
        return out, (engine, stats)
    finally:
        engine.close()


@pytest.mark.usefixtures("single_torch_thread")
def test_emulated_link_gives_the_same_greedy_tokens_with_every_stream_copy_paced(checkpoint):
    from runtime.engine import EngineConfig

    base = EngineConfig.build(
        num_seqs=4, attn_batch=4, expert_batch=8, kv_budget_bytes=1 << 20, kv_block_size=4, prefill_chunk=16
    )
    plain, _ = _greedy_tokens(checkpoint, base)
    emulated = base.with_(stream_weights=True, emulated_link_gbps=0.2, device_memory_bytes=64 * MiB)
    assert emulated.streams and emulated.emulated
    paced, (engine, stats) = _greedy_tokens(checkpoint, emulated)
    assert paced == plain
    link = engine.emulated.link
    streamed = engine.store.streamed_bytes
    assert streamed > 0 and link.bytes_moved >= streamed  # every streamed byte crossed the link
    assert engine.streamer.copy_log  # through the streamer's copy worker
    assert 0 < stats.link_busy_seconds <= stats.decode_seconds
    assert stats.peak_device_bytes == engine.emulated.device_bytes > 0


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.parametrize("parts", [2, 4])
def test_layers_streamed_in_parts_give_the_same_tokens_in_smaller_slots(checkpoint, parts):
    from runtime.engine import EngineConfig

    base = EngineConfig.build(
        num_seqs=4, attn_batch=4, expert_batch=8, kv_budget_bytes=1 << 20, kv_block_size=4, prefill_chunk=16
    )
    plain, _ = _greedy_tokens(checkpoint, base)
    emulated = base.with_(
        stream_weights=True,
        emulated_link_gbps=50.0,
        device_memory_bytes=64 * MiB,
        resident_experts_per_layer=1,
    )
    whole, (engine, _) = _greedy_tokens(checkpoint, emulated)
    in_parts, (parted, _) = _greedy_tokens(checkpoint, emulated.with_(stream_parts=parts))
    assert in_parts == whole == plain
    assert parted.store.expert_ranges[0] == (0, 1) and len(parted.store.expert_ranges) == 1 + parts
    assert len(parted.streamer.copy_log) > len(engine.streamer.copy_log)
    assert parted.streamer.buffer_bytes < engine.streamer.buffer_bytes * (2 / parts + 0.1)
    assert parted.streamer.max_slots_in_use == 1  # each part handed back before the next is read
    with pytest.raises(UserError, match="token groups"):
        emulated.with_(stream_parts=2, token_groups=2)
    with pytest.raises(UserError, match="every module but the routed"):
        _greedy_tokens(checkpoint, emulated.with_(stream_parts=2, resident_modules=("embed", "lm_head")))


@pytest.mark.usefixtures("single_torch_thread")
def test_a_device_set_larger_than_the_emulated_memory_is_refused(checkpoint):
    from runtime.engine import Engine, EngineConfig

    config = EngineConfig.build(
        num_seqs=4,
        kv_budget_bytes=1 << 20,
        stream_weights=True,
        emulated_link_gbps=1.0,
        device_memory_bytes=64 << 10,
    )
    with pytest.raises(UserError, match="exceeds the emulated device memory") as err:
        Engine(checkpoint, config)
    assert "resident weights" in err.value.cause and "stream buffers" in err.value.cause
    model_based = config.with_(batching="model", kv_budget_bytes=32 * MiB, device_memory_bytes=16 * MiB)
    with pytest.raises(UserError, match="KV cache"):
        Engine(checkpoint, model_based)


# ----- the planner -----
@pytest.fixture(scope="module")
def emulated() -> HardwareProfile:
    return emulate_link(load_profile("cpu-amd-epyc-2c"), 1.0, 0.6)


def test_emulated_profile_round_trips_and_keeps_the_cpu_measurements(emulated, tmp_path):
    cpu = load_profile("cpu-amd-epyc-2c")
    loaded = load_profile(emulated.save(tmp_path / "emulated.yaml"))
    assert loaded == emulated and loaded.emulated_link.gbps == 1.0
    assert loaded.gemm_curves == cpu.gemm_curves and loaded.attention_curves == cpu.attention_curves
    assert loaded.h2d_gbps(8 * MiB) == loaded.d2h_gbps(1 << 30) == 1.0
    assert loaded.computes_on_host and loaded.has_device and "emulated link" in loaded.machine.device
    assert emulate_link(emulated, 2.0, 0.6).fingerprint() != emulated.fingerprint()
    with pytest.raises(UserError, match="real device"):
        emulate_link(load_profile("a5000-epyc7453"), 1.0, 0.6)


def test_profiling_for_an_emulated_link_measures_gemms_in_the_model_dtype(tmp_path, monkeypatch):
    """Plans on an emulated device compute in the model dtype, as on a GPU: `runtime profile --emulate-link`
    measures the curves in it, with no float32 pick (whose 16-bit pricing is a one-shape ratio)."""
    import runtime.profiler.measure as measure
    from runtime.cli import main

    asked = []

    def fake_measure(sizing, command, model_dtype_gemms=False, **_):
        asked.append((command, model_dtype_gemms))
        return load_profile("cpu-amd-epyc-2c")

    monkeypatch.setattr(measure, "measure_profile", fake_measure)
    out = tmp_path / "emulated.yaml"
    args = ["profile", "--sizing", "tiny", "--emulate-link", "0.5", "--emulate-device-gb", "0.125"]
    assert main([*args, "--out", str(out)]) == 0
    assert asked == [("runtime profile --sizing tiny --emulate-link 0.5 --emulate-device-gb 0.125", True)]
    assert load_profile(out).emulated_link.gbps == 0.5
    assert main(["profile", "--sizing", "tiny", "--out", str(tmp_path / "cpu.yaml")]) == 0
    assert asked[-1][1] is False  # a CPU profile picks the dtype its own plans run fastest in


def _plan(profile, batching="module", num_prompts=256):
    spec = load_spec("mixtral-mini").with_layers(4)
    return make_plan(
        spec, profile, Workload.fixed(64, 32, num_prompts), Budgets.from_args(profile, 4.0), batching=batching
    )


def test_emulated_link_plans_like_a_device_and_names_the_link(emulated):
    plan = _plan(emulated)
    assert (
        plan.decisions.emulated_link_gbps == 1.0
        and plan.decisions.token_groups == 1
        and plan.decisions.stream_weights
    )
    assert plan.decisions.resident_experts_per_layer < 8 and "experts" not in plan.decisions.resident_modules
    assert plan.bottleneck == "link" and plan.utilisation["link"] > 0.85
    assert plan.memory["device"]["total"] <= plan.memory["device"]["budget"] == 0.6 * (1 << 30)
    assert plan.memory["device"]["reserve"] == 0.0
    assert Plan.from_yaml(plan.to_yaml()) == plan
    from planner.cli import plan_summary
    from planner.plans.explain import explain

    assert "emulated link" in plan_summary(plan) and "emulated link" in explain(plan, what_if=False)


def test_model_based_batching_keeps_kv_on_the_device_and_is_bounded_by_it(emulated):
    # 1024 prompts: with 256 the whole job fits one wave in the device's KV cache, and N is the job's size
    module, model = _plan(emulated, num_prompts=1024), _plan(emulated, "model", num_prompts=1024)
    assert model.decisions.batching == "model" and model.decisions.attn_batch == model.decisions.num_seqs
    assert model.memory["device"]["kv_cache"] > 0 and model.memory["host"]["kv_cache"] == 0
    assert model.memory["device"]["total"] <= model.memory["device"]["budget"]
    assert model.decisions.num_seqs < module.decisions.num_seqs
    assert module.predicted.generated_tok_s > model.predicted.generated_tok_s
    roomier = _plan(emulate_link(emulated, 1.0, 1.2), "model", num_prompts=1024)
    assert roomier.decisions.num_seqs > model.decisions.num_seqs


def test_too_small_an_emulated_device_is_refused_with_the_reason(emulated):
    with pytest.raises(UserError, match="emulated device .* cannot hold") as err:
        _plan(emulate_link(emulated, 1.0, 0.15))
    assert "--emulate-device-gb" in err.value.fix


def test_a_device_too_small_for_two_whole_layers_streams_them_in_parts(emulated):
    tight = _plan(emulate_link(emulated, 1.0, 0.4))
    assert tight.decisions.stream_parts > 1 and tight.bottleneck == "link"
    assert _plan(load_profile("a5000-epyc7453")).decisions.stream_parts == 1  # two token groups: whole layers
    device = tight.memory["device"]
    assert device["total"] <= device["budget"] and device["stream_buffers"] < 2 * 176e6
    assert Plan.from_yaml(tight.to_yaml()) == tight
    from runtime.engine import EngineConfig

    assert EngineConfig.from_plan(tight).decisions.stream_parts == tight.decisions.stream_parts
    with pytest.raises(UserError, match="parts"):
        _plan(emulate_link(emulated, 1.0, 0.15))


def test_plans_without_the_new_fields_still_load(emulated):
    data = _plan(emulated).to_dict()
    del data["batching"], data["emulated_link_gbps"], data["stream_parts"]
    plan = Plan.from_dict(data)
    assert (
        plan.decisions.batching == "module"
        and plan.decisions.emulated_link_gbps is None
        and plan.decisions.stream_parts == 1
    )


def test_sweep_over_link_speed_finds_where_the_link_stops_binding(emulated):
    spec = load_spec("mixtral-mini").with_layers(4)
    problem = Problem(spec, emulated, Workload.fixed(64, 32, 256), Budgets.from_args(emulated, 4.0))
    frame = run_sweep(problem, "link-gbps", [0.5, 2.0, 64.0])
    assert list(frame["bottleneck"][:1]) == ["link"] and frame["bottleneck"].iloc[-1] != "link"
    assert frame["generated_tok_s"].iloc[0] < frame["generated_tok_s"].iloc[-1]
    assert frame["link_busy"].iloc[0] > frame["link_busy"].iloc[-1]
    cpu = dataclasses.replace(problem, profile=load_profile("cpu-amd-epyc-2c"))
    with pytest.raises(UserError, match="emulated link"):
        run_sweep(cpu, "link-gbps", [1.0])

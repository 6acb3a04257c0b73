"""Engine parts without a model: block allocator, host KV cache layout, scheduler, weight placement, streamer."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.errors import UserError
from planner.plans.decisions import Decisions
from planner.specs.spec import load_spec
from runtime.engine.config import EngineConfig
from runtime.engine.expert_stacks import expert_weights, is_stack_name, stack_names
from runtime.engine.host_arena import CudaHostRegister, HostArena, PinRecorder, aligned
from runtime.engine.kv_cache import BlockAllocator, HostKVCache, SlotBlockTables, blocks_for
from runtime.engine.scheduler import RUNNING, Request, Scheduler, Sequence
from runtime.engine.streamer import LayerStreamer
from runtime.engine.weights import PackedLayer, WeightStore, expert_of, module_of
from runtime.sampling import GenerationState, SamplingParams


def tiny_spec(**changes):
    spec = load_spec("mixtral-mini")
    base = dict(
        name="mixtral-tiny",
        num_layers=3,
        hidden_size=32,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        vocab_size=300,
        num_experts=4,
        top_k=2,
        moe_intermediate_size=16,
        max_position_embeddings=512,
    )
    return dataclasses.replace(spec, **{**base, **changes})


# ----- block allocator and KV cache -----
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=60))
def test_block_allocator_owns_each_block_once(num_blocks, ops):
    allocator = BlockAllocator(num_blocks)
    owned: list[list[int]] = []
    for grow, count in ops:
        if grow:
            if allocator.can_allocate(count):
                owned.append(allocator.allocate(count))
            else:
                with pytest.raises(RuntimeError):
                    allocator.allocate(count)
        elif owned:
            allocator.free(owned.pop(count % len(owned)))
        flat = [b for blocks in owned for b in blocks]
        assert len(flat) == len(set(flat)) == allocator.num_used
        assert allocator.num_used + allocator.num_free == num_blocks
        assert all(0 <= b < num_blocks for b in flat)
    nonempty = [blocks for blocks in owned if blocks]
    if nonempty:
        allocator.free(nonempty[0])
        with pytest.raises(RuntimeError, match="freed but not allocated"):
            allocator.free(nonempty[0])


def test_kv_cache_size_layout_and_round_trip():
    spec = tiny_spec()
    block_size = 4
    per_block = spec.num_layers * 2 * spec.num_kv_heads * block_size * spec.head_dim * 4
    cache = HostKVCache(spec, torch.float32, budget_bytes=per_block * 10 + 5, block_size=block_size)
    assert cache.num_blocks == 10 and cache.capacity_tokens == 40
    assert cache.k[0].shape == (10, spec.num_kv_heads, block_size, spec.head_dim)
    blocks = torch.tensor([7, 2, 9], dtype=torch.int32)
    k = torch.randn(11, spec.num_kv_heads, spec.head_dim)
    v = torch.randn(11, spec.num_kv_heads, spec.head_dim)
    cache.write_tokens(1, blocks, 0, k[:6], v[:6])
    cache.write_tokens(1, blocks, 6, k[6:], v[6:])
    assert torch.equal(cache.k[1][2, :, 1], k[5]) and torch.equal(cache.v[1][9, :, 2], v[10])
    read_k, read_v = cache.read_tokens(1, blocks, 11)
    assert torch.equal(read_k, k) and torch.equal(read_v, v)
    with pytest.raises(UserError, match="KV budget"):
        HostKVCache(spec, torch.float32, budget_bytes=per_block, block_size=block_size)


def test_slot_block_tables_rows():
    tables = SlotBlockTables(num_slots=3, max_blocks_per_seq=4)
    tables.set(2, 0, [5, 6])
    tables.set(2, 2, [1])
    rows = tables.rows(torch.tensor([2, 0]))
    assert rows.dtype == torch.int32 and rows[0, :3].tolist() == [5, 6, 1]
    assert tables.rows(torch.tensor([2]), width=2).tolist() == [[5, 6]]
    with pytest.raises(RuntimeError):
        tables.set(1, 3, [1, 2])


# ----- scheduler -----
def make_scheduler(
    prompt_lens, max_tokens, num_slots, num_blocks, block_size=4, prefill_chunk=16, max_len=10**6
):
    allocator = BlockAllocator(num_blocks)
    tables = SlotBlockTables(num_slots, blocks_for(min(max_len, num_blocks * block_size), block_size))
    seqs = [
        Sequence(
            Request(i, [3] * n, SamplingParams(temperature=0, max_tokens=g, ignore_eos=True)),
            GenerationState(
                [3] * n, SamplingParams(temperature=0, max_tokens=g, ignore_eos=True), frozenset({2})
            ),
            arrival=i,
        )
        for i, (n, g) in enumerate(zip(prompt_lens, max_tokens))
    ]
    return Scheduler(iter(seqs), num_slots, allocator, tables, block_size, prefill_chunk, max_len), seqs


def drive(scheduler: Scheduler, check) -> list[Sequence]:
    """Run the scheduler with a fake forward that always samples token 7; `check` sees every plan."""
    finished = []
    for _ in range(10_000):
        if scheduler.done:
            return finished
        plan = scheduler.schedule()
        assert not plan.empty
        check(scheduler, plan)
        sampled = {seq: 7 for seq in plan.decode}
        sampled.update({chunk.seq: 7 for chunk in plan.prefill if chunk.completes_prompt})
        finished += scheduler.commit(plan, sampled)
    raise AssertionError("scheduler did not finish")


@pytest.mark.parametrize("num_blocks", [8, 14, 200])
def test_scheduler_runs_every_request_with_bounded_kv_and_slots(num_blocks):
    rng = random.Random(num_blocks)
    prompt_lens = [rng.randint(1, 17) for _ in range(23)]
    max_tokens = [rng.randint(1, 9) for _ in range(23)]
    scheduler, seqs = make_scheduler(prompt_lens, max_tokens, num_slots=5, num_blocks=num_blocks)

    def check(sched, plan):
        assert len(sched.in_flight) <= 5
        assert sum(c.end - c.start for c in plan.prefill) <= sched.prefill_chunk
        held = [b for s in sched.in_flight for b in s.blocks]
        assert len(held) == len(set(held)) == sched.allocator.num_used
        for seq in plan.decode:
            # blocks grow with the sequence: exactly what its cached tokens plus this step's token need
            assert len(seq.blocks) == blocks_for(seq.num_cached + 1, 4)
            assert seq.status == RUNNING and seq.num_cached == seq.num_tokens - 1
        for chunk in plan.prefill:
            assert chunk.start == chunk.seq.num_cached and len(chunk.seq.blocks) == blocks_for(
                chunk.seq.prefill_target, 4
            )

    finished = drive(scheduler, check)
    assert sorted(s.request.id for s in finished) == list(range(23))
    for seq in seqs:
        assert (
            seq.state.token_ids == [7] * seq.request.params.max_tokens and seq.state.finish_reason == "length"
        )
    assert scheduler.allocator.num_used == 0
    if num_blocks == 8:
        assert scheduler.num_preemptions > 0
    if num_blocks == 200:
        assert scheduler.num_preemptions == 0


def test_scheduler_preempts_the_youngest_and_recomputes_it():
    scheduler, seqs = make_scheduler([4, 4, 4], [12, 12, 12], num_slots=3, num_blocks=8)
    preempted = []
    original = scheduler._preempt

    def spy(seq):
        preempted.append((seq.request.id, max(s.arrival for s in scheduler.in_flight)))
        original(seq)

    scheduler._preempt = spy
    drive(scheduler, lambda sched, plan: None)
    assert preempted and all(victim == youngest for victim, youngest in preempted)
    assert seqs[0].num_preemptions == 0
    victim = seqs[preempted[0][0]]
    assert victim.num_preemptions >= 1 and victim.state.token_ids == [7] * 12


def test_scheduler_refills_a_finished_slot_while_others_decode():
    scheduler, _ = make_scheduler([3, 3, 3], [2, 8, 8], num_slots=2, num_blocks=100)
    seen_mixed = False

    def check(sched, plan):
        nonlocal seen_mixed
        seen_mixed |= bool(plan.decode) and any(c.seq.request.id == 2 for c in plan.prefill)

    drive(scheduler, check)
    assert seen_mixed


def test_scheduler_rejects_a_prompt_the_cache_cannot_hold():
    scheduler, _ = make_scheduler([40], [1], num_slots=2, num_blocks=8)
    with pytest.raises(UserError, match="request 0"):
        scheduler.schedule()


def test_scheduler_stops_at_the_longest_length():
    scheduler, seqs = make_scheduler([5], [50], num_slots=1, num_blocks=100, max_len=9)
    drive(scheduler, lambda sched, plan: None)
    assert seqs[0].state.finish_reason == "length" and seqs[0].num_tokens == 9


# ----- config and weight placement -----
def test_engine_config_from_plan_reads_the_decisions():
    decisions = Decisions(
        num_seqs=64,
        attn_batch=16,
        expert_batch=256,
        kv_budget_bytes=1 << 30,
        kv_block_size=16,
        resident_modules=("qkv_proj",),
        resident_experts_per_layer=2,
        stream_weights=True,
        prefill_chunk=1024,
        attention_threads=2,
        compute_threads=2,
        token_groups=2,
    )
    config = EngineConfig.from_plan(SimpleNamespace(decisions=decisions), device="cpu")
    assert config.decisions == decisions and config.uses_overlap
    assert not config.streams  # no device: weights in place unless forced
    forced = config.with_(force_streaming=True)
    assert (
        forced.is_resident("qkv_proj")
        and forced.is_resident("experts", 1)
        and not forced.is_resident("experts", 2)
    )
    assert config.with_(num_seqs=8).decisions.num_seqs == 8 and config.with_(num_seqs=8).device == "cpu"
    with pytest.raises(UserError, match="num_seqs"):
        config.with_(num_seqs=0)
    with pytest.raises(UserError, match="unknown modules"):
        EngineConfig.build(resident_modules=("attention_core",))
    with pytest.raises(TypeError, match="no setting"):
        config.with_(overlap=True)


@pytest.mark.parametrize(
    "name, module",
    [
        ("embed", "embed"),
        ("lm_head", "lm_head"),
        ("final_norm", "lm_head"),
        ("layers.0.attn_norm", "qkv_proj"),
        ("layers.3.attn.k_norm", "qkv_proj"),
        ("layers.1.attn.kv_b_proj", "qkv_proj"),
        ("layers.2.attn.o_proj", "o_proj"),
        ("layers.0.mlp_norm", "router"),
        ("layers.0.moe.router_bias", "router"),
        ("layers.5.moe.experts.12.down_proj", "experts"),
        ("layers.0.moe.shared.up_proj", "shared_experts"),
        ("layers.0.moe.shared_gate", "shared_experts"),
        ("layers.0.mlp.gate_proj", "dense_mlp"),
    ],
)
def test_module_of_canonical_names(name, module):
    assert module_of(name) == module


def random_weights(spec, seed=0):
    from runtime.checkpoint.names import expected_tensors

    generator = torch.Generator().manual_seed(seed)
    return {t.canonical: torch.randn(t.shape, generator=generator) for t in expected_tensors(spec)}


def test_weight_store_places_resident_and_packs_streamed():
    spec = tiny_spec()
    weights = random_weights(spec)
    in_place = WeightStore(weights, spec, EngineConfig())
    assert in_place.packed is None and in_place.arena is None
    assert in_place.layers[1]["attn.q_proj"] is weights["layers.1.attn.q_proj"]
    gate, up, down = expert_weights(in_place.layers[1], 3)  # experts stacked: [E, 2I, h] and [E, h, I]
    assert torch.equal(gate, weights["layers.1.moe.experts.3.gate_proj"])
    assert torch.equal(up, weights["layers.1.moe.experts.3.up_proj"])
    assert torch.equal(down, weights["layers.1.moe.experts.3.down_proj"])
    assert set(in_place.layers[1]) >= set(stack_names(0, 4))
    recorder = PinRecorder()
    config = EngineConfig.build(
        force_streaming=True, resident_modules=("qkv_proj", "router"), resident_experts_per_layer=1
    )
    store = WeightStore(weights, spec, config, pinner=recorder)
    assert "attn.q_proj" in store.layers[2] and set(stack_names(0, 1)) <= set(store.layers[2])
    assert "attn.o_proj" not in store.layers[2] and not any(
        is_stack_name(n) for n in store.layers[2] if n not in stack_names(0, 1)
    )
    views = store.packed[2].views(store.packed[2].host)
    assert set(views) == {"attn.o_proj", *stack_names(1, 4)}
    assert views[stack_names(1, 4)[1]].shape == (3, 32, 16)
    assert torch.equal(expert_weights(views, 2)[2], weights["layers.2.moe.experts.2.down_proj"])
    assert torch.equal(expert_weights(views, 1)[0], weights["layers.2.moe.experts.1.gate_proj"])
    # one arena holds every layer and the non-resident embed and lm_head, pinned once, exactly its bytes
    assert store.globals["embed"].data_ptr() >= store.arena.buffer.data_ptr()
    assert torch.equal(store.globals["lm_head"], weights["lm_head"])
    assert recorder.pinned == [store.arena.nbytes] and store.pinned_bytes == store.arena.nbytes
    assert store.arena.nbytes == sum(aligned(layer.nbytes) for layer in store.packed) + sum(
        aligned(weights[n].numel() * 4) for n in ("embed", "lm_head")
    )
    store.close()
    assert recorder.pinned == [] and store.pinned_bytes == 0
    assert expert_of("layers.2.moe.experts.11.up_proj") == 11 and expert_of("layers.2.moe.router") is None


def test_failed_pin_is_a_user_error_with_a_smaller_budget(monkeypatch):
    class FailingCudart:
        def cudaHostRegister(self, ptr, size, flags):
            return 2  # cudaErrorMemoryAllocation

    monkeypatch.setattr(torch.cuda, "cudart", lambda: FailingCudart())
    with pytest.raises(UserError, match="page-lock .* GiB") as error:
        HostArena([1 << 20], CudaHostRegister()).pin()
    assert "--host-gb" in str(error.value)


# ----- streamer -----
def packed_layers(num_layers):
    generator = torch.Generator().manual_seed(num_layers)
    layers = [
        {"a": torch.randn(5, 3, generator=generator), "b": torch.randn(7, generator=generator).bfloat16()}
        for _ in range(num_layers)
    ]
    return layers, [PackedLayer.pack(layer) for layer in layers]


@pytest.mark.parametrize("pipelined,slots", [(False, 2), (True, 2), (True, 3)])
def test_streamer_copies_in_cyclic_order_into_its_slots(pipelined, slots):
    layers, packed = packed_layers(5)
    copied = []
    streamer = LayerStreamer(
        packed,
        torch.device("cpu"),
        slots,
        booking=lambda: "issued",
        on_copy_seconds=lambda seconds, booking: copied.append(booking),
    )
    for _ in range(3):
        if pipelined:  # next layer acquired before the current is released, as the two-group pipeline does
            held = streamer.acquire(0)
            for layer in range(5):
                assert torch.equal(held["a"], layers[layer]["a"]) and torch.equal(
                    held["b"], layers[layer]["b"]
                )
                nxt = streamer.acquire(layer + 1) if layer + 1 < 5 else None
                streamer.release(layer)
                held = nxt
        else:
            for layer in range(5):
                views = streamer.acquire(layer)
                assert torch.equal(views["a"], layers[layer]["a"])
                streamer.release(layer)
    streamer.close()
    order = [layer for layer, _ in streamer.copy_log]
    assert order == [i % 5 for i in range(len(order))] and len(order) == 3 * 5 + slots
    assert [slot for _, slot in streamer.copy_log] == [i % slots for i in range(len(order))]
    assert streamer.max_slots_in_use == (2 if pipelined else 1)
    assert copied == ["issued"] * len(order)
    assert streamer.copied_bytes == sum(packed[layer].nbytes for layer in order)


class GatedStreamer(LayerStreamer):
    """A streamer whose copy worker starts only when the test opens the gate."""

    def __init__(self, *args, **kwargs):
        self.gate = threading.Event()
        super().__init__(*args, **kwargs)

    def _copy_worker(self) -> None:
        self.gate.wait()
        super()._copy_worker()


def test_streamer_waits_only_when_a_streamed_tensor_is_first_read():
    layers, packed = packed_layers(3)
    streamer = GatedStreamer(packed, torch.device("cpu"))
    held = streamer.acquire(0)  # returns while no copy has run
    assert "a" in held and "missing" not in held and not streamer._ready_flags[0].is_set()
    reader = threading.Thread(target=lambda: torch.equal(held["a"], layers[0]["a"]))
    reader.start()
    reader.join(timeout=0.2)
    assert reader.is_alive()  # the first read waits for the copy ...
    streamer.gate.set()
    reader.join(timeout=10)
    assert not reader.is_alive() and torch.equal(held["b"], layers[0]["b"])  # ... and ends when it lands
    streamer.release(0)
    streamer.close()


def test_a_slot_released_unread_does_not_signal_its_next_copy(monkeypatch):
    """A layer with nothing read from its slot (DeepSeek's dense first layer streams nothing) is released without
    waiting for its copy; the next copy into that slot must still be waited for, not the stale one."""
    import numpy as np

    from runtime.engine import streamer as streamer_module

    generator = torch.Generator().manual_seed(3)
    layers = [{}, {"a": torch.randn(4, generator=generator)}, {"a": torch.randn(64, 64, generator=generator)}]
    packed = [PackedLayer.pack(layer) for layer in layers]
    slow_bytes = packed[2].nbytes

    class SlowNumpy:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def copyto(dst, src):
            if dst.nbytes == slow_bytes:
                time.sleep(0.3)  # layer 2's copy lands late
            np.copyto(dst, src)

    monkeypatch.setattr(streamer_module, "np", SlowNumpy())
    streamer = LayerStreamer(packed, torch.device("cpu"))
    streamer.acquire(0)  # nothing of layer 0 is read
    streamer.release(0)  # slot 0 gets layer 2 next
    held = streamer.acquire(1)
    assert torch.equal(held["a"], layers[1]["a"])
    streamer.release(1)
    assert torch.equal(streamer.acquire(2)["a"], layers[2]["a"])
    streamer.release(2)
    streamer.close()


def test_streamer_keeps_layers_when_they_fit_and_refuses_out_of_order():
    _, packed = packed_layers(2)
    streamer = LayerStreamer(packed, torch.device("cpu"))
    for _ in range(3):
        for layer in range(2):
            streamer.acquire(layer)
            streamer.release(layer)
    assert streamer.copy_log == [(0, 0), (1, 1)]
    streamer.close()
    _, packed = packed_layers(4)
    streamer = LayerStreamer(packed, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="out of the streamer's order"):
        streamer.acquire(3)
    streamer.close()

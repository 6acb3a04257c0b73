"""Synthetic model specs, hardware profiles and hypothesis strategies for the planner tests (torch-free)."""

from __future__ import annotations

from hypothesis import strategies as st

from planner.hardware.profile import HardwareProfile
from planner.perf.memory import Budgets
from planner.perf.model import PerfModel
from planner.plans.workload import Workload
from planner.specs.spec import ModelSpec

ROWS = [1, 4, 16, 64, 256, 1024, 4096, 16384]
SIZES = [1 << 16, 1 << 20, 1 << 24, 1 << 28, 1 << 30]


def _gemm_curve(n: int, k: int, peak_tflops: float, memory_gbps: float, name: str) -> dict:
    tflops = []
    for m in ROWS:
        flops = 2.0 * m * n * k
        seconds = max(flops / (peak_tflops * 1e12), 2.0 * (n * k + m * (n + k)) / (memory_gbps * 1e9)) + 5e-6
        tflops.append(round(flops / seconds / 1e12, 6))
    return {"shape": name, "n": n, "k": k, "rows": ROWS, "tflops": tflops}


def _link(peak_gbps: float) -> dict:
    return {"sizes": SIZES, "gbps": [round(peak_gbps * s / (s + peak_gbps * 1e9 * 10e-6), 6) for s in SIZES]}


def profile_dict(
    device: bool = True,
    cores: int = 16,
    host_gib: float = 256.0,
    device_gib: float = 24.0,
    link_gbps: float = 25.0,
    read_gbps: float = 150.0,
    attention_gbps_per_core: float = 8.0,
    peak_tflops: float = 100.0,
    device_memory_gbps: float = 900.0,
    price: float | None = 1.0,
    name: str = "synthetic",
) -> dict:
    threads = sorted({1, 2, max(cores // 2, 1), cores})
    attention = [round(min(attention_gbps_per_core * t, 0.9 * read_gbps), 6) for t in threads]
    mem_bw = device_memory_gbps if device else read_gbps
    return {
        "schema_version": 1,
        "name": name,
        "provenance": {"kind": "measured", "date": "2025-01-01", "command": "synthetic"},
        "machine": {
            "cpu": "Synthetic CPU",
            "cores": cores,
            "host_memory_gib": host_gib,
            "device": "Synthetic GPU" if device else None,
            "device_memory_gib": device_gib if device else 0,
        },
        "price": {"usd_per_hour": price},
        "links": {
            "h2d_pinned": _link(link_gbps),
            "h2d_pageable": _link(link_gbps / 2),
            "d2h_pinned": _link(link_gbps),
            "d2h_pageable": _link(link_gbps / 2),
        }
        if device
        else None,
        "memory": {"read_gbps": read_gbps, "copy_gbps": read_gbps / 2},
        "gemm": {
            "dtype": "bfloat16",
            "curves": [
                _gemm_curve(1024, 1024, peak_tflops * 0.6, mem_bw, "linear small"),
                _gemm_curve(8192, 4096, peak_tflops, mem_bw, "expert_ffn big"),
            ],
        },
        "attention": {
            "curves": [
                {
                    "layout": "gqa",
                    "batch": 64,
                    "context": 1024,
                    "group": 4,
                    "threads": threads,
                    "gbps": attention,
                },
                {
                    "layout": "mla",
                    "batch": 64,
                    "context": 1024,
                    "group": 16,
                    "threads": threads,
                    "gbps": [round(a / 3, 6) for a in attention],
                },
            ]
        },
    }


def make_profile(**kwargs) -> HardwareProfile:
    return HardwareProfile.from_dict(profile_dict(**kwargs))


def small_spec(family: str = "mixtral", **overrides) -> ModelSpec:
    fields = dict(
        name=f"test-{family}",
        family=family,
        num_layers=4,
        hidden_size=512,
        num_heads=8,
        num_kv_heads=2,
        head_dim=64,
        vocab_size=8000,
        num_experts=8,
        top_k=2,
        moe_intermediate_size=1024,
        max_position_embeddings=1 << 20,
    )
    if family == "deepseek_v2":
        fields.update(
            num_kv_heads=8,
            attention="mla",
            kv_lora_rank=128,
            qk_rope_head_dim=32,
            qk_nope_head_dim=64,
            v_head_dim=64,
            num_shared_experts=2,
            shared_intermediate_size=2048,
            first_dense_layers=1,
            dense_intermediate_size=2048,
        )
    if family == "qwen2_moe":
        fields.update(num_shared_experts=1, shared_intermediate_size=2048, has_shared_expert_gate=True)
    fields.update(overrides)
    return ModelSpec(**fields)


@st.composite
def specs(draw) -> ModelSpec:
    family = draw(st.sampled_from(["mixtral", "qwen2_moe", "deepseek_v2"]))
    experts = draw(st.sampled_from([4, 8, 16, 64]))
    hidden = draw(st.sampled_from([256, 1024, 2048, 4096]))
    width = draw(st.sampled_from([256, 1024, 4096]))
    overrides = dict(
        num_layers=draw(st.integers(2, 12)),
        hidden_size=hidden,
        num_experts=experts,
        top_k=draw(st.integers(1, min(experts, 8))),
        moe_intermediate_size=width,
        vocab_size=draw(st.sampled_from([1000, 32000])),
    )
    if family == "deepseek_v2":
        shared = draw(st.integers(1, 2))
        overrides.update(num_shared_experts=shared, shared_intermediate_size=shared * width)
    return small_spec(family, **overrides)


@st.composite
def profiles(draw, device: bool | None = None) -> HardwareProfile:
    has_device = draw(st.booleans()) if device is None else device
    return make_profile(
        device=has_device,
        cores=draw(st.sampled_from([2, 8, 32])),
        host_gib=draw(st.sampled_from([64.0, 256.0, 1024.0])),
        device_gib=draw(st.sampled_from([4.0, 16.0, 80.0])),
        link_gbps=draw(st.sampled_from([8.0, 25.0, 64.0])),
        read_gbps=draw(st.sampled_from([20.0, 100.0, 400.0])),
        attention_gbps_per_core=draw(st.sampled_from([2.0, 10.0])),
        peak_tflops=draw(st.sampled_from([1.0, 50.0, 400.0])),
    )


@st.composite
def workloads(draw) -> Workload:
    return Workload.fixed(
        draw(st.sampled_from([16, 128, 1024])),
        draw(st.sampled_from([8, 64, 512])),
        draw(st.sampled_from([1, 50, 5000])),
    )


def model_for(
    spec: ModelSpec, profile: HardwareProfile, workload: Workload, kv_gb: float, **budgets
) -> PerfModel:
    return PerfModel(spec, profile, workload, Budgets.from_args(profile, kv_gb, **budgets))

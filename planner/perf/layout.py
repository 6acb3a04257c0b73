"""Where a model's bytes are, per layer kind and per residency choice: the static half of the performance model.

How it works: docs/design.md, `planner/perf/layout.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.modules import Module as M
from planner.perf.costs import ModelCosts, kv_ring_blocks
from planner.plans.workload import Workload
from planner.specs.spec import ModelSpec

LAYER_GROUPS = (M.ROUTER, M.QKV_PROJ, M.O_PROJ, M.SHARED_EXPERTS, M.DENSE_MLP)
STEP_GROUPS = (M.LM_HEAD, M.EMBED)
RESIDENCY_ORDER = LAYER_GROUPS + STEP_GROUPS  # read by every token, so kept on the device first


def activation_dims(spec: ModelSpec) -> tuple[int, int]:
    """(values per token an attention layer sends to the host's attention, values it gets back): q/k/v (MLA:
    queries, the new latent row and the absorbed query) and the attention output (MLA: in the latent space)."""
    if spec.attention == "mla":
        h = spec.num_heads
        qkv_out = (
            h * (spec.qk_nope_head_dim + spec.qk_rope_head_dim)
            + spec.kv_lora_rank
            + spec.qk_rope_head_dim
            + h * spec.kv_lora_rank
        )
        return qkv_out, h * max(spec.kv_lora_rank, spec.v_head_dim)
    return (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim, spec.num_heads * spec.head_dim


@dataclass(frozen=True)
class ModelLayout:
    spec: ModelSpec
    costs: ModelCosts
    block_size: int
    num_moe_layers: int
    num_dense_layers: int
    group_bytes: dict[str, dict[str, float]]  # layer kind ("moe" | "dense") -> group -> bytes per layer
    step_bytes: dict[str, float]  # lm_head (with the final norm), embed
    expert_bytes: float
    total_bytes: float
    resident_bytes: np.ndarray  # [rho]
    streamed_moe_layer: np.ndarray  # [rho]
    streamed_dense_layer: np.ndarray  # [rho]
    streamed_per_step: np.ndarray  # [rho]
    kv_bytes_per_token_layer: float
    kv_bytes_per_token: float
    kv_read_bytes_per_seq_layer: float  # per decode step, averaged over layers
    kv_bytes_per_slot: float  # host KV one slot must hold (block-rounded; see Workload)
    kv_bytes_one_sequence: float  # the longest sequence, whole
    qkv_out_dim: int
    attn_out_dim: int
    prefill_kv_bytes_per_token_layer: float  # K/V as prefill attention reads them (MLA expanded)
    prefill_pair_flops: float  # score + value FLOPs per (query, key) pair per layer
    decode_attention_flops_per_ctx: float  # per query token per cached token, all layers

    @classmethod
    def build(cls, spec: ModelSpec, workload: Workload, block_size: int) -> ModelLayout:
        costs = ModelCosts(spec)
        moe_layer, dense_layer = spec.first_dense_layers, 0
        group_bytes = {}
        for kind, layer in (("moe", moe_layer), ("dense", dense_layer)):
            raw = costs.module_bytes(layer) if layer < spec.num_layers else dict.fromkeys(LAYER_GROUPS, 0)
            group_bytes[kind] = {
                "router": float(raw.get("router", 0)),
                "qkv_proj": float(raw.get("qkv_proj", 0) + raw.get("attention", 0) + raw.get("norms", 0)),
                "o_proj": float(raw.get("o_proj", 0)),
                "shared_experts": float(raw.get("shared_experts", 0)),
                "dense_mlp": float(raw.get("dense_mlp", 0)),
            }
        whole = costs.module_bytes()
        step_bytes = {
            "lm_head": float(whole["lm_head"]) + spec.hidden_size * spec.dtype_bytes,
            "embed": float(whole["embed"]),
        }
        n_moe, n_dense = spec.num_moe_layers, spec.first_dense_layers
        expert = float(costs.expert_bytes())
        levels = len(RESIDENCY_ORDER)
        rho = np.arange(levels + spec.num_experts + 1)
        resident, s_moe, s_dense, s_step = (np.zeros(rho.size) for _ in range(4))
        for i in rho:
            kept = set(RESIDENCY_ORDER[: min(i, levels)])
            experts_kept = max(i - levels, 0)
            resident[i] = (
                sum(
                    n_moe * group_bytes["moe"][g] + n_dense * group_bytes["dense"][g]
                    for g in LAYER_GROUPS
                    if g in kept
                )
                + sum(step_bytes[g] for g in STEP_GROUPS if g in kept)
                + experts_kept * expert * n_moe
            )
            s_moe[i] = (
                sum(b for g, b in group_bytes["moe"].items() if g not in kept)
                + (spec.num_experts - experts_kept) * expert
            )
            s_dense[i] = sum(b for g, b in group_bytes["dense"].items() if g not in kept)
            s_step[i] = sum(step_bytes[g] for g in STEP_GROUPS if g not in kept)
        if n_dense == 0:
            s_dense[:] = 0.0

        kv_layer = float(costs.kv_bytes_per_token_per_layer())
        windowed = costs.window_only_layers()  # their KV is a ring per slot, whatever the context
        paged = spec.num_layers - windowed
        ring_tokens = kv_ring_blocks(spec.sliding_window, block_size) * block_size * windowed
        slot_tokens = workload.kv_tokens_per_slot
        window_tokens = min(slot_tokens, workload.window_read_tokens(spec.sliding_window))
        sliding = sum(spec.is_sliding_layer(layer) for layer in range(spec.num_layers))
        read_tokens = (sliding * window_tokens + (spec.num_layers - sliding) * slot_tokens) / spec.num_layers
        qkv_out, attn_out = activation_dims(spec)
        if spec.attention == "mla":
            h_ = spec.num_heads
            prefill_kv = (
                h_ * (spec.qk_nope_head_dim + spec.qk_rope_head_dim + spec.v_head_dim) * spec.dtype_bytes
            )
            pair = 2.0 * h_ * (spec.qk_nope_head_dim + spec.qk_rope_head_dim + spec.v_head_dim)
        else:
            prefill_kv = kv_layer
            pair = 4.0 * spec.num_heads * spec.head_dim
        return cls(
            spec=spec,
            costs=costs,
            block_size=block_size,
            num_moe_layers=n_moe,
            num_dense_layers=n_dense,
            group_bytes=group_bytes,
            step_bytes=step_bytes,
            expert_bytes=expert,
            total_bytes=float(costs.total_bytes()),
            resident_bytes=resident,
            streamed_moe_layer=s_moe,
            streamed_dense_layer=s_dense,
            streamed_per_step=s_step,
            kv_bytes_per_token_layer=kv_layer,
            kv_bytes_per_token=kv_layer * spec.num_layers,
            kv_read_bytes_per_seq_layer=kv_layer * read_tokens,
            kv_bytes_per_slot=((workload.kv_held_tokens_per_slot + block_size / 2) * paged + ring_tokens)
            * kv_layer,
            kv_bytes_one_sequence=((workload.max_sequence_len + block_size) * paged + ring_tokens) * kv_layer,
            qkv_out_dim=qkv_out,
            attn_out_dim=attn_out,
            prefill_kv_bytes_per_token_layer=float(prefill_kv),
            prefill_pair_flops=pair,
            decode_attention_flops_per_ctx=sum(
                costs.attention_flops_per_token(1, layer) for layer in range(spec.num_layers)
            ),
        )

    @property
    def max_residency(self) -> int:
        return len(self.resident_bytes) - 1

    def resident_groups(self, rho: int) -> tuple[tuple[str, ...], int]:
        """(weight modules kept on the device, routed experts kept per MoE layer) for residency index rho."""
        levels = len(RESIDENCY_ORDER)
        groups = list(RESIDENCY_ORDER[: min(rho, levels)])
        experts = max(rho - levels, 0)
        if experts == self.spec.num_experts:
            groups.append("experts")
        return tuple(groups), experts

    def stream_slot_bytes(self, rho, parts) -> np.ndarray:
        """Bytes of the largest stream unit at residency rho, a layer's streamed experts split into `parts`
        (near-equal stacks of whole experts, `runtime.engine.weights.stream_part_ranges`)."""
        rho = np.asarray(rho, dtype=int)
        streamed = self.spec.num_experts - np.maximum(rho - len(RESIDENCY_ORDER), 0)
        experts = streamed * self.expert_bytes
        per_part = np.ceil(streamed / np.maximum(parts, 1)) * self.expert_bytes
        moe = np.where(
            np.asarray(parts) > 1,
            self.streamed_moe_layer[rho] - experts + per_part,
            self.streamed_moe_layer[rho],
        )
        return np.maximum(moe, self.streamed_dense_layer[rho])

    def splits_in_parts(self, rho) -> np.ndarray:
        """Whether residency rho streams nothing per layer but routed experts (so a layer can stream in parts)."""
        rho = np.asarray(rho, dtype=int)
        experts = (self.spec.num_experts - np.maximum(rho - len(RESIDENCY_ORDER), 0)) * self.expert_bytes
        return (
            (self.streamed_dense_layer[rho] == 0)
            & np.isclose(self.streamed_moe_layer[rho], experts)
            & (experts > 0)
        )

    def expected_experts(self, tokens) -> np.ndarray:
        """E(1-(1-k/E)^m): distinct experts hit by m tokens under uniform routing (an upper bound)."""
        e, k = self.spec.num_experts, self.spec.top_k
        return e * (1.0 - (1.0 - k / e) ** np.asarray(tokens, dtype=np.float64))

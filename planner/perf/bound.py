"""Upper bound on generated tokens per second, MoE-Lens style, with the binding term named.

How it works: docs/design.md, `planner/perf/bound.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from planner.perf.model import PerfModel


@dataclass(frozen=True)
class Bound:
    tok_s: float
    binding: str
    terms: dict[str, float]
    pme: float
    kv_capacity_tokens: float
    max_seqs: float
    delta_s: float | None  # seconds to stream what the device cannot hold (None: no link)
    moe_lens_processed_tok_s: float | None
    end_to_end_tok_s: float = math.inf  # over the job: the prompts' prefill FLOPs at peak on the compute term

    def to_dict(self) -> dict:
        data = asdict(self)
        data["terms"] = {k: _finite(v) for k, v in self.terms.items()}
        return {k: _finite(v) if isinstance(v, float) else v for k, v in data.items()}


def _finite(value: float) -> float | None:
    return None if value is None or math.isinf(value) else float(value)


def gemm_flops_per_token(model: PerfModel) -> float:
    """Device GEMM FLOPs per generated token: projections, router, k routed experts, shared/dense MLP, lm_head."""
    spec, costs = model.spec, model.layout.costs
    total = costs.lm_head_flops_per_token()
    for layer in range(spec.num_layers):
        flops = costs.layer_flops_per_token(layer, 1)
        total += sum(v for k, v in flops.items() if k != "attention")
    return total


def prefill_flops_per_prompt_token(model: PerfModel) -> float:
    """Prefill FLOPs per prompt token: every layer's GEMMs, causal attention at the mean prefill context, and
    the lm_head for the one last token of each prompt."""
    spec, lay, w = model.spec, model.layout, model.workload
    layers = gemm_flops_per_token(model) - lay.costs.lm_head_flops_per_token()
    attention = spec.num_layers * lay.prefill_pair_flops * w.prefill_context
    return layers + attention + lay.costs.lm_head_flops_per_token() / max(w.prompt_len_mean, 1.0)


def compute_bound(model: PerfModel) -> Bound:
    lay, rates, w, mem, b = model.layout, model.rates, model.workload, model.memory, model.budgets
    # weights the host keeps: those the device cannot hold (the engine frees host copies of resident ones)
    must_stream = (
        max(lay.total_bytes - (b.device_bytes - mem.device_reserve), 0.0) if model.has_device else None
    )
    host_weights = lay.total_bytes if must_stream is None else must_stream
    kv_avail = max(min(b.kv_bytes, b.host_bytes - host_weights - mem.host_reserve), 0.0)
    capacity = kv_avail / lay.kv_bytes_per_token
    max_seqs = min(capacity / w.kv_held_tokens_per_slot, float(w.num_prompts))
    kv_read_per_token = lay.kv_read_bytes_per_seq_layer * model.spec.num_layers
    flops = gemm_flops_per_token(model)
    attention_bps = float(rates.attention_bps.max())
    terms: dict[str, float] = {}
    delta = processed = None
    if model.has_device:
        delta = must_stream / rates.max_h2d_bps
        terms["kv_link"] = max_seqs / delta if delta > 0 else math.inf
        processed = w.pme * capacity / delta if delta > 0 else None
    if model.has_device and not model.emulated:
        terms["device_compute"] = rates.peak_flops / flops
        terms["cpu_attention"] = min(attention_bps, rates.host_read_bps) / kv_read_per_token
        per_step_modules = sum(lay.step_bytes.values())  # embed and lm_head copies bypass the layer pipeline
        layers_stream = max(must_stream - per_step_modules, 0.0)
        terms["host_memory"] = max_seqs * rates.host_read_bps / (max_seqs * kv_read_per_token + layers_stream)
    else:
        gb = lay.group_bytes
        per_moe = (
            gb["moe"]["qkv_proj"] + gb["moe"]["o_proj"] + gb["moe"]["router"] + gb["moe"]["shared_experts"]
        )
        per_dense = gb["dense"]["qkv_proj"] + gb["dense"]["o_proj"] + gb["dense"]["dense_mlp"]
        weights = (
            lay.num_moe_layers * (per_moe + float(lay.expected_experts(max_seqs)) * lay.expert_bytes)
            + lay.num_dense_layers * per_dense
        )
        terms["host_memory"] = max_seqs * rates.host_read_bps / (weights + max_seqs * kv_read_per_token)
        terms["cpu_compute"] = 1.0 / (flops / rates.peak_flops + kv_read_per_token / attention_bps)
    binding = min(terms, key=terms.get)
    return Bound(
        tok_s=terms[binding],
        binding=binding,
        terms=terms,
        pme=w.pme,
        kv_capacity_tokens=capacity,
        max_seqs=max_seqs,
        delta_s=delta,
        moe_lens_processed_tok_s=processed,
        end_to_end_tok_s=min(end_to_end_terms(model, terms).values()),
    )


def end_to_end_terms(model: PerfModel, terms: dict[str, float]) -> dict[str, float]:
    """Each decode term over the whole job: a sequence's first token comes from its prefill (g - 1 decode
    tokens per g generated), and the prompts' prefill FLOPs at peak load the compute resource only, since
    the merged pass overlaps prefill with decode on every other resource."""
    w, rates = model.workload, model.rates
    decoded_share = max(w.gen_len_mean - 1.0, 0.0) / max(w.gen_len_mean, 1.0)
    prefill_s = (
        w.prompt_len_mean
        / max(w.gen_len_mean, 1.0)
        * prefill_flops_per_prompt_token(model)
        / rates.peak_flops
    )
    compute = "device_compute" if "device_compute" in terms else "cpu_compute"
    out = {}
    for name, tok_s in terms.items():
        if tok_s <= 0:
            out[name] = 0.0
            continue
        seconds = decoded_share / tok_s + (prefill_s if name == compute else 0.0)
        out[name] = 1.0 / seconds if seconds > 0 else math.inf
    return out

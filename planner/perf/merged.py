"""The merged pass: a prefill chunk that rides in a decode step's pass over the layers (torch-free).

How it works: docs/design.md, `planner/perf/merged.py`.
"""

from __future__ import annotations

import numpy as np

COMPUTE_RESOURCES = ("device", "cpu")


def _group_experts(model, c, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of one FFN call's routed experts over `tokens` tokens, and the experts they hit."""
    lay, spec = model.layout, model.spec
    hit = lay.expected_experts(tokens)
    rows = tokens * spec.top_k / np.maximum(hit, 1e-12)
    ov = model.overheads.prefill_layer(tokens, 1.0, 0.0, hit, rows, c.expert_batch, model.grouped_experts)
    return model._expert_seconds(hit, rows, tokens, c.expert_batch) + ov["experts"], hit


def merged_prefill(model, c, pre: dict, decode: dict, num_seqs: np.ndarray, share: np.ndarray) -> dict:
    """`pre` (a standalone prefill chunk) with `chunk` and `weight_copy` as the merged pass runs it, where a
    `share` of the forwards ride in a decode step (`decode`, its batch's step) and the rest run alone."""
    lay, r = model.layout, model.rates
    tokens, layer = pre["tokens"], decode["layer"]
    group = layer["group_tokens"]
    e_group, hit_group = _group_experts(model, c, group)
    e_chunk, hit_chunk = _group_experts(model, c, tokens)
    e_both, hit_both = _group_experts(model, c, group + tokens)
    saved = np.maximum(e_group + e_chunk - e_both, 0.0)
    marginal, riding_total = {}, {}
    for kind in ("moe", "dense"):
        dec, ride = layer["resources"][kind], dict(pre["ride"][kind])
        if kind == "moe":
            compute = next(k for k in COMPUTE_RESOURCES if k in ride)
            ride[compute] = ride[compute] - saved
            if not model.has_device:  # the experts both hit are read from host memory once
                ride["host_memory"] = (
                    ride["host_memory"] + (hit_both - hit_group) * lay.expert_bytes / r.host_read_bps
                )
        keys = set(dec) | set(ride)
        merged = np.maximum.reduce([dec.get(k, 0.0) + ride.get(k, 0.0) for k in keys])
        alone = np.maximum.reduce(list(dec.values()))
        marginal[kind] = np.maximum(merged - alone, 0.0)
        riding_total[kind] = ride
    n_moe, n_dense = lay.num_moe_layers, lay.num_dense_layers
    per_layer_alone = n_moe * pre["alone"]["moe"] + n_dense * pre["alone"]["dense"]
    rest = pre["chunk"] - per_layer_alone - pre["alone"]["step"]  # embed, lm_head, the forward's bookkeeping
    riding = n_moe * marginal["moe"] + n_dense * marginal["dense"] + rest
    if model.emulated:
        riding = np.maximum(riding, _step_marginal(decode, riding_total, n_moe, n_dense, rest))
    out = dict(pre)
    out["chunk"] = share * riding + (1.0 - share) * pre["chunk"]
    token_share = tokens / (tokens + num_seqs)
    out["weight_copy"] = pre["weight_copy"] * (share * token_share + 1.0 - share)
    return out


def _step_marginal(decode: dict, ride: dict, n_moe: int, n_dense: int, rest: np.ndarray) -> np.ndarray:
    """What a chunk adds to a whole decode step, resource by resource. Behind the emulated link the streamer
    runs two layers ahead, so a layer whose copy outlasts its compute does not hide a prefill chunk's compute
    where the step as a whole is compute-bound (the tail's lm_head and sampling hold the link's slots full)."""
    busy = {k.removeprefix("busy_"): v for k, v in decode.items() if k.startswith("busy_")}
    added = {k: n_moe * ride["moe"].get(k, 0.0) + n_dense * ride["dense"].get(k, 0.0) for k in busy}
    compute = next(k for k in COMPUTE_RESOURCES if k in busy)
    added[compute] = added[compute] + rest
    merged = np.maximum.reduce([busy[k] + added[k] for k in busy])
    return np.maximum(merged - np.maximum.reduce(list(busy.values())), 0.0)

"""Model layers and the reference decoder, built from a ModelSpec and canonical-name weights.

Pieces (functional; weights passed in): `layers` (rms_norm, expert_ffn, dense_mlp), `rope`, `attention`
(GQA projections, core, output projection), `routing` (router logits -> top-k ids and weights), `moe`
(grouping, experts, shared expert), `kv_cache` (per-sequence cache), `reference` (`ReferenceModel`), and
`generation` (the reference generation backend behind `runtime.LLM`).
"""

from __future__ import annotations

from runtime.model.layers import dense_mlp, expert_ffn, rms_norm
from runtime.model.reference import ReferenceModel

__all__ = ["ReferenceModel", "dense_mlp", "expert_ffn", "rms_norm"]

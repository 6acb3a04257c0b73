"""The measured fixed and elementwise costs of each module, in the engine's module names (torch-free).

How it works: docs/design.md, `planner/perf/overheads.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.modules import DECODE_CALLS, LAYER_MODULES, calls_per, micro_batches
from planner.modules import Module as M
from planner.perf.expert_kernels import grouped_calls
from planner.perf.rates import OverheadCosts
from planner.specs.spec import ModelSpec

# Per-logit cost of a sampled row and of a top-p row against a greedy one, for profiles that measured only
# greedy sampling (before `sampling_temperature` / `sampling_top_p`): the ratios on the 2-core Xeon host.
TEMPERATURE_PER_GREEDY, TOP_P_PER_GREEDY = 1.4, 45.0


@dataclass(frozen=True)
class OverheadTerms:
    call: dict[str, float]  # seconds per call
    costs: OverheadCosts  # elementwise seconds by size of call
    hidden: float
    qkv_norm_width: float  # elements normed per token before the attention kernel
    rope_width: float  # q/k elements rotated per token
    has_qk_norm: bool
    has_shared: bool
    score_heads: float
    vocab: float
    top_k: float
    sampled_share: float = 0.0  # the workload's (planner.plans.workload)
    top_p_share: float = 0.0

    @property
    def prices_sampling(self) -> bool:
        """Whether the profile measured sampling per logit (else the model prices it by bandwidth)."""
        return self.costs.elementwise.sampling > 0

    def _ew(self, name: str, elements, calls=1.0) -> np.ndarray:
        return self.costs.element_seconds(name, elements, calls)

    def _sampling(self, rows) -> np.ndarray:
        """Seconds to pick tokens from `rows` rows of logits: the workload's shares of greedy, temperature and
        top-p rows, each at its measured cost per logit (a fixed multiple of the greedy cost if unmeasured)."""
        ew = self.costs.elementwise
        temperature = ew.sampling_temperature or TEMPERATURE_PER_GREEDY * ew.sampling
        top_p = ew.sampling_top_p or TOP_P_PER_GREEDY * ew.sampling
        s, p = self.sampled_share, self.top_p_share
        ns = (1.0 - s) * ew.sampling + (s - p) * temperature + p * top_p
        return np.asarray(rows, dtype=np.float64) * self.vocab * ns * 1e-9 * self.costs.scale

    @classmethod
    def build(
        cls, spec: ModelSpec, costs: OverheadCosts, sampled_share=0.0, top_p_share=0.0
    ) -> OverheadTerms:
        if spec.attention == "mla":
            norm_width = spec.hidden_size + spec.q_lora_rank + spec.kv_lora_rank
            rope_width = (spec.num_heads + 1) * spec.qk_rope_head_dim
            has_qk_norm = True
        else:
            rope_width = (spec.num_heads + spec.num_kv_heads) * spec.head_dim
            has_qk_norm = spec.qk_norm != "none"
            norm_width = spec.hidden_size + (rope_width if has_qk_norm else 0)
        return cls(
            call=costs.call_s,
            costs=costs,
            hidden=float(spec.hidden_size),
            qkv_norm_width=float(norm_width),
            rope_width=float(rope_width),
            has_qk_norm=has_qk_norm,
            has_shared=spec.num_shared_experts > 0,
            score_heads=float(spec.num_heads),
            vocab=float(spec.vocab_size),
            top_k=float(spec.top_k),
            sampled_share=sampled_share,
            top_p_share=top_p_share,
        )

    def _layer(
        self, tokens, qkv_calls, ffn_calls, hit, rows_per_expert, expert_batch, grouped
    ) -> dict[str, np.ndarray]:
        c, ew, h = self.call, self._ew, self.hidden
        tokens = np.asarray(tokens, dtype=np.float64)
        if (
            grouped
        ):  # per token group: one grouped call per window of b_e routed rows, whatever the experts hit
            expert_calls = grouped_calls(tokens / ffn_calls * self.top_k, expert_batch)
        else:  # per activated expert and chunk
            expert_calls = hit * np.maximum(rows_per_expert / np.maximum(expert_batch, 1.0), 1.0)
        per = {"micro_batch": qkv_calls, "group": ffn_calls}
        calls = {m: per[DECODE_CALLS[m].per] for m in LAYER_MODULES}
        qkv_call = c["qkv_proj"] + (c["qk_norm"] if self.has_qk_norm else 0.0)
        return {
            "qkv_proj": calls[M.QKV_PROJ] * qkv_call
            + ew("norm", tokens * self.qkv_norm_width, qkv_calls)
            + ew("rope", tokens * self.rope_width, qkv_calls),
            "attention": calls[M.ATTENTION],  # calls: the callers price them
            "o_proj": calls[M.O_PROJ] * c["o_proj"] + ew("add", tokens * h, qkv_calls),
            "mlp_norm": ew("norm", tokens * h, ffn_calls),
            "router": calls[M.ROUTER] * c["router"],
            "experts": calls[M.EXPERTS] * (c["expert_grouping"] + expert_calls * c["expert"]),
            "shared_experts": (
                calls[M.SHARED_EXPERTS] * c["shared_experts"] + ew("add", tokens * h, ffn_calls)
            )
            if self.has_shared
            else np.zeros_like(tokens),
            "dense_mlp": calls[M.DENSE_MLP] * c["dense_mlp"],
            "residual": ew("add", tokens * h, ffn_calls),
        }

    def decode_layer(
        self, num_seqs, groups: int, attn_batch, expert_batch, hit, rows_per_expert, grouped: bool = False
    ) -> dict:
        """Seconds per layer of a decode step of `num_seqs` sequences; `hit` and `rows_per_expert` per group."""
        calls = micro_batches(num_seqs, groups, attn_batch)
        out = self._layer(num_seqs, calls, float(groups), hit, rows_per_expert, expert_batch, grouped)
        out["attention"] = out["attention"] * self.call["attention"]
        return out

    def decode_step(self, num_seqs) -> dict[str, np.ndarray]:
        c = self.call
        num_seqs = np.asarray(num_seqs, dtype=np.float64)
        ones = np.ones_like(num_seqs)
        calls = {m: calls_per(DECODE_CALLS[m], num_seqs, 1, 1.0) for m in (M.EMBED, M.LM_HEAD, M.SAMPLING)}
        return {
            "embed": c["embed"] * calls[M.EMBED] * ones,
            "lm_head": c["lm_head"] * calls[M.LM_HEAD] + self._ew("norm", num_seqs * self.hidden),
            "sampling": c["sampling"] * calls[M.SAMPLING] + self._sampling(num_seqs),
            "step": c["decode_step"] * ones,
        }

    def prefill_layer(
        self,
        tokens,
        segments,
        score_context: float,
        hit,
        rows_per_expert,
        expert_batch,
        grouped: bool = False,
    ) -> dict:
        """Seconds per layer of a prefill chunk: `segments` prompt pieces whose queries see `score_context` keys
        on average (attention_core scores every query against every key of its segment, masked after)."""
        out = self._layer(tokens, 1.0, 1.0, hit, rows_per_expert, expert_batch, grouped)
        scores = np.asarray(tokens, dtype=np.float64) * self.score_heads * score_context
        out["attention"] = segments * self.call["prefill_attention"] + self._ew(
            "attention_score", scores, segments
        )
        return out

    def prefill_chunk(self, tokens, segments) -> dict[str, np.ndarray]:
        c = self.call
        ones = np.ones_like(np.asarray(tokens, dtype=np.float64))
        return {
            "embed": c["embed"] * ones,
            "lm_head": c["lm_head"] + self._ew("norm", segments * self.hidden),
            "forward": (c["prefill_forward"] + c["sampling"]) * ones + self._sampling(segments * ones),
        }

"""Derived sizes and costs of a `ModelSpec`: parameters, bytes, FLOPs and KV bytes per module, torch-free.

How it works: docs/design.md, `planner/perf/costs.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.modules import LAYER_MODULES
from planner.specs.spec import ModelSpec


@dataclass(frozen=True)
class ModelCosts:
    spec: ModelSpec

    # ----- parameter counts -----
    def _norm(self, width: int) -> int:
        return width * (2 if self.spec.norm_type == "layernorm" else 1)

    def embed_params(self) -> int:
        return self.spec.vocab_size * self.spec.hidden_size

    def lm_head_params(self) -> int:
        s = self.spec
        if s.tie_word_embeddings:
            return 0
        return s.vocab_size * s.hidden_size + (s.vocab_size if s.lm_head_bias else 0)

    def _qkv_weights_and_extras(self) -> tuple[int, int]:
        """(matmul weights, biases + norms) of everything before the attention kernel, per layer."""
        s, h = self.spec, self.spec.hidden_size
        if s.attention == "mla":
            q_out = s.num_heads * (s.qk_nope_head_dim + s.qk_rope_head_dim)
            kv_a_out = s.kv_lora_rank + s.qk_rope_head_dim
            weights = h * kv_a_out + s.kv_lora_rank * s.num_heads * (s.qk_nope_head_dim + s.v_head_dim)
            extras = s.kv_lora_rank + (kv_a_out if s.attention_bias else 0)
            if s.q_lora_rank:
                weights += h * s.q_lora_rank + s.q_lora_rank * q_out
                extras += s.q_lora_rank + (s.q_lora_rank if s.attention_bias else 0)
            else:
                weights += h * q_out
            return weights, extras
        q_out, kv_out = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        weights = h * (q_out + 2 * kv_out)
        extras = q_out + 2 * kv_out if s.attention_bias else 0
        if s.qk_norm == "per_head":
            extras += 2 * s.head_dim
        elif s.qk_norm == "full":
            extras += q_out + kv_out
        return weights, extras

    def _o_weights(self) -> int:
        s = self.spec
        per_head = s.v_head_dim if s.attention == "mla" else s.head_dim
        return s.num_heads * per_head * s.hidden_size

    def _o_bias(self) -> int:
        s = self.spec
        return s.hidden_size if s.has_o_bias else 0

    def expert_params(self) -> int:
        s = self.spec
        return 3 * s.hidden_size * s.moe_intermediate_size + self._expert_bias_params()

    def _expert_bias_params(self) -> int:
        s = self.spec
        return 2 * s.moe_intermediate_size + s.hidden_size if s.expert_bias else 0

    def router_params(self) -> int:
        s = self.spec
        extra = (s.num_experts if s.router_linear_bias else 0) + (
            s.num_experts if s.has_score_correction_bias else 0
        )
        return s.num_experts * s.hidden_size + extra

    def shared_expert_params(self) -> int:
        s = self.spec
        gate = s.hidden_size if s.has_shared_expert_gate else 0
        return 3 * s.hidden_size * s.shared_intermediate_size + gate

    def dense_mlp_params(self) -> int:
        return 3 * self.spec.hidden_size * self.spec.dense_intermediate_size

    def layer_params(self, layer: int) -> dict[str, int]:
        s = self.spec
        qkv_weights, qkv_extras = self._qkv_weights_and_extras()
        moe = s.is_moe_layer(layer)
        return {
            "qkv_proj": qkv_weights + qkv_extras,
            "attention": s.num_heads if s.attention_sinks else 0,
            "o_proj": self._o_weights() + self._o_bias(),
            "norms": 2 * self._norm(s.hidden_size),
            "router": self.router_params() if moe else 0,
            "experts": s.num_experts * self.expert_params() if moe else 0,
            "shared_experts": self.shared_expert_params() if moe else 0,
            "dense_mlp": 0 if moe else self.dense_mlp_params(),
        }

    def params_by_module(self) -> dict[str, int]:
        totals = {"embed": self.embed_params(), **dict.fromkeys(LAYER_MODULES, 0), "norms": 0}
        for layer in range(self.spec.num_layers):
            for module, count in self.layer_params(layer).items():
                totals[module] += count
        totals["norms"] += self._norm(self.spec.hidden_size)  # final norm
        totals["lm_head"] = self.lm_head_params()
        return totals

    def total_params(self) -> int:
        return sum(self.params_by_module().values())

    def active_params(self, include_embed: bool = True) -> int:
        """Parameters touched per token. DeepSeek and OpenAI publish it without the input embedding."""
        s = self.spec
        unused = s.num_moe_layers * (s.num_experts - s.top_k) * self.expert_params()
        return self.total_params() - unused - (0 if include_embed else self.embed_params())

    # ----- bytes -----
    def module_bytes(self, layer: int | None = None) -> dict[str, int]:
        counts = self.params_by_module() if layer is None else self.layer_params(layer)
        stored = {module: round(count * self.spec.weight_bytes(module)) for module, count in counts.items()}
        experts = counts["experts"] // self.expert_params() if counts["experts"] else 0
        return {**stored, "experts": experts * self.expert_bytes()}

    def expert_bytes(self) -> int:
        """One expert's stored bytes: its matrices in the experts' format, its biases (gpt-oss) in the dtype."""
        bias = self._expert_bias_params()
        matrices = (self.expert_params() - bias) * self.spec.weight_bytes("experts")
        return round(matrices + bias * self.spec.dtype_bytes)

    def layer_bytes(self, layer: int) -> int:
        return sum(self.module_bytes(layer).values())

    def total_bytes(self) -> int:
        return sum(self.module_bytes().values())

    # ----- FLOPs per token -----
    def attention_flops_per_token(self, context_len: int, layer: int = 0) -> float:
        s = self.spec
        ctx = min(context_len, s.sliding_window) if s.is_sliding_layer(layer) else context_len
        if s.attention == "mla":
            return 2.0 * s.num_heads * (2 * s.kv_lora_rank + s.qk_rope_head_dim) * ctx
        return 4.0 * s.num_heads * s.head_dim * ctx

    def layer_flops_per_token(self, layer: int, context_len: int) -> dict[str, float]:
        s = self.spec
        moe = s.is_moe_layer(layer)
        shared_weights = 3 * s.hidden_size * s.shared_intermediate_size + (
            s.hidden_size if s.has_shared_expert_gate else 0
        )
        return {
            "qkv_proj": 2.0 * self._qkv_weights_and_extras()[0],
            "attention": self.attention_flops_per_token(context_len, layer),
            "o_proj": 2.0 * self._o_weights(),
            "router": 2.0 * s.num_experts * s.hidden_size if moe else 0.0,
            "experts": 2.0 * s.top_k * 3 * s.hidden_size * s.moe_intermediate_size if moe else 0.0,
            "shared_experts": 2.0 * shared_weights if moe else 0.0,
            "dense_mlp": 0.0 if moe else 2.0 * self.dense_mlp_params(),
        }

    def lm_head_flops_per_token(self) -> float:
        return 2.0 * self.spec.vocab_size * self.spec.hidden_size

    def flops_per_token(self, context_len: int) -> float:
        layers = sum(
            sum(self.layer_flops_per_token(layer, context_len).values())
            for layer in range(self.spec.num_layers)
        )
        return layers + self.lm_head_flops_per_token()

    # ----- KV cache -----
    def kv_bytes_per_token_per_layer(self) -> int:
        s = self.spec
        if s.attention == "mla":
            return (s.kv_lora_rank + s.qk_rope_head_dim) * s.dtype_bytes
        return 2 * s.num_kv_heads * s.head_dim * s.dtype_bytes

    def kv_bytes_per_token(self) -> int:
        return self.spec.num_layers * self.kv_bytes_per_token_per_layer()

    def window_only_layers(self) -> int:
        return sum(self.spec.keeps_window_only(layer) for layer in range(self.spec.num_layers))

    def kv_bytes_for_context(self, context_len: int) -> int:
        s = self.spec
        tokens = sum(
            min(context_len, s.sliding_window) if s.is_sliding_layer(layer) else context_len
            for layer in range(s.num_layers)
        )
        return tokens * self.kv_bytes_per_token_per_layer()

    # ----- routing -----
    def expected_distinct_experts(self, num_tokens: float) -> float:
        s = self.spec
        return s.num_experts * (1.0 - (1.0 - s.top_k / s.num_experts) ** num_tokens)


def kv_ring_blocks(sliding_window: int | None, block_size: int) -> int:
    """Blocks a window-only layer keeps per sequence: any `sliding_window` consecutive positions span at most
    this many minus one, so the position written next never overwrites one the window still reads."""
    return -(-sliding_window // block_size) + 1 if sliding_window else 0

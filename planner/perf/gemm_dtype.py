"""The dtype a plan's GEMMs run in, shared by the planner (prices, host bytes, expert path) and the engine.

Some CPUs run float32 GEMMs faster than 16-bit ones (AVX-512 without AMX: BENCHMARKS.md, "Where the engine's
CPU time goes"). A profile measured there says `gemm.dtype: float32` and its curves were measured so; a plan
computing on that host holds the GEMM weights `is_upcast` names in float32 and rounds each GEMM's output to
the model dtype (what a 16-bit GEMM accumulating in float32 computes). Router, embedding, norms, biases keep
the model dtype. Elsewhere (a device, streaming, MLA, quantized or biased experts) GEMMs run in the model dtype,
priced at the float32 curves times the 16-bit/float32 rate ratio the profile measured (`gemm.narrow_speed`).
"""

from __future__ import annotations

from planner.specs.spec import ModelSpec

WIDE = "float32"
NARROW = ("bfloat16", "float16")
UPCAST_NAMES = frozenset(
    [f"attn.{p}_proj" for p in "qkvo"]
    + [f"{prefix}{p}_proj" for prefix in ("mlp.", "moe.shared.") for p in ("gate", "up", "down")]
    + ["lm_head"]
)


def plan_gemm_dtype(spec: ModelSpec, profile_gemm_dtype: str, host_compute: bool) -> str | None:
    """The plan's `gemm_dtype`: WIDE where the rule above applies, else None (the model dtype)."""
    eligible = (
        host_compute
        and profile_gemm_dtype == WIDE
        and spec.dtype in NARROW
        and spec.attention == "gqa"
        and not spec.weight_formats
        and not spec.expert_bias
    )
    return WIDE if eligible else None


def narrow_on_wide_curves(spec: ModelSpec, profile_gemm_dtype: str, gemm_dtype: str | None) -> bool:
    """Whether a plan's GEMMs run in a 16-bit model dtype on curves measured with float32 weights: the curves
    then scale by the profile's `gemm_narrow_speed`."""
    return gemm_dtype is None and profile_gemm_dtype == WIDE and spec.dtype in NARROW


def is_upcast(local_name: str) -> bool:
    """Whether a layer-local (or global) weight name is held in the wide dtype: the names above and the
    routed-expert stacks (`runtime.engine.expert_stacks`)."""
    stack = local_name.startswith("moe.experts.") and local_name.endswith((".gate_up", ".down"))
    return local_name in UPCAST_NAMES or stack


def upcast_params(spec: ModelSpec) -> int:
    """Parameters `is_upcast` names in the whole model (an untied lm_head's weight among them)."""
    s, h = spec, spec.hidden_size
    attention = h * (s.num_heads + 2 * s.num_kv_heads) * s.head_dim + s.num_heads * s.head_dim * h
    moe = s.num_moe_layers
    mlp = 3 * h * (moe * (s.num_experts * s.moe_intermediate_size + s.shared_intermediate_size))
    mlp += 3 * h * (s.num_layers - moe) * s.dense_intermediate_size
    head = 0 if s.tie_word_embeddings else s.vocab_size * h
    return s.num_layers * attention + mlp + head


def upcast_extra_bytes(spec: ModelSpec, gemm_dtype: str | None) -> float:
    """Host bytes the upcast weights take beyond the model dtype's."""
    if gemm_dtype is None:
        return 0.0
    return upcast_params(spec) * (4.0 - spec.dtype_bytes)

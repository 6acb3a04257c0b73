"""Decode attention entry points: checks arguments, then runs the C++ kernel or the torch fallback.

`backend` (or env MOELENS_ATTENTION_BACKEND) picks the path: "auto" (default: the best ISA this CPU
supports), one of "avx512bf16", "avx512", "avx2", "scalar" (forces that ISA path of the extension), or
"reference" (the pure-torch fallback). If the extension is not built or cannot be loaded, "auto" falls
back to the reference with one warning (runtime.attention.extension). `num_threads=None` means
torch.get_num_threads().
"""

from __future__ import annotations

import warnings
from types import ModuleType

import torch

from planner import settings
from runtime.attention import extension, reference

ISA_BACKENDS = ("avx512bf16", "avx512", "avx2", "scalar")
KERNEL_HEAD_DIMS = (64, 128, 256)
MLA_RANK, MLA_ROPE = 512, 64
CACHE_DTYPES = (torch.float32, torch.bfloat16)
_warned_shapes: set[str] = set()


def resolve_backend(backend: str | None) -> str:
    name = backend or settings.attention_backend_setting() or "auto"
    if name not in ("auto", "reference", *ISA_BACKENDS):
        raise ValueError(f"unknown attention backend {name!r}; use auto, reference or one of {ISA_BACKENDS}")
    return name


def active_backend(backend: str | None = None) -> tuple[ModuleType | None, str]:
    """(extension module or None, ISA name or "" for the best one); None means: use the reference."""
    name = resolve_backend(backend)
    if name == "reference":
        return None, ""
    module = extension.load_extension()
    if module is None and name != "auto":
        raise RuntimeError(f"attention backend {name!r} asked for, but the C++ extension is unavailable")
    return module, "" if name == "auto" else name


def _fallback_for_shape(reason: str) -> None:
    if reason not in _warned_shapes:
        _warned_shapes.add(reason)
        warnings.warn(
            f"CPU attention kernel does not cover {reason}; using the torch fallback",
            RuntimeWarning,
            stacklevel=3,
        )


def _check_tables(block_tables: torch.Tensor, context_lens: torch.Tensor, num_seqs: int) -> None:
    if block_tables.dtype != torch.int32 or block_tables.dim() != 2 or block_tables.shape[0] != num_seqs:
        raise ValueError(
            f"block_tables must be int32 [B={num_seqs}, max_blocks], got "
            f"{block_tables.dtype} {tuple(block_tables.shape)}"
        )
    if context_lens.dtype != torch.int32 or tuple(context_lens.shape) != (num_seqs,):
        raise ValueError(
            f"context_lens must be int32 [B={num_seqs}], got {context_lens.dtype} {tuple(context_lens.shape)}"
        )


def _threads(num_threads: int | None) -> int:
    return int(num_threads) if num_threads else torch.get_num_threads()


def decode_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    num_threads: int | None = None,
    backend: str | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Append k_new/v_new [B,Hkv,D] at context_lens-1, attend, return [B,Hq,D] in q's dtype.
    `sinks` [Hq] (gpt-oss): one logit per query head that joins the softmax and attends to nothing."""
    num_seqs, num_q_heads, head_dim = q.shape
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.shape[3] != head_dim:
        raise ValueError(
            f"k_cache/v_cache must both be [num_blocks, num_kv_heads, block_size, {head_dim}], "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    num_kv_heads = k_cache.shape[1]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads is not a multiple of {num_kv_heads} kv heads")
    if k_new.shape != (num_seqs, num_kv_heads, head_dim) or v_new.shape != k_new.shape:
        raise ValueError(f"k_new/v_new must be [{num_seqs}, {num_kv_heads}, {head_dim}]")
    _check_tables(block_tables, context_lens, num_seqs)
    if sinks is not None and tuple(sinks.shape) != (num_q_heads,):
        raise ValueError(f"sinks must be [{num_q_heads}], got {tuple(sinks.shape)}")
    window = int(sliding_window) if sliding_window else 0
    if window < 0:
        raise ValueError(f"sliding_window must be positive or None, got {sliding_window}")
    module, isa = active_backend(backend)
    if module is not None and (head_dim not in KERNEL_HEAD_DIMS or k_cache.dtype not in CACHE_DTYPES):
        _fallback_for_shape(f"head_dim {head_dim} with a {k_cache.dtype} cache")
        module = None
    if module is None:
        return reference.decode_attention_reference(
            q, k_new, v_new, k_cache, v_cache, block_tables, context_lens, scale, window or None, sinks=sinks
        )
    return module.decode_gqa(
        q,
        k_new,
        v_new,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        float(scale),
        window,
        sinks,
        _threads(num_threads),
        isa,
    )


def mla_decode_attention(
    q_latent: torch.Tensor,
    q_rope: torch.Tensor,
    latent_new: torch.Tensor,
    latent_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    num_threads: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Append latent_new [B,R+P] at context_lens-1, attend (absorbed MLA), return [B,H,R] (latent space)."""
    num_seqs, num_heads, rank = q_latent.shape
    rope = q_rope.shape[-1]
    if q_rope.shape != (num_seqs, num_heads, rope):
        raise ValueError(f"q_rope must be [{num_seqs}, {num_heads}, rope_dim], got {tuple(q_rope.shape)}")
    if latent_cache.dim() != 3 or latent_cache.shape[2] != rank + rope:
        raise ValueError(
            f"latent_cache must be [num_blocks, block_size, {rank + rope}], got {tuple(latent_cache.shape)}"
        )
    if latent_new.shape != (num_seqs, rank + rope):
        raise ValueError(f"latent_new must be [{num_seqs}, {rank + rope}], got {tuple(latent_new.shape)}")
    _check_tables(block_tables, context_lens, num_seqs)
    module, isa = active_backend(backend)
    if module is not None and (
        (rank, rope) != (MLA_RANK, MLA_ROPE) or latent_cache.dtype not in CACHE_DTYPES
    ):
        _fallback_for_shape(f"MLA rank {rank} + rope {rope} with a {latent_cache.dtype} cache")
        module = None
    if module is None:
        return reference.mla_decode_attention_reference(
            q_latent, q_rope, latent_new, latent_cache, block_tables, context_lens, scale
        )
    return module.decode_mla(
        q_latent,
        q_rope,
        latent_new,
        latent_cache,
        block_tables,
        context_lens,
        float(scale),
        _threads(num_threads),
        isa,
    )

"""The grids a profile is measured (or derived) on, shared by the profiler and the datasheet profiles.

GEMM shapes are those of the shipped model specs that matter here: the expert FFN (three GEMMs through
`runtime.model.layers.expert_ffn`; curve n = intermediate, k = hidden, rate counted over all three) and
the attention projections (one `F.linear`). Torch-free. The quick grids are subsets that keep what the
planner reads unbiased: rows up to where the curves level off, both kinds of GEMM from the smallest size
(the probe jobs' shapes, which the efficiency fit reads) to a large one, and the attention points whose
curves the planner uses (`planner_read_points`).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.hardware.profile_schema import steady_state_order

MIB = 1 << 20
GEMM_ROWS: tuple[int, ...] = tuple(2**i for i in range(15))  # 1 .. 16384
QUICK_GEMM_ROWS: tuple[int, ...] = (1, 4, 16, 64, 256, 1024)  # to where the full curves level off
LINK_SIZES: tuple[int, ...] = tuple(MIB * 4**i for i in range(6))  # 1 MiB .. 1 GiB
QUICK_LINK_SIZES: tuple[int, ...] = (MIB, 16 * MIB, 64 * MIB)


@dataclass(frozen=True)
class GemmShape:
    label: str
    kind: str  # "expert_ffn" | "linear"
    n: int  # output features (expert: intermediate size)
    k: int  # input features (expert: hidden size)

    @property
    def flops_per_row(self) -> int:
        return (6 if self.kind == "expert_ffn" else 2) * self.n * self.k

    @property
    def weight_elems(self) -> int:
        return (3 if self.kind == "expert_ffn" else 1) * self.n * self.k


def _expert(model: str, h: int, i: int) -> GemmShape:
    return GemmShape(f"expert_ffn {model} h{h} i{i}", "expert_ffn", i, h)


def _linear_shape(label: str, n: int, k: int) -> GemmShape:
    return GemmShape(f"linear {label} {k}->{n}", "linear", n, k)


EXPERT_SHAPES = (
    _expert("small", 512, 256),  # the smallest experts (the test minis): fixed costs dominate
    _expert("qwen3-moe", 2048, 768),
    _expert("deepseek-v2-lite", 2048, 1408),
    _expert("mixtral-mini", 1024, 3584),
    _expert("mixtral", 4096, 14336),
)
LINEAR_SHAPES = (
    _linear_shape("small q_proj", 1024, 512),
    _linear_shape("mla kv_a_proj", 576, 2048),
    _linear_shape("gqa k/v_proj", 1024, 4096),
    _linear_shape("q/o_proj", 4096, 4096),
)
ALL_GEMM_SHAPES = EXPERT_SHAPES + LINEAR_SHAPES
QUICK_GEMM_SHAPES = (
    EXPERT_SHAPES[0],
    EXPERT_SHAPES[1],
    EXPERT_SHAPES[3],
    LINEAR_SHAPES[0],
    LINEAR_SHAPES[1],
    LINEAR_SHAPES[3],
)  # experts and linears small (the probe models' sizes: their fit sets `efficiency`), mid and large


@dataclass(frozen=True)
class AttentionPoint:
    layout: str  # gqa | mla
    batch: int
    context: int
    group: int  # query heads per KV head (MLA: heads sharing one latent)
    kv_heads: int = 8
    head_dim: int = 128
    kv_lora_rank: int = 512
    rope_dim: int = 64

    @property
    def flops_per_kv_byte(self) -> float:
        """FLOPs per byte of bf16 KV read: the arithmetic intensity that decides compute- vs memory-bound."""
        if self.layout == "gqa":
            return float(self.group)  # g heads x 4D flops / (4D bytes of K+V)
        latent = self.kv_lora_rank + self.rope_dim
        return self.group * 2 * (latent + self.kv_lora_rank) / (2 * latent)


ATTENTION_POINTS = (
    AttentionPoint("gqa", batch=64, context=2048, group=4),
    AttentionPoint("gqa", batch=16, context=512, group=4),
    AttentionPoint("gqa", batch=64, context=2048, group=8),
    AttentionPoint("mla", batch=64, context=2048, group=16),
)


def planner_read_points(points: tuple[AttentionPoint, ...]) -> tuple[AttentionPoint, ...]:
    """Per layout, the point whose curve the planner reads (`steady_state_order`): what a quick profile must
    measure as the full one does, KV far larger than the caches, or its attention rates are biased high."""
    layouts = dict.fromkeys(p.layout for p in points)
    return tuple(max((p for p in points if p.layout == layout), key=steady_state_order) for layout in layouts)


QUICK_ATTENTION_POINTS = planner_read_points(ATTENTION_POINTS)


def thread_grid(cores: int) -> tuple[int, ...]:
    """1, 2, 4, ... below `cores`, then `cores` itself."""
    grid = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t < cores]
    return tuple(grid + [cores])

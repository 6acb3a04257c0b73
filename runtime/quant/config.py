"""A checkpoint's `quantization_config`: its format, which tensors it quantizes, and their on-disk parts.

How it works: docs/design.md, `runtime/quant/config.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import prod

from planner.specs.weight_formats import (
    FP8_BLOCK,
    MX_GROUP,
    QuantSettings,
    excluded,
    parse_quantization_config,
    unsupported_quantization,
)

SCALES = "@scales"
QUANTIZABLE = re.compile(
    r"(attn\.(q|k|v|o|q_a|q_b|kv_a|kv_b)_proj|mlp\.\w+_proj|moe\.experts\.\d+\.\w+|moe\.shared\.\w+_proj)$"
)
# gpt-oss's fused experts, [E, in, out] in memory, stored in MXFP4 as [E, out, in/32, 16] blocks, [E, out, in/32]
FUSED_MXFP4 = ("moe.experts.gate_up_proj", "moe.experts.down_proj")


@dataclass(frozen=True)
class StoredPart:
    suffix: str  # "" (the codes) or SCALES
    disk_name: str
    dtype: str  # safetensors dtype code
    shape: tuple[int, ...]


@dataclass(frozen=True)
class QuantLayout:
    """How one tensor is stored: method, shape [..., rows, cols] as stored, block [rows, cols] of one scale."""

    method: str  # fp8 | mxfp4
    shape: tuple[int, ...]
    block: tuple[int, int]
    segments: int = 1  # row ranges quantized independently (a gate_up expert stack: gate rows, up rows)
    transposed: bool = False  # stored [..., out, in], the tensor is [..., in, out] (FUSED_MXFP4)

    @property
    def nbytes(self) -> int:
        return sum(part_bytes(dtype, shape) for _, dtype, shape in self.parts())

    def parts(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(suffix, dtype code, shape) of the codes and the scales."""
        *lead, rows, cols = self.shape
        br, bc = self.block
        if self.method == "fp8":
            row_blocks = self.segments * -(-rows // self.segments // br)
            return [("", "F8_E4M3", self.shape), (SCALES, "F32", (*lead, row_blocks, -(-cols // bc)))]
        groups = -(-cols // bc)
        return [("", "U8", (*lead, rows, groups, bc // 2)), (SCALES, "U8", (*lead, rows, groups))]

    def stacked(self, count: int, segments: int = 1) -> QuantLayout:
        """The layout of `count` such tensors stacked (rows concatenated `segments` times first)."""
        rows, cols = self.shape
        return QuantLayout(self.method, (count, rows * segments, cols), self.block, segments)


def part_bytes(dtype: str, shape: tuple[int, ...]) -> int:
    return prod(shape) * (4 if dtype == "F32" else 1)


@dataclass(frozen=True)
class QuantConfig(QuantSettings):
    @classmethod
    def from_hf(cls, config: dict) -> QuantConfig | None:
        settings = parse_quantization_config(config)
        return None if settings is None else cls(settings.method, settings.block, settings.not_convert)

    def quantizes(self, canonical: str, disk_name: str) -> bool:
        if _local(canonical) in FUSED_MXFP4:
            quantizable = self.method == "mxfp4"
        else:
            quantizable = bool(QUANTIZABLE.match(_local(canonical))) and disk_name.endswith(".weight")
        return quantizable and not excluded(disk_name.rsplit(".", 1)[0], self.not_convert)

    def layout(self, shape: tuple[int, ...], canonical: str = "") -> QuantLayout:
        """The layout of a quantized tensor of logical `shape` (a FUSED_MXFP4 one's, transposed)."""
        if _local(canonical) in FUSED_MXFP4:
            *lead, rows, cols = shape
            return QuantLayout(self.method, (*lead, cols, rows), self.block, transposed=True)
        return QuantLayout(self.method, tuple(shape), self.block)

    def stored_parts(self, disk_name: str, shape: tuple[int, ...], canonical: str = "") -> list[StoredPart]:
        """The on-disk tensors of one quantized weight `X.weight` (gpt-oss's fused experts: `X`)."""
        names = (
            {"": disk_name, SCALES: disk_name + "_scale_inv"}
            if self.method == "fp8"
            else {"": disk_name + "_blocks", SCALES: disk_name + "_scales"}
        )
        return [
            StoredPart(s, names[s], dtype, part_shape)
            for s, dtype, part_shape in self.layout(shape, canonical).parts()
        ]


def _local(canonical: str) -> str:
    return canonical.split(".", 2)[2] if canonical.startswith("layers.") else canonical


def _layer_pattern(module: str) -> str:
    """`model.layers.3.self_attn.q_proj` -> `model.layers.*.self_attn.q_proj` (a modules_to_not_convert regex)."""
    return re.sub(r"\.layers\.\d+\.", ".layers.*.", module)


def make_quant_config(method: str, tensors) -> dict:
    """The `quantization_config` `runtime make-checkpoint --quant` writes for a checkpoint of `tensors`
    (`names.ExpectedTensor`): fp8 as DeepSeek-V3 (every linear layer but lm_head, 128x128 blocks); mxfp4 as
    gpt-oss (routed experts only: the other linear layers listed in modules_to_not_convert)."""
    if method == "fp8":
        return {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
            "modules_to_not_convert": ["lm_head"],
        }
    if method != "mxfp4":
        raise unsupported_quantization(f"quant_method {method!r}")
    everything = QuantConfig("mxfp4", (1, MX_GROUP), ())
    kept = {
        _layer_pattern(t.disk_name.removesuffix(".weight"))
        for t in tensors
        if everything.quantizes(t.canonical, t.disk_name) and ".moe.experts." not in t.canonical
    }
    return {"quant_method": "mxfp4", "modules_to_not_convert": ["lm_head", *sorted(kept)]}

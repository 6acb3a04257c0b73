"""A checkpoint's `quantization_config`: its format, which tensors it quantizes, and their on-disk parts.

How it works: docs/design.md, `runtime/quant/config.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import prod

from planner.errors import UserError

FP8_BLOCK = 128  # DeepSeek-V3's weight_block_size
MX_GROUP = 32  # values per E8M0 scale (OCP MX)

SCALES = "@scales"
SUPPORTED = "fp8 (fmt e4m3, weight_block_size [128, 128] or other blocks, activation_scheme dynamic), mxfp4"
QUANTIZABLE = re.compile(
    r"(attn\.(q|k|v|o|q_a|q_b|kv_a|kv_b)_proj|mlp\.\w+_proj|moe\.experts\.\d+\.\w+|moe\.shared\.\w+_proj)$"
)
_BOUNDARY = r"(?:(?<=\.)|(?=\.|$))"


@dataclass(frozen=True)
class StoredPart:
    suffix: str  # "" (the codes) or SCALES
    disk_name: str
    dtype: str  # safetensors dtype code
    shape: tuple[int, ...]


@dataclass(frozen=True)
class QuantLayout:
    """How one logical tensor is stored: method, logical shape, block [rows, cols] of one scale."""

    method: str  # fp8 | mxfp4
    shape: tuple[int, ...]
    block: tuple[int, int]
    segments: int = 1  # row ranges quantized independently (a gate_up expert stack: gate rows, up rows)

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


def _unsupported(what: str) -> UserError:
    return UserError(
        f"config.json quantization_config: {what} is not supported; supported: {SUPPORTED}",
        "use a checkpoint in one of the supported formats, or a bf16/fp16/fp32 one",
    )


@dataclass(frozen=True)
class QuantConfig:
    method: str
    block: tuple[int, int]
    not_convert: tuple[str, ...]

    @classmethod
    def from_hf(cls, config: dict) -> QuantConfig | None:
        quant = config.get("quantization_config")
        if quant is None:
            return None
        if not isinstance(quant, dict):
            raise _unsupported(f"{quant!r}")
        method = quant.get("quant_method")
        skip = quant.get("modules_to_not_convert") or []
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            raise _unsupported(f"modules_to_not_convert {skip!r} (a list of module names is)")
        if method == "mxfp4":
            return cls("mxfp4", (1, MX_GROUP), tuple(skip))
        if method != "fp8":
            raise _unsupported(f"quant_method {method!r}")
        block = quant.get("weight_block_size")
        checks = (
            (quant.get("fmt", "e4m3") == "e4m3", f"fmt {quant.get('fmt')!r}"),
            (
                isinstance(block, list)
                and len(block) == 2
                and all(isinstance(b, int) and b > 0 for b in block),
                f"weight_block_size {block!r} (per-tensor or per-channel fp8)",
            ),
            (quant.get("activation_scheme", "dynamic") == "dynamic", "activation_scheme 'static'"),
            (quant.get("scale_fmt", "float") == "float", f"scale_fmt {quant.get('scale_fmt')!r}"),
        )
        for ok, what in checks:
            if not ok:
                raise _unsupported(f"fp8 with {what}")
        return cls("fp8", tuple(block), tuple(skip))

    def quantizes(self, canonical: str, disk_name: str) -> bool:
        local = canonical.split(".", 2)[2] if canonical.startswith("layers.") else canonical
        if not QUANTIZABLE.match(local) or not disk_name.endswith(".weight"):
            return False
        module = disk_name.removesuffix(".weight")
        return not any(
            re.match(rf"(?:{pattern}){_BOUNDARY}", module) or module.endswith(pattern)
            for pattern in self.not_convert
        )

    def layout(self, shape: tuple[int, ...]) -> QuantLayout:
        return QuantLayout(self.method, tuple(shape), self.block)

    def stored_parts(self, disk_name: str, shape: tuple[int, ...]) -> list[StoredPart]:
        """The on-disk tensors of one quantized weight `X.weight`."""
        names = (
            {"": disk_name, SCALES: disk_name + "_scale_inv"}
            if self.method == "fp8"
            else {"": disk_name + "_blocks", SCALES: disk_name + "_scales"}
        )
        return [
            StoredPart(s, names[s], dtype, part_shape) for s, dtype, part_shape in self.layout(shape).parts()
        ]


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
        raise _unsupported(f"quant_method {method!r}")
    everything = QuantConfig("mxfp4", (1, MX_GROUP), ())
    kept = {
        _layer_pattern(t.disk_name.removesuffix(".weight"))
        for t in tensors
        if everything.quantizes(t.canonical, t.disk_name) and ".moe.experts." not in t.canonical
    }
    return {"quant_method": "mxfp4", "modules_to_not_convert": ["lm_head", *sorted(kept)]}

"""Dequantization cost: ns per weight element to turn each stored format into the compute dtype on the device.

`measure_dequant(device, dtype, elements, ...) -> {format: ns}` (a profile's `dequant_ns`, priced by
`planner.perf.dequant`) times the runtime's own `QuantTensor.dequantize` on a stack of expert-sized matrices
of random codes and scales, `elements` weights in all: the engine dequantizes 64 MiB chunks of experts, far
beyond the last-level cache, so the profiles measure at such sizes.
"""

from __future__ import annotations

import torch

from planner.hardware.profile import DEQUANT_FORMATS
from runtime.profiler.timing import median_seconds, significant
from runtime.quant.config import FP8_BLOCK, MX_GROUP, QuantLayout
from runtime.quant.tensor import QuantTensor

COLS, MAX_ROWS = 4096, 2048  # an expert's matrix [rows, hidden]: multiples of the fp8 block and the MX group


def stack_shape(elements: int) -> tuple[int, int, int]:
    """[experts, rows, COLS] with about `elements` weights (at least one fp8 block of rows)."""
    rows = max(FP8_BLOCK, min(MAX_ROWS, elements // COLS) // FP8_BLOCK * FP8_BLOCK)
    return max(1, elements // (rows * COLS)), rows, COLS


def random_stack(method: str, shape: tuple[int, int, int], device: torch.device) -> QuantTensor:
    """Codes and scales of `method`'s on-disk layout, random but finite (no NaN codes or scales)."""
    block = (FP8_BLOCK, FP8_BLOCK) if method == "fp8" else (1, MX_GROUP)
    layout = QuantLayout(method, shape, block)
    (_, _, data_shape), (_, _, scale_shape) = layout.parts()
    generator = torch.Generator().manual_seed(0)
    if method == "fp8":  # magnitudes 0..0x7e (0x7f is NaN), either sign
        magnitude = torch.randint(0, 0x7F, data_shape, dtype=torch.uint8, generator=generator)
        data = (
            magnitude | (torch.randint(0, 2, data_shape, dtype=torch.uint8, generator=generator) << 7)
        ).view(torch.float8_e4m3fn)
        scales = torch.rand(scale_shape, generator=generator) + 0.5
    else:
        data = torch.randint(0, 256, data_shape, dtype=torch.uint8, generator=generator)
        scales = torch.randint(120, 134, scale_shape, dtype=torch.uint8, generator=generator)
    return QuantTensor(layout, data.to(device), scales.to(device))


def measure_dequant(
    device: torch.device, dtype: torch.dtype, elements: int, repeats: int = 5, budget_s: float = 10.0
) -> dict[str, float]:
    """ns per weight element of each stored format, dequantized to `dtype` (median of `repeats`)."""
    shape = stack_shape(elements)
    count = shape[0] * shape[1] * shape[2]
    out = {}
    for method in DEQUANT_FORMATS:
        stack = random_stack(method, shape, device)
        seconds = median_seconds(
            lambda stack=stack: stack.dequantize(dtype),
            device,
            warmup=1,
            repeats=repeats,
            budget_s=budget_s / len(DEQUANT_FORMATS),
        )
        out[method] = significant(seconds / count * 1e9)
        del stack
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out

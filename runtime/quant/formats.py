"""The two stored formats: their code tables and dequantizers (and quantizers for `runtime make-checkpoint`).

- `fp8`: float8 e4m3 (bias 7, 3 mantissa bits, no infinities, S.1111.111 is NaN) with one fp32 scale per
  block of BLOCK x BLOCK values (DeepSeek-V3 `weight_scale_inv`: value = code * scale); the scale grid is
  [ceil(rows/128), ceil(cols/128)], the last block row / column partial when a size is not a multiple.
- `mxfp4`: OCP MX FP4, E2M1 codes (bias 1, 1 mantissa bit), two per byte (low nibble first), one E8M0 byte
  per 32 values along the last dimension (value = code * 2**(byte - 127)); stored [..., ceil(cols/32), 16]
  blocks and [..., ceil(cols/32)] scales, a partial last group padded with zero codes.
Dequantizers take any leading dimensions (experts, rows) and compute in fp32 before rounding to `dtype`.
"""

from __future__ import annotations

import torch

from runtime.quant.config import FP8_BLOCK, MX_GROUP

E8M0_BIAS = 127
E8M0_NAN = 255


def e4m3_value(code: int) -> float:
    """The e4m3fn value of one byte, from the format's definition."""
    sign = -1.0 if code & 0x80 else 1.0
    exponent, mantissa = (code >> 3) & 0xF, code & 0x7
    if exponent == 0xF and mantissa == 0x7:
        return float("nan")
    if exponent == 0:
        return sign * (mantissa / 8) * 2.0**-6
    return sign * (1 + mantissa / 8) * 2.0 ** (exponent - 7)


def e2m1_value(code: int) -> float:
    """The E2M1 value of one 4-bit code, from the format's definition."""
    sign = -1.0 if code & 0x8 else 1.0
    exponent, mantissa = (code >> 1) & 0x3, code & 0x1
    if exponent == 0:
        return sign * mantissa * 0.5
    return sign * (1 + mantissa / 2) * 2.0 ** (exponent - 1)


E4M3_VALUES = tuple(e4m3_value(code) for code in range(256))
E2M1_VALUES = tuple(e2m1_value(code) for code in range(16))
E4M3_MAX = 448.0
E2M1_MAX = 6.0


def _expand(scale: torch.Tensor, block: int, size: int, dim: int) -> torch.Tensor:
    return scale.repeat_interleave(block, dim=dim).narrow(dim, 0, size)


def dequantize_fp8(
    data: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype, block: tuple[int, int] = (FP8_BLOCK,) * 2
) -> torch.Tensor:
    """data [..., R, C] float8_e4m3fn, scale_inv [..., ceil(R/br), ceil(C/bc)] fp32 -> [..., R, C] dtype."""
    rows, cols = data.shape[-2:]
    br, bc = block
    if rows % br == 0 and cols % bc == 0:  # whole blocks: each scaled in place (half the time of expanding)
        tiles = data.float().unflatten(-1, (cols // bc, bc)).unflatten(-3, (rows // br, br))
        return tiles.mul_(scale_inv.float()[..., :, None, :, None]).flatten(-4, -3).flatten(-2).to(dtype)
    scale = _expand(_expand(scale_inv.float(), block[0], rows, -2), block[1], cols, -1)
    return (data.float() * scale).to(dtype)


def _byte_values(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[256, 2]: the two E2M1 values of each byte (low nibble first), exact in any float dtype."""
    key = (dtype, device)
    if key not in _BYTE_VALUES:
        table, byte = torch.tensor(E2M1_VALUES, dtype=torch.float32), torch.arange(256)
        _BYTE_VALUES[key] = torch.stack((table[byte & 0xF], table[byte >> 4]), -1).to(
            dtype=dtype, device=device
        )
    return _BYTE_VALUES[key]


_BYTE_VALUES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def dequantize_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, cols: int, dtype: torch.dtype
) -> torch.Tensor:
    """blocks [..., G, 16] uint8, scales [..., G] uint8 -> [..., cols] dtype (cols <= 32 * G).

    bf16 and fp32 hold every code times every power of two exactly, so they multiply in `dtype` itself."""
    work = dtype if dtype in (torch.bfloat16, torch.float32) else torch.float32
    values = _byte_values(work, blocks.device)[blocks.int()]  # [..., G, 16, 2]
    scale = torch.exp2(scales.to(torch.float32) - E8M0_BIAS)
    scale = torch.where(scales == E8M0_NAN, float("nan"), scale).to(work)
    values = values.mul_(scale[..., None, None]).flatten(-3)
    return values[..., :cols].to(dtype)


def quantize_fp8(
    weight: torch.Tensor, block: tuple[int, int] = (FP8_BLOCK,) * 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """[R, C] -> (float8_e4m3fn [R, C], fp32 scale_inv [ceil(R/br), ceil(C/bc)]), each block's max at 448."""
    rows, cols = weight.shape
    br, bc = block
    padded = torch.zeros(-(-rows // br) * br, -(-cols // bc) * bc, dtype=torch.float32)
    padded[:rows, :cols] = weight.float()
    tiles = padded.view(padded.shape[0] // br, br, padded.shape[1] // bc, bc)
    amax = tiles.abs().amax(dim=(1, 3))
    scale_inv = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    data = (tiles / scale_inv[:, None, :, None]).view_as(padded)[:rows, :cols]
    return data.to(torch.float8_e4m3fn), scale_inv


def quantize_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., C] -> (uint8 blocks [..., G, 16], uint8 E8M0 scales [..., G]), G = ceil(C/32); round to nearest."""
    cols = weight.shape[-1]
    groups = -(-cols // MX_GROUP)
    padded = torch.zeros(*weight.shape[:-1], groups * MX_GROUP, dtype=torch.float32)
    padded[..., :cols] = weight.float()
    padded = padded.unflatten(-1, (groups, MX_GROUP))
    amax = padded.abs().amax(dim=-1)
    # the smallest power of two that brings the group's largest value within E2M1's range
    exponent = torch.ceil(torch.log2(torch.where(amax > 0, amax / E2M1_MAX, torch.ones_like(amax))))
    exponent = exponent.clamp(-E8M0_BIAS, E8M0_BIAS)
    scaled = padded / torch.exp2(exponent).unsqueeze(-1)
    magnitudes = torch.tensor(E2M1_VALUES[:8], dtype=torch.float32)
    midpoints = (magnitudes[1:] + magnitudes[:-1]) / 2
    codes = torch.bucketize(scaled.abs(), midpoints).to(torch.uint8)  # the nearest magnitude
    codes |= (scaled < 0).to(torch.uint8) << 3
    pairs = codes.unflatten(-1, (MX_GROUP // 2, 2))
    blocks = pairs[..., 0] | (pairs[..., 1] << 4)
    return blocks, (exponent + E8M0_BIAS).to(torch.uint8)

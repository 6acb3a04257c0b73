"""The FP8 and MXFP4 dequantizers against tensors built by hand from each format's definition."""

import math

import pytest
import torch

from planner.errors import UserError
from runtime.quant.config import SCALES, QuantConfig, QuantLayout
from runtime.quant.formats import (
    E2M1_VALUES,
    E4M3_VALUES,
    dequantize_fp8,
    dequantize_mxfp4,
    quantize_fp8,
    quantize_mxfp4,
)
from runtime.quant.tensor import QuantTensor, QuantView


def test_e4m3_code_table_from_the_definition():
    assert E4M3_VALUES[0x38] == 1.0  # exponent 7 = bias, mantissa 0
    assert E4M3_VALUES[0x7E] == 448.0  # the largest finite value
    assert E4M3_VALUES[0x01] == 2.0**-9  # the smallest subnormal
    assert E4M3_VALUES[0xC0] == -2.0
    assert math.isnan(E4M3_VALUES[0x7F]) and math.isnan(E4M3_VALUES[0xFF])
    native = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    ours = torch.tensor(E4M3_VALUES)
    assert torch.equal(native.isnan(), ours.isnan())
    assert torch.equal(native[~native.isnan()], ours[~ours.isnan()])


def test_e2m1_code_table_from_the_definition():
    assert E2M1_VALUES == (
        0.0,
        0.5,
        1.0,
        1.5,
        2.0,
        3.0,
        4.0,
        6.0,
        -0.0,
        -0.5,
        -1.0,
        -1.5,
        -2.0,
        -3.0,
        -4.0,
        -6.0,
    )


def test_fp8_block_scales_with_partial_last_blocks():
    rows, cols = 130, 200  # last block row has 2 rows, last block column 72 columns
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (rows, cols), generator=gen, dtype=torch.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x38  # no NaN codes
    scale_inv = torch.rand(2, 2, generator=gen) * 4 + 0.5
    expected = torch.empty(rows, cols, dtype=torch.float64)
    for r in range(rows):
        for c in range(cols):
            expected[r, c] = E4M3_VALUES[int(codes[r, c])] * float(scale_inv[r // 128, c // 128])
    got = dequantize_fp8(codes.view(torch.float8_e4m3fn), scale_inv, torch.float32)
    assert torch.allclose(got.double(), expected, rtol=1e-6, atol=0)
    stack = dequantize_fp8(
        codes.view(torch.float8_e4m3fn).expand(3, -1, -1), scale_inv.expand(3, -1, -1), torch.float32
    )
    assert torch.equal(stack[2], got)


def test_mxfp4_groups_nibbles_and_partial_last_group():
    rows, cols = 3, 70  # 3 groups of 32, the last holds 6 values
    gen = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 256, (rows, 3, 16), generator=gen, dtype=torch.uint8)
    scales = torch.randint(120, 135, (rows, 3), generator=gen, dtype=torch.uint8)
    expected = torch.empty(rows, cols, dtype=torch.float64)
    for r in range(rows):
        for c in range(cols):
            group, j = divmod(c, 32)
            byte = int(blocks[r, group, j // 2])
            code = byte & 0xF if j % 2 == 0 else byte >> 4  # low nibble holds the even element
            expected[r, c] = E2M1_VALUES[code] * 2.0 ** (int(scales[r, group]) - 127)
    got = dequantize_mxfp4(blocks, scales, cols, torch.float32)
    assert got.shape == (rows, cols)
    assert torch.equal(got.double(), expected)
    assert torch.equal(dequantize_mxfp4(blocks, scales, cols, torch.bfloat16).double(), expected)  # exact


def test_quantizers_round_trip():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(130, 200, generator=gen)
    data, scale_inv = quantize_fp8(w)
    assert data.dtype == torch.float8_e4m3fn and scale_inv.shape == (2, 2)
    assert (dequantize_fp8(data, scale_inv, torch.float32) - w).abs().max() < 0.07 * w.abs().max()
    blocks, scales = quantize_mxfp4(w)
    assert blocks.shape == (130, 7, 16) and scales.shape == (130, 7)
    back = dequantize_mxfp4(blocks, scales, 200, torch.float32)
    assert (back - w).abs().max() <= 0.25 * w.abs().max()
    exact = torch.tensor([[0.5, -6.0, 3.0, 0.0] * 8])  # E2M1 values: stored exactly, scale 2**0
    blocks, scales = quantize_mxfp4(exact)
    assert int(scales[0, 0]) == 127 and torch.equal(
        dequantize_mxfp4(blocks, scales, 32, torch.float32), exact
    )


def test_stacked_gate_up_keeps_each_halfs_block_grid():
    inter, hidden = 130, 200  # gate and up each end in a partial block row
    gen = torch.Generator().manual_seed(3)
    gate, up = torch.randn(inter, hidden, generator=gen), torch.randn(inter, hidden, generator=gen)
    (gd, gs), (ud, us) = quantize_fp8(gate), quantize_fp8(up)
    layout = QuantLayout("fp8", (inter, hidden), (128, 128)).stacked(1, segments=2)
    assert [shape for _, _, shape in layout.parts()] == [(1, 2 * inter, hidden), (1, 4, 2)]
    stack = QuantTensor(layout, torch.cat((gd, ud))[None], torch.cat((gs, us))[None])
    want = torch.cat((dequantize_fp8(gd, gs, torch.float32), dequantize_fp8(ud, us, torch.float32)))
    assert torch.equal(stack.dequantize(torch.float32)[0], want)
    assert stack.nbytes == layout.nbytes


def test_quant_view_dequantizes_on_access_and_hides_scales():
    data, scale_inv = quantize_fp8(torch.randn(4, 8))
    layout = QuantLayout("fp8", (4, 8), (128, 128))
    view = QuantView({"w": data, "w" + SCALES: scale_inv, "n": torch.ones(8)}, {"w": layout}, torch.float32)
    assert sorted(view) == ["n", "w"] and "w" + SCALES not in view
    assert torch.equal(view["w"], dequantize_fp8(data, scale_inv, torch.float32))
    kept = QuantView({"w": data, "w" + SCALES: scale_inv}, {"w": layout}, torch.float32, keep=lambda n: True)
    assert isinstance(kept["w"], QuantTensor)


@pytest.mark.parametrize(
    "quant, named",
    [
        ({"quant_method": "awq", "bits": 4}, "'awq'"),
        ({"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]}, "e5m2"),
        ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "per-tensor"),
        ({"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "static"}, "static"),
        ({"quant_method": "fp8", "weight_block_size": [128, 128], "scale_fmt": "ue8m0"}, "ue8m0"),
    ],
)
def test_unsupported_quantization_is_one_user_error_listing_the_supported(quant, named):
    with pytest.raises(UserError) as err:
        QuantConfig.from_hf({"quantization_config": quant})
    assert named in err.value.cause and "supported: fp8" in err.value.cause and "mxfp4" in err.value.cause


def test_which_tensors_are_quantized_follows_modules_to_not_convert():
    config = QuantConfig.from_hf(
        {
            "quantization_config": {
                "quant_method": "mxfp4",
                "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head", "model.layers.1.mlp"],
            }
        }
    )
    assert config.quantizes(
        "layers.0.moe.experts.3.gate_proj", "model.layers.0.mlp.experts.3.gate_proj.weight"
    )
    assert not config.quantizes("layers.0.attn.q_proj", "model.layers.0.self_attn.q_proj.weight")
    assert not config.quantizes("layers.1.mlp.up_proj", "model.layers.1.mlp.up_proj.weight")
    assert config.quantizes(
        "layers.11.mlp.up_proj", "model.layers.11.mlp.up_proj.weight"
    )  # a module boundary
    assert not config.quantizes("layers.0.moe.router", "model.layers.0.mlp.gate.weight")  # routers never
    assert not config.quantizes("lm_head", "lm_head.weight") and not config.quantizes(
        "embed", "model.embed_tokens.weight"
    )

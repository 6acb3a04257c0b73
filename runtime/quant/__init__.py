"""Quantized weights kept as stored (FP8 e4m3 with block scales, MXFP4): formats, dequantizers, config.

`formats` (code tables, dequantize / quantize), `config` (a checkpoint's `quantization_config`: which tensors
are quantized, their on-disk parts), `tensor` (`QuantTensor`, a stored tensor and its scales as one value).
"""

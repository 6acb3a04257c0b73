"""Weight storage formats per module, read from a checkpoint's `quantization_config` (torch-free).

- `WEIGHT_FORMAT_BYTES[fmt]`: stored bytes per parameter, codes plus scales: `fp8` (e4m3, one fp32 scale per
  128x128 block) and `mxfp4` (half a byte per value, one E8M0 byte per 32 values).
- `parse_quantization_config(cfg) -> QuantSettings | None`: the one check of a quantization_config; anything
  the runtime cannot dequantize is a UserError naming it and listing the supported ones.
- `excluded(module, patterns)`: transformers' `modules_to_not_convert` rule (a prefix up to a module boundary,
  a regex with that boundary, or a suffix).
- `weight_formats_from_hf(cfg, family) -> {module: fmt}`: the planner modules a checkpoint stores quantized:
  those made of linear layers (`QUANT_MODULES`) whose HF module name is not excluded (routers, norms,
  embeddings and lm_head never are). `weights_label(dtype, formats)`: the same in words (plans, explain).
- `quantization_config_for(formats, family, modules)`: the quantization_config that reads back as `formats` (what
  `spec_to_hf_config` writes; fp8 as DeepSeek-V3 publishes it, 128x128 blocks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from planner.errors import UserError

FP8_BLOCK = 128  # DeepSeek-V3's weight_block_size
MX_GROUP = 32  # values per E8M0 scale (OCP MX)
WEIGHT_FORMAT_BYTES = {"fp8": 1 + 4 / FP8_BLOCK**2, "mxfp4": (MX_GROUP // 2 + 1) / MX_GROUP}
QUANT_MODULES = ("qkv_proj", "o_proj", "experts", "shared_experts", "dense_mlp")
SUPPORTED = "fp8 (fmt e4m3, block scales weight_block_size [128, 128] or other blocks, activation_scheme dynamic), mxfp4"
_BOUNDARY = r"(?:(?<=\.)|(?=\.|$))"
# one HF module name per planner module (layer 0), for families whose names differ from the common ones
_EXPERTS = {"mixtral": "block_sparse_moe.experts.0.w1", "gpt_oss": "mlp.experts"}
_SHARED = {"qwen2_moe": "mlp.shared_expert.gate_proj"}
_ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj")


@dataclass(frozen=True)
class QuantSettings:
    method: str  # fp8 | mxfp4
    block: tuple[int, int]  # values per scale: (rows, columns)
    not_convert: tuple[str, ...]


def unsupported_quantization(what: str) -> UserError:
    return UserError(
        f"config.json quantization_config: {what} is not supported; supported: {SUPPORTED}",
        "use a checkpoint in one of the supported formats, or a bf16/fp16/fp32 one",
    )


def parse_quantization_config(cfg: dict) -> QuantSettings | None:
    quant = cfg.get("quantization_config")
    if quant is None:
        return None
    if not isinstance(quant, dict):
        raise unsupported_quantization(f"{quant!r}"[:100])
    method = quant.get("quant_method")
    skip = quant.get("modules_to_not_convert") or []
    if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
        raise unsupported_quantization(f"modules_to_not_convert {skip!r} (a list of module names is)"[:200])
    if method == "mxfp4":
        return QuantSettings("mxfp4", (1, MX_GROUP), tuple(skip))
    if method != "fp8":
        raise unsupported_quantization(f"quant_method {method!r}"[:100])
    block = quant.get("weight_block_size")
    checks = (
        (quant.get("fmt", "e4m3") == "e4m3", f"fmt {quant.get('fmt')!r}"),
        (
            isinstance(block, list) and len(block) == 2 and all(type(b) is int and b > 0 for b in block),
            f"weight_block_size {block!r} (per-tensor or per-channel fp8)",
        ),
        (quant.get("activation_scheme", "dynamic") == "dynamic", "activation_scheme 'static'"),
        (quant.get("scale_fmt", "float") == "float", f"scale_fmt {quant.get('scale_fmt')!r}"),
    )
    for ok, what in checks:
        if not ok:
            raise unsupported_quantization(f"fp8 with {what}"[:200])
    return QuantSettings("fp8", tuple(block), tuple(skip))


def excluded(module: str, patterns: tuple[str, ...]) -> bool:
    return any(re.match(rf"(?:{p}){_BOUNDARY}", module) or module.endswith(p) for p in patterns)


def weight_formats_from_hf(cfg: dict, family: str) -> dict[str, str]:
    settings = parse_quantization_config(cfg)
    if settings is None:
        return {}
    names = {
        "qkv_proj": "self_attn.q_proj",
        "o_proj": "self_attn.o_proj",
        "experts": _EXPERTS.get(family, "mlp.experts.0.gate_proj"),
        "shared_experts": _SHARED.get(family, "mlp.shared_experts.gate_proj"),
        "dense_mlp": "mlp.gate_proj",
    }
    return {
        module: settings.method
        for module, name in names.items()
        if not excluded(f"model.layers.0.{name}", settings.not_convert)
    }


def _hf_modules(module: str, family: str) -> list[str]:
    """`modules_to_not_convert` patterns covering one planner module in every layer."""
    layer = "model.layers.*."
    if module == "qkv_proj":
        return [f"{layer}self_attn.{name}" for name in _ATTENTION_INPUTS]
    if module == "o_proj":
        return [f"{layer}self_attn.o_proj"]
    if module == "experts":
        return [layer + _EXPERTS.get(family, "mlp.experts.0.gate_proj").split(".experts")[0] + ".experts"]
    if module == "shared_experts":
        return [layer + _SHARED.get(family, "mlp.shared_experts.gate_proj").removesuffix(".gate_proj")]
    return [f"{layer}mlp.{name}" for name in ("gate_proj", "up_proj", "down_proj")]  # dense_mlp


def quantization_config_for(formats: dict[str, str], family: str, modules: tuple[str, ...]) -> dict | None:
    """The quantization_config whose `weight_formats_from_hf` is `formats`, for a model with `modules` of
    QUANT_MODULES (None: nothing quantized)."""
    methods = sorted(set(formats.values()))
    if not methods:
        return None
    if len(methods) > 1:
        raise UserError(
            f"weight formats {formats} mix {' and '.join(methods)}; one quantization_config holds one method",
            "store every quantized module in one format",
        )
    skip = ["lm_head"] + [p for m in modules if m not in formats for p in _hf_modules(m, family)]
    if methods[0] == "mxfp4":
        return {"quant_method": "mxfp4", "modules_to_not_convert": skip}
    return {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
        "modules_to_not_convert": skip,
    }


def weights_label(dtype: str, formats: dict[str, str]) -> str:
    """Weight storage in words: `bfloat16`, or `fp8 (qkv_proj, experts), bfloat16 elsewhere`."""
    by_format: dict[str, list[str]] = {}
    for module, fmt in formats.items():
        by_format.setdefault(fmt, []).append(module)
    stored = "; ".join(f"{fmt} ({', '.join(modules)})" for fmt, modules in by_format.items())
    return f"{stored}, {dtype} elsewhere" if stored else dtype

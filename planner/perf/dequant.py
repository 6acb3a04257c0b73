"""Time to dequantize the weights a model stores quantized (`spec.weight_formats`), per module call, torch-free.

The runtime dequantizes on the device that computes, at every use: each FFN call dequantizes every routed expert
of the layer (`runtime.engine.expert_stacks.dense_stacks`), each call of another quantized module its weights
(`runtime.quant.tensor.QuantView`). A call costs its weight elements x ns per element: the profile's
`dequant_ns` (`runtime.profiler.dequant`), else `memory_bound_ns` (docs/contracts.md, 'Hardware profile').
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.hardware.profile import HardwareProfile
from planner.modules import Module as M
from planner.perf.costs import ModelCosts
from planner.perf.rates import Rates, module_matrices
from planner.specs.weight_formats import WEIGHT_FORMAT_BYTES

MEASURED, DEFAULT = "measured", "memory-bound default"


def memory_bound_ns(fmt: str, dtype_bytes: int, read_bps: float) -> float:
    """The floor of any dequantizer: the stored bytes read and the compute-dtype weight written once."""
    return (WEIGHT_FORMAT_BYTES[fmt] + dtype_bytes) / read_bps * 1e9


@dataclass(frozen=True)
class DequantTerms:
    per_call_s: dict[str, float]  # module -> seconds one call spends dequantizing (absent: not quantized)
    ns_per_weight: dict[str, float]  # format -> ns per weight element, as priced
    source: (
        str | None
    )  # MEASURED (every format from the profile), DEFAULT (any not), None (nothing quantized)

    @classmethod
    def build(cls, costs: ModelCosts, profile: HardwareProfile, rates: Rates) -> DequantTerms:
        spec = costs.spec
        formats = sorted(set(spec.weight_formats.values()))
        ns = {
            fmt: profile.dequant_ns.get(fmt) or memory_bound_ns(fmt, spec.dtype_bytes, rates.device_read_bps)
            for fmt in formats
        }
        measured = all(fmt in profile.dequant_ns for fmt in formats)
        elements = {
            module: sum(flops_per_row / 2 for _, _, flops_per_row in matrices)
            for module, matrices in module_matrices(costs).items()
        }
        elements[M.EXPERTS] *= spec.num_experts  # every expert of the layer, hit or not
        per_call = {module: elements[module] * ns[fmt] * 1e-9 for module, fmt in spec.weight_formats.items()}
        return cls(per_call, ns, (MEASURED if measured else DEFAULT) if formats else None)

    def layer(self, qkv_calls, ffn_calls) -> dict[str, float]:
        """Seconds per layer of the modules other than the routed experts (`expert_call_s`), for `qkv_calls`
        attention micro-batches and `ffn_calls` FFN calls (`planner.modules.DECODE_CALLS`)."""
        per = self.per_call_s
        return {
            M.QKV_PROJ: qkv_calls * per.get(M.QKV_PROJ, 0.0),
            M.O_PROJ: qkv_calls * per.get(M.O_PROJ, 0.0),
            M.SHARED_EXPERTS: ffn_calls * per.get(M.SHARED_EXPERTS, 0.0),
            M.DENSE_MLP: ffn_calls * per.get(M.DENSE_MLP, 0.0),
        }

    @property
    def expert_call_s(self) -> float:
        """Seconds one FFN call spends dequantizing the layer's routed experts."""
        return self.per_call_s.get(M.EXPERTS, 0.0)

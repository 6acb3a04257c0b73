"""`QuantTensor`: a stored tensor's codes and scales as one value, dequantized on demand, in expert chunks.

`QuantTensor(layout, data, scales)`; `dequantize(dtype)` the whole tensor; `experts(lo, hi)` the sub-stack of
experts lo..hi-1 of an [n, R, C] stack (still quantized; views, nothing copied); `nbytes` what it stores.
`QuantView(weights, layouts, dtype, keep)` is a read-only mapping over a weights mapping that holds parts
(`name`, `name@scales`): a quantized name comes back as a QuantTensor where `keep(name)` (the engine's
expert stacks, dequantized chunk by chunk in the FFN), else dequantized to `dtype` on access.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import torch

from runtime.quant.config import SCALES, QuantLayout
from runtime.quant.formats import dequantize_fp8, dequantize_mxfp4


@dataclass(frozen=True)
class QuantTensor:
    layout: QuantLayout
    data: torch.Tensor
    scales: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return self.layout.shape

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.data, self.scales))

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        layout = self.layout
        if layout.method == "mxfp4":
            values = dequantize_mxfp4(self.data, self.scales, layout.shape[-1], dtype)
            return values.transpose(-1, -2) if layout.transposed else values
        if layout.segments == 1:
            return dequantize_fp8(self.data, self.scales, dtype, layout.block)
        data = self.data.chunk(layout.segments, dim=-2)
        scales = self.scales.chunk(layout.segments, dim=-2)
        return torch.cat([dequantize_fp8(d, s, dtype, layout.block) for d, s in zip(data, scales)], dim=-2)

    def experts(self, lo: int, hi: int) -> QuantTensor:
        layout = replace(self.layout, shape=(hi - lo, *self.layout.shape[1:]))
        return QuantTensor(layout, self.data[lo:hi], self.scales[lo:hi])


class QuantView(Mapping):
    def __init__(
        self,
        weights: Mapping[str, torch.Tensor],
        layouts: Mapping[str, QuantLayout],
        dtype: torch.dtype,
        keep: Callable[[str], bool] = lambda name: False,
    ):
        self._weights, self._layouts, self._dtype, self._keep = weights, layouts, dtype, keep

    def __getitem__(self, name: str):
        layout = self._layouts.get(name)
        if layout is None:
            return self._weights[name]
        tensor = QuantTensor(layout, self._weights[name], self._weights[name + SCALES])
        return tensor if self._keep(name) else tensor.dequantize(self._dtype)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and not name.endswith(SCALES) and name in self._weights

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._weights if not name.endswith(SCALES))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def get(self, name: str, default=None):
        return self[name] if name in self else default

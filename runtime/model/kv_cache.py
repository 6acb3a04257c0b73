"""A simple per-sequence KV cache for the reference forward (correctness over speed).

`SequenceCache(num_layers)` holds one `LayerKV` per layer. `LayerKV.append(**named)` appends tensors along
dim 0 (tokens) under any names the layer's attention chooses (GQA: `k`, `v` [T, H_kv, D]; MLA: its latent)
and returns the whole cached tensors by name. Storage grows by doubling, so appends are amortised O(T).
`cache.length` is the number of tokens cached, i.e. the position of the next token.
"""

from __future__ import annotations

import torch


class LayerKV:
    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self.length = 0

    def append(self, **new: torch.Tensor) -> dict[str, torch.Tensor]:
        num_new = next(iter(new.values())).shape[0]
        if any(t.shape[0] != num_new for t in new.values()):
            raise ValueError("all appended tensors need the same number of tokens")
        end = self.length + num_new
        for name, tensor in new.items():
            buffer = self._buffers.get(name)
            if buffer is None or buffer.shape[0] < end:
                grown = tensor.new_empty(
                    (max(end, 2 * (0 if buffer is None else buffer.shape[0])), *tensor.shape[1:])
                )
                if buffer is not None:
                    grown[: self.length] = buffer[: self.length]
                buffer = self._buffers[name] = grown
            buffer[self.length : end] = tensor
        self.length = end
        return {name: buffer[:end] for name, buffer in self._buffers.items()}


class SequenceCache:
    def __init__(self, num_layers: int) -> None:
        self.layers = [LayerKV() for _ in range(num_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length

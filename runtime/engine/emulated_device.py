"""The emulated device of an emulated-link plan (`planner.hardware.emulated_link`): the paced link and the memory cap.

How it works: docs/design.md, `runtime/engine/emulated_device.py`.
"""

from __future__ import annotations

from planner.errors import UserError
from planner.perf.costs import ModelCosts
from planner.perf.layout import activation_dims
from planner.specs.spec import ModelSpec
from runtime.engine.config import EngineConfig
from runtime.transfer import PacedLink

MiB = float(1 << 20)


class EmulatedDevice:
    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.config = config
        self.link = PacedLink(config.link_gbps)
        self.device_bytes = 0  # the device set `check_memory` accepted
        qkv_out, attn_out = activation_dims(spec)
        self.decode_bytes_per_seq = (qkv_out + attn_out) * spec.dtype_bytes * spec.num_layers
        self.prefill_bytes_per_token = ModelCosts(spec).kv_bytes_per_token_per_layer() * spec.num_layers

    def step_traffic(self, prefill_tokens: int, decode_seqs: int) -> None:
        self.link.occupy(
            prefill_tokens * self.prefill_bytes_per_token + decode_seqs * self.decode_bytes_per_seq
        )

    def check_memory(self, resident_weights: int, stream_buffers: int, kv_cache: int) -> dict[str, int]:
        """The device set by category; a UserError when it exceeds the device memory."""
        limit = self.config.device_memory_bytes
        parts = {
            "resident weights": resident_weights,
            "stream buffers": stream_buffers,
            "KV cache (model-based batching keeps it on the device)": kv_cache,
            "activations (the plan's allowance)": self.config.device_activation_bytes,
        }
        total = sum(parts.values())
        self.device_bytes = total
        if limit is not None and total > limit:
            listed = ", ".join(f"{name} {size / MiB:.1f} MiB" for name, size in parts.items() if size)
            raise UserError(
                f"the plan's device set ({total / MiB:.1f} MiB: {listed}) exceeds the emulated device "
                f"memory of {limit / MiB:.1f} MiB",
                "re-solve the plan with `planner solve` for this profile (fewer sequences, fewer "
                "resident weights), or profile with a larger --emulate-device-gb",
            )
        return parts

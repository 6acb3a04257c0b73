"""Where a weight lives: the one residency rule the Plan and the engine's EngineConfig both answer with."""

from __future__ import annotations


def is_resident(
    module: str, expert: int | None, streams: bool, resident_modules: tuple[str, ...], resident_experts: int
) -> bool:
    """Whether a weight module (routed expert `expert` of a MoE layer) lives on the device: everything does
    unless weights stream; then the resident modules and routed experts 0..resident_experts-1."""
    if not streams or module in resident_modules:
        return True
    return module == "experts" and expert is not None and expert < resident_experts

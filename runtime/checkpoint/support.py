"""What can run, in one home: the support checks on a ModelSpec, each raising one `UserError`.
`check_loadable` (the loader has names for it), `check_reference_runnable` (the reference forward
implements it), `check_engine_attention` (the engine has an attention backend for it). Callers pass their
own tables (name maps, attention kinds, routers) so this module imports neither model nor engine code.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from planner.errors import UserError
from planner.specs.spec import ModelSpec

GPT_OSS_ONLY = ("attention_sinks", "router_linear_bias", "expert_bias")


def check_loadable(spec: ModelSpec, name_maps: Iterable[str]) -> None:
    """Raise UserError for families or options the loader has no names for (`name_maps`: families with a map)."""
    families = list(name_maps)
    if spec.family not in families:
        raise UserError(
            f"architecture {spec.family!r} ({spec.name}) has no checkpoint name map",
            f"use a checkpoint of one of {families}",
        )
    oss = spec.family == "gpt_oss"
    unsupported = {
        "attention_bias": spec.attention_bias and spec.attention == "mla",
        "router_linear_bias": spec.router_linear_bias and not oss,
        "expert_bias": spec.expert_bias != oss,
        "attention_sinks": spec.attention_sinks and not oss,
        f"norm_type={spec.norm_type}": spec.norm_type not in ("rms", "layernorm"),
    }
    bad = [option for option, present in unsupported.items() if present]
    if bad:
        raise UserError(
            f"{spec.family} checkpoint ({spec.name}) uses {bad}, which the runtime does not load",
            "use a checkpoint without these options",
        )


def check_reference_runnable(spec: ModelSpec, attention_kinds: Container[str], routing: str, routers) -> None:
    """Raise UserError for what the reference forward does not implement (`routing`: the spec's router key)."""
    problems = []
    if spec.attention not in attention_kinds:
        problems.append(f"attention {spec.attention!r}")
    if routing not in routers:
        problems.append(f"routing {routing}")
    if spec.norm_type not in ("rms", "layernorm"):
        problems.append(f"norm_type {spec.norm_type!r}")
    for flag in GPT_OSS_ONLY:
        if getattr(spec, flag) and spec.family != "gpt_oss":
            problems.append(flag)
    if problems:
        raise UserError(
            f"{spec.name} ({spec.family}): the reference forward does not implement {', '.join(problems)}",
            "use a model of a runnable family (mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek, gpt_oss, glm4_moe, "
            "phimoe)",
        )


def check_engine_attention(spec: ModelSpec, backends: Iterable[str]) -> None:
    """Raise UserError when the engine has no backend for the spec's attention (`backends`: their kinds)."""
    kinds = sorted(backends)
    if spec.attention not in kinds:
        raise UserError(
            f"{spec.name}: the engine has no {spec.attention!r} attention backend",
            f"use a model whose attention is one of {kinds}",
        )

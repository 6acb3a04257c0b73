"""Printed form of a run report (`runtime.report.build`): the vLLM throughput line and predicted-vs-achieved tables.

`throughput_line(report)` is vLLM's `Throughput: X requests/s, Y total tokens/s, Z output tokens/s`;
`format_report(report)` adds tokens/s (end to end, decode, prefill), seconds per decode step per module,
S-MBU / S-MFU, resource busy fractions, activated experts, peak memory against the plan and skipped lines.
"""

from __future__ import annotations

from typing import Any

from planner.tables import number_cell, percent_cell, text_table
from planner.units import GiB


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GiB:.2f} GiB"


def throughput_line(report: dict[str, Any]) -> str:
    return (
        f"Throughput: {number_cell(report['requests_per_second'], '.2f')} requests/s, "
        f"{number_cell(report['tokens_per_second'], '.2f')} total tokens/s, "
        f"{number_cell(report['output_tokens_per_second'], '.2f')} output tokens/s"
    )


def _module_table(title: str, rows: list[dict], unit: str) -> list[str]:
    body = [
        (
            r["module"],
            number_cell(r["predicted_s"] and r["predicted_s"] * 1e3, ".3g"),
            number_cell(r["measured_s"] and r["measured_s"] * 1e3, ".3g"),
            percent_cell(r["relative_error"]),
        )
        for r in rows
    ]
    return ["", title, *text_table(("module", f"predicted {unit}", f"measured {unit}", "error"), body)]


def format_report(report: dict[str, Any]) -> str:
    device = report.get("profile", {}).get("device")
    out = [throughput_line(report)] + ([f"device: {device}"] if device else []) + [""]
    names = {
        "end_to_end": "generated tok/s (end to end)",
        "decode": "decode tok/s",
        "prefill": "prefill tok/s",
    }
    rows = [
        (
            names[k],
            number_cell(v["predicted"], ".1f"),
            number_cell(v["achieved"], ".1f"),
            percent_cell(v["relative_error"]),
        )
        for k, v in report["throughput"].items()
    ]
    out += text_table(("", "predicted", "achieved", "error"), rows)
    out += _module_table("per decode step (prefill: amortised per step)", report["decode_step_modules"], "ms")
    out += _module_table("prefill, per 1000 prompt tokens", report["prefill_modules"], "ms")
    u = report["utilisation"]
    out += [
        "",
        f"S-MBU {_share(u['s_mbu']['achieved'])} (plan {_share(u['s_mbu']['predicted'])}), "
        f"S-MFU {_share(u['s_mfu']['achieved'])} (plan {_share(u['s_mfu']['predicted'])}) "
        f"of {u['peak_memory_gbps']:.1f} GB/s and {u['peak_dense_tflops']:.3g} TFLOP/s measured peaks",
    ]
    busy = ", ".join(
        f"{name} {_share(v['achieved'])} (plan {_share(v['predicted'])})"
        for name, v in u["resources"].items()
    )
    out.append(f"busy share of decode time: {busy}")
    attention = u["attention_kv_gbps"]
    out.append(
        f"CPU attention KV read {number_cell(attention['achieved'], '.2f')} GB/s "
        f"(profile {number_cell(attention['profile'], '.2f')} GB/s)"
    )
    experts = report["activated_experts"]
    out.append(
        f"activated experts per MoE layer per step {number_cell(experts['per_moe_layer_per_step'], '.2f')} "
        f"(uniform routing at the mean batch of {experts['mean_decode_batch']:.1f}: "
        f"{number_cell(experts['uniform_expectation'], '.2f')})"
    )
    for side in ("host", "device"):
        m = report["memory"][side]
        if m["peak_bytes"] or m["plan_bytes"]:
            out.append(
                f"peak {side} memory {_gib(m['peak_bytes'])} (plan {_gib(m['plan_bytes'])}, "
                f"budget {_gib(m['budget_bytes'])})"
            )
    if report["resumed_requests"]:
        out.append(f"resumed: {report['resumed_requests']} requests were already answered and not rerun")
    skipped = report["skipped_lines"]
    if skipped:
        shown = "; ".join(f"line {s['line']}: {s['reason']}" for s in skipped[:5])
        out.append(f"skipped {len(skipped)} bad input lines: {shown}{' ...' if len(skipped) > 5 else ''}")
    return "\n".join(out)

"""The cluster run report: per worker what it ran and achieved beside its plan, and the fleet in total.

How it works: docs/design.md, `runtime/cluster/report.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from planner.tables import number_cell, percent_cell
from runtime.report.build import compared


@dataclass
class WorkerTally:
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, stats: dict[str, Any]) -> None:
        row = self.workers.setdefault(
            stats["worker"],
            {
                "worker": stats["worker"],
                "pids": [],
                "requests": 0,
                "prompt_tokens": 0,
                "generated_tokens": 0,
                "busy_s": 0.0,
                "batches": 0,
                "restarted": False,
            },
        )
        for name in (
            "machine",
            "profile",
            "plan_source",
            "plan_reason",
            "num_seqs",
            "threads",
            "predicted_tok_s",
        ):
            row[name] = stats[name]
        if stats["pid"] not in row["pids"]:
            row["pids"].append(stats["pid"])
        for name in ("requests", "prompt_tokens", "generated_tokens"):
            row[name] += stats[name]
        row["restarted"] = row["restarted"] or stats["restarted"]
        row["busy_s"] += stats["wall_s"]
        row["batches"] += 1

    @property
    def generated_tokens(self) -> int:
        return sum(w["generated_tokens"] for w in self.workers.values())

    @property
    def prompt_tokens(self) -> int:
        return sum(w["prompt_tokens"] for w in self.workers.values())


def _worker_row(w: dict[str, Any]) -> dict[str, Any]:
    achieved = w["generated_tokens"] / w["busy_s"] if w["busy_s"] else None
    row = {k: v for k, v in w.items() if k != "pids"}
    row["restarts"] = max(len(w["pids"]) - 1, int(w["restarted"]))
    row.update(
        achieved_tok_s=achieved, relative_error=compared(achieved, w["predicted_tok_s"])["relative_error"]
    )
    return row


def cluster_report(
    tally: WorkerTally,
    wall_s: float,
    num_requests: int,
    duplicates: int,
    resumed: int,
    skipped: list[Any],
    model: str,
) -> dict[str, Any]:
    workers = [_worker_row(w) for w in sorted(tally.workers.values(), key=lambda w: w["worker"])]
    generated, total_tokens = tally.generated_tokens, tally.generated_tokens + tally.prompt_tokens
    predicted = sum(w["predicted_tok_s"] for w in workers) or None
    per_s = (lambda n: n / wall_s) if wall_s > 0 else (lambda n: None)
    return {
        "elapsed_time": wall_s,
        "num_requests": num_requests,
        "total_num_tokens": total_tokens,
        "requests_per_second": per_s(num_requests),
        "tokens_per_second": per_s(total_tokens),
        "output_tokens_per_second": per_s(generated),
        "model": model,
        "workers": workers,
        "total": {
            "generated_tok_s": compared(per_s(generated), predicted),
            "num_workers": len(workers),
            "generated_tokens": generated,
        },
        "duplicates_dropped": duplicates,
        "resumed_requests": resumed,
        "skipped_lines": [{"line": s.line_number, "reason": s.reason} for s in skipped],
    }


def format_cluster_report(report: dict[str, Any]) -> str:
    total = report["total"]["generated_tok_s"]
    lines = [
        f"Throughput: {number_cell(report['requests_per_second'], '.2f')} requests/s, "
        f"{number_cell(report['output_tokens_per_second'], ',.1f')} output tokens/s over {report['total']['num_workers']} "
        f"workers in {number_cell(report['elapsed_time'], '.1f')} s",
        f"fleet: achieved {number_cell(total['achieved'], ',.1f')} tok/s against the sum of the workers' predictions "
        f"{number_cell(total['predicted'], ',.1f')} ({percent_cell(total['relative_error'])})",
        "",
        "worker  machine / plan                                   requests  predicted  achieved  restarts",
    ]
    for i, w in enumerate(report["workers"]):
        plan = f"{w['profile']} ({w['plan_source']}, {w['num_seqs']} seqs, {w['threads']} thr)"
        lines.append(
            f"{i:>6}  {w['machine'][:48]:<48} {w['requests']:>8}  {number_cell(w['predicted_tok_s'], ',.1f'):>9}  "
            f"{number_cell(w['achieved_tok_s'], ',.1f'):>8}  {w['restarts']:>8}"
        )
        lines.append(f"{'':>6}  {plan}" + (f": {w['plan_reason']}" if w["plan_reason"] else ""))
    if report["duplicates_dropped"]:
        lines.append(f"{report['duplicates_dropped']} answers from retried batches dropped (already written)")
    return "\n".join(lines)

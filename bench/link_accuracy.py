"""Analysis of the link-bound accuracy rows (`python -m bench.bench_accuracy --link`): CSV and BENCHMARKS.md.

`link_frame(report_paths)` has one row per config (its median pass, `bench.bench_accuracy.median_report`):
the emulated link's speed and device memory, N, predicted and achieved end-to-end generated tok/s and the error
(predicted - achieved) / achieved, each pass's tok/s, the plan's bottleneck, and the link's busy share of
decode time as the plan predicts it beside what the run measured (the paced link's own busy-time counter,
`runtime.transfer.PacedLink.busy_between`, over the decode share of each step). `write_link_outputs` writes
`bench/results/accuracy-link[-quick].csv` and the `accuracy-link` section of BENCHMARKS.md with the verdicts
of issue 15: every row within 10%, the link named the bottleneck, and busy >= 85% of decode time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.common import BENCHMARKS_MD, markdown_table, update_section

ERROR_TARGET = 0.10
BUSY_TARGET = 0.85


def link_frame(report_paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in report_paths:
        report = json.loads(Path(path).read_text())
        config, plan = report["bench_config"], report["plan"]
        e2e = report["throughput"]["end_to_end"]
        link = report["utilisation"]["resources"].get("link", {})
        repeats = report.get("repeats_tok_s", [e2e["achieved"]])
        rows.append(
            {
                "config": config["name"],
                "model": report["model"]["name"],
                "link_gbps": config["link_gbps"],
                "device_gib": config["device_gb"],
                "num_seqs": plan["num_seqs"],
                "kv_gib": plan["budgets"]["kv_gib"],
                "prompt_len": config["prompt_len"],
                "gen_len": config["gen_len"],
                "num_prompts": config["num_prompts"],
                "profile": report.get("profile_ref", ""),
                "kv_budget_mib": plan["kv_budget_bytes"] / float(1 << 20),
                "workload": f"{config['num_prompts']} x ({config['prompt_len']}+{config['gen_len']})",
                "predicted_tok_s": e2e["predicted"],
                "achieved_tok_s": e2e["achieved"],
                "error": (e2e["predicted"] - e2e["achieved"]) / e2e["achieved"],
                "passes_tok_s": " ".join(f"{v:.3g}" for v in repeats),
                "bottleneck": plan["bottleneck"],
                "link_busy_plan": link.get("predicted"),
                "link_busy_measured": link.get("achieved"),
            }
        )
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, command: str, machine: str, csv_path: Path) -> str:
    within = int((frame["error"].abs() <= ERROR_TARGET).sum())
    named = int((frame["bottleneck"] == "link").sum())
    busy = int((frame["link_busy_measured"] >= BUSY_TARGET).sum())
    n = len(frame)
    table = markdown_table(
        [
            "config",
            "model",
            "link GB/s",
            "device GiB",
            "N",
            "KV MiB",
            "workload",
            "predicted tok/s",
            "achieved tok/s (median)",
            "error",
            "passes tok/s",
            "plan bottleneck",
            "link busy plan",
            "link busy measured",
        ],
        [
            [
                r.config,
                r.model,
                r.link_gbps,
                r.device_gib,
                r.num_seqs,
                r.kv_budget_mib,
                r.workload,
                r.predicted_tok_s,
                r.achieved_tok_s,
                f"{r.error:+.1%}",
                r.passes_tok_s,
                r.bottleneck,
                f"{r.link_busy_plan:.0%}",
                f"{r.link_busy_measured:.0%}",
            ]
            for r in frame.itertuples()
        ],
    )
    return "\n".join(
        [
            "## Prediction accuracy in the link-bound regime (emulated link)",
            "",
            f"Command: `/work/bin/cpu-exclusive {command}` (3 interleaved passes, each config's median pass). {machine}",
            "Each config plans and runs on this CPU behind an emulated link (`runtime profile --emulate-link`; copies "
            "paced on the wall clock by the streamer's copy worker, device memory capped); the routed experts cross "
            "it every step. Error = (predicted - achieved) / achieved of end-to-end generated tok/s; link busy = the "
            "paced link's busy-time counter over the decode time, beside the plan's link utilisation.",
            "",
            table,
            "",
            f"Within {ERROR_TARGET:.0%}: {within} of {n}; link named the bottleneck: {named} of {n}; link busy >= "
            f"{BUSY_TARGET:.0%} of decode time: {busy} of {n}. CSV: `{csv_path.name}` in bench/results.",
        ]
    )


def write_link_outputs(
    report_paths: list[Path],
    results_dir: Path,
    command: str,
    machine: str,
    markdown_section: bool = True,
    quick: bool = False,
    benchmarks_md: Path = BENCHMARKS_MD,
) -> pd.DataFrame:
    frame = link_frame(report_paths)
    csv_path = results_dir / f"accuracy-link{'-quick' if quick else ''}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv_path, index=False, float_format="%.6g")
    print(
        frame[
            [
                "config",
                "predicted_tok_s",
                "achieved_tok_s",
                "error",
                "bottleneck",
                "link_busy_plan",
                "link_busy_measured",
            ]
        ].to_string(index=False)
    )
    if markdown_section:
        update_section("accuracy-link", markdown(frame, command, machine, csv_path), benchmarks_md)
    return frame

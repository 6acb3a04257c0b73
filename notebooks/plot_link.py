"""`throughput_vs_link.png`: `planner sweep --vary link-gbps` with the measured runs of `bench.bench_link_sweep`.

`plot_throughput_vs_link(csv, out_dir)` reads `bench/results/link-sweep.csv` (one row per link speed: the
model, workload, N's KV budget, device memory and CPU profile the runs used, predicted and achieved tok/s),
sweeps the planner over link speeds on the same emulated device, and draws the predicted curve, the measured
points on top, and where the plan's bottleneck stops being the link. Returns the PNG's path, or None
without the CSV.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from planner.hardware.emulated_link import emulate_link
from planner.hardware.profile import load_profile
from planner.perf.memory import Budgets
from planner.plans.sweep import Problem, run_sweep
from planner.plans.workload import Workload


def plot_throughput_vs_link(csv: Path, out_dir: Path, spec_of) -> Path | None:
    if not csv.is_file():
        return None
    runs = pd.read_csv(csv).sort_values("link_gbps")
    first = runs.iloc[0]
    spec = spec_of(first["model"])
    workload = Workload.fixed(int(first["prompt_len"]), int(first["gen_len"]), int(first["num_prompts"]))
    profile = emulate_link(load_profile(first["profile"]), 1.0, float(first["device_gib"]))
    values = list(np.geomspace(runs["link_gbps"].min() / 2, runs["link_gbps"].max() * 4, 24))
    sweep = run_sweep(
        Problem(spec, profile, workload, Budgets.from_args(profile, float(first["kv_gib"]))),
        "link-gbps",
        values,
    )
    sweep = sweep[sweep["error"].fillna("") == ""]
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    ax.plot(
        sweep["link-gbps"], sweep["generated_tok_s"], "-", marker=".", label="planner sweep --vary link-gbps"
    )
    ax.scatter(
        runs["link_gbps"],
        runs["achieved_tok_s"],
        s=60,
        color="tab:red",
        zorder=5,
        label="measured (median of the passes)",
    )
    unbound = sweep[sweep["bottleneck"] != "link"]
    if len(unbound):
        knee = float(unbound["link-gbps"].iloc[0])
        ax.axvline(knee, color="gray", ls=":", lw=1)
        ax.annotate(
            f"link stops binding\n({unbound['bottleneck'].iloc[0]} binds)",
            (knee, ax.get_ylim()[0]),
            textcoords="offset points",
            xytext=(4, 10),
            fontsize=8,
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="emulated link (GB/s each way)",
        ylabel="generated tok/s",
        title=f"{first['model']}: N={int(first['num_seqs'])}, {int(first['num_prompts'])} prompts of "
        f"{int(first['prompt_len'])}+{int(first['gen_len'])} tokens, {float(first['device_gib']):g} GiB device",
    )
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8)
    path = out_dir / "throughput_vs_link.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

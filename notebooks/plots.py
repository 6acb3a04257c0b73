"""The figures BENCHMARKS.md shows (`make plots`): PNGs under notebooks/figures/, headless (matplotlib Agg).

    python notebooks/plots.py [--accuracy-csv bench/results/accuracy.csv] [--profile P] [--out-dir DIR]

- `predicted_vs_achieved.png`: end-to-end tok/s of every accuracy-matrix run (`bench.bench_accuracy`),
  predicted against achieved, before calibration (hollow) and after (filled; train and held-out runs marked),
  with the y = x line and the +-5% / +-12% bands of the targets.
- `roofline.png`: FLOP/s against arithmetic intensity with the compute roof and the bandwidth roofs of the
  profile (host memory; device memory and the host-to-device link with a device); the plan's decode step
  sits against each roof at the FLOPs per byte that resource moves per step, so the binding resource's
  point (a star) touches its roof; one panel for this machine's profile (`mixtral-mini`, with the accuracy
  runs' achieved points) and one for a datasheet GPU profile (`mixtral-8x7b`).
- `throughput_vs_kv.png`: `planner sweep` of the KV budget for the accuracy matrix's KV-sweep workload
  (the model and lengths its `kv-*` rows share), with the calibrated profile's curve when one was written,
  and the measured runs on top.
- `throughput_vs_link.png` (`notebooks/plot_link.py`): `planner sweep --vary link-gbps` on an emulated link with
  the measured runs of `bench.bench_link_sweep` on top, and where the link stops binding.
- `cap_radar.png`: MoE-CAP-style radar for one model across the shipped profiles with a device (planner only):
  throughput, tokens per dollar (purchase prices amortised over 3 years of use) and memory footprint, each
  scaled so the best profile is 1 and outward is better.
The accuracy CSV defaults to the full run's, else the --quick one; figures needing it are skipped without it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from notebooks.plot_link import plot_throughput_vs_link  # noqa: E402
from planner.errors import UserError  # noqa: E402
from planner.hardware.profile import find_profile_for_this_machine, list_profiles, load_profile  # noqa: E402
from planner.perf.memory import Budgets  # noqa: E402
from planner.perf.rates import Rates  # noqa: E402
from planner.plans.build import make_plan  # noqa: E402
from planner.plans.sweep import Problem, run_sweep  # noqa: E402
from planner.plans.workload import Workload  # noqa: E402
from planner.specs.spec import load_spec  # noqa: E402

FIGURES = REPO / "notebooks" / "figures"
RESULTS = REPO / "bench" / "results"
AMORTISED_HOURS = 3 * 365 * 24
GiB = float(1 << 30)


def runs_profile(frame: pd.DataFrame | None) -> str | None:
    """The profile the accuracy runs were planned with (their `profile` column), when it still loads."""
    if frame is None or "profile" not in frame or frame["profile"].dropna().nunique() != 1:
        return None
    ref = str(frame["profile"].dropna().iloc[0])
    path = REPO / ref
    return str(path) if path.is_file() else (ref if ref in list_profiles() or Path(ref).is_file() else None)


def accuracy_csv(given: str | None) -> Path | None:
    if given:
        return Path(given)
    for name in ("accuracy.csv", "accuracy-quick.csv"):
        if (RESULTS / name).is_file():
            return RESULTS / name
    return None


# ----- predicted vs achieved -----
def plot_predicted_vs_achieved(frame: pd.DataFrame, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    achieved = frame["achieved_tok_s"].to_numpy()
    lo, hi = achieved.min() / 2, achieved.max() * 2
    for col in ("predicted_tok_s", "predicted_after_tok_s"):
        if col in frame and frame[col].notna().any():
            lo, hi = min(lo, frame[col].min() / 1.2), max(hi, frame[col].max() * 1.2)
    line = np.geomspace(lo, hi, 50)
    ax.fill_between(line, line * 0.88, line * 1.12, color="0.9", label="+-12%")
    ax.fill_between(line, line * 0.95, line * 1.05, color="0.78", label="+-5%")
    ax.plot(line, line, "k-", lw=1, label="y = x")
    colours = {"train": "tab:blue", "held-out": "tab:orange"}
    for split, part in frame.groupby("split"):
        c = colours.get(split, "tab:gray")
        ax.scatter(
            part["achieved_tok_s"],
            part["predicted_tok_s"],
            facecolors="none",
            edgecolors=c,
            s=46,
            label=f"{split}, before calibration",
        )
        if "predicted_after_tok_s" in part and part["predicted_after_tok_s"].notna().any():
            ax.scatter(
                part["achieved_tok_s"],
                part["predicted_after_tok_s"],
                color=c,
                s=30,
                label=f"{split}, after calibration",
            )
            for row in part.itertuples():
                ax.plot(
                    [row.achieved_tok_s] * 2,
                    [row.predicted_tok_s, row.predicted_after_tok_s],
                    color=c,
                    lw=0.6,
                    alpha=0.5,
                )
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(lo, hi),
        ylim=(lo, hi),
        xlabel="achieved generated tok/s",
        ylabel="predicted generated tok/s",
        title="Prediction accuracy: end-to-end throughput",
    )
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, out / "predicted_vs_achieved.png")


# ----- roofline -----
def _roofline_panel(
    ax, profile, model: str, workload: Workload, kv_gb: float, runs: pd.DataFrame | None
) -> None:
    """Roofs of the profile, and the plan's decode step placed against each bandwidth roof at the FLOPs per
    byte that resource moves per step (its busy share x step x rate): the binding one touches its roof."""
    spec = load_spec(model)
    plan = make_plan(spec, profile, workload, Budgets.from_args(profile, kv_gb))
    rates = Rates.build(profile, plan_costs(spec))
    step, util = plan.predicted.decode_step_s, plan.utilisation
    flops_per_s = plan.predicted.s_mfu * rates.peak_flops
    roofs = {
        "host_memory": (
            "host memory",
            rates.host_read_bps,
            util.get("host_memory", 0.0) * step * rates.host_read_bps,
        )
    }
    if rates.has_device:
        roofs["device_memory"] = (
            "device memory",
            rates.device_read_bps,
            plan.predicted.s_mbu * rates.device_read_bps * step,
        )
        roofs["link"] = ("link (H2D)", rates.max_h2d_bps, util.get("link", 0.0) * step * rates.max_h2d_bps)
    intensity = np.geomspace(1e-2, 1e5, 200)
    ax.plot(intensity, np.full_like(intensity, rates.peak_flops), "k-", lw=1.5, label="GEMM peak (measured)")
    for (key, (name, bw, moved)), colour in zip(roofs.items(), ("tab:blue", "tab:orange", "tab:green")):
        ax.plot(
            intensity,
            np.minimum(bw * intensity, rates.peak_flops),
            "--",
            color=colour,
            lw=1.2,
            label=f"{name} {bw / 1e9:.3g} GB/s",
        )
        if moved > 0:
            binding = key == plan.bottleneck
            ax.scatter(
                [flops_per_s * step / moved],
                [flops_per_s],
                marker="*" if binding else "o",
                s=240 if binding else 50,
                color=colour,
                edgecolors="k",
                zorder=5,
                label=f"plan vs {name}: {100 * moved / (step * bw):.0f}% busy",
            )
    if runs is not None and len(runs):
        ok = runs.dropna(subset=["s_mfu", "s_mbu"])
        ok = ok[(ok["s_mfu"] > 0) & (ok["s_mbu"] > 0)]
        if len(ok) and not rates.has_device:
            ax.scatter(
                ok["s_mfu"] * rates.peak_flops / (ok["s_mbu"] * rates.host_read_bps),
                ok["s_mfu"] * rates.peak_flops,
                s=18,
                color="tab:purple",
                alpha=0.7,
                label="accuracy runs, achieved (vs host memory)",
            )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="arithmetic intensity (FLOPs per byte the resource moves)",
        ylabel="FLOP/s",
        title=f"{model} on {profile.name}: {plan.predicted.generated_tok_s:,.3g} tok/s, "
        f"binds on {plan.bottleneck} ({100 * util[plan.bottleneck]:.0f}% busy)",
    )
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7, loc="lower right")


def plan_costs(spec):
    from planner.perf.costs import ModelCosts

    return ModelCosts(spec)


def plot_roofline(
    profile,
    runs: pd.DataFrame | None,
    out: Path,
    gpu_profile: str | None = "a5000-epyc7453",
    model: str = "mixtral-mini",
) -> Path:
    panels = [(profile, model, Workload.fixed(128, 64, 256), 4.0, runs)]
    if gpu_profile and gpu_profile in list_profiles():
        panels.append(
            (load_profile(gpu_profile), "mixtral-8x7b", Workload.fixed(512, 256, 10_000), 64.0, None)
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 5.2), squeeze=False)
    for ax, (p, m, w, kv, r) in zip(axes[0], panels):
        _roofline_panel(ax, p, m, w, kv, r)
    fig.suptitle("Roofline of the decode step: the plan's operating point and binding resource")
    return _save(fig, out / "roofline.png")


# ----- throughput vs KV budget -----
def kv_sweep_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The accuracy rows of the KV sweep: CPU mode, one model and workload, several KV budgets."""
    cpu = frame[frame["mode"] == "cpu"]
    keys = ["model", "prompt_len", "gen_len", "num_prompts"]
    sizes = cpu.groupby(keys)["kv_gib"].nunique()
    if sizes.empty or sizes.max() < 2:
        return cpu.iloc[0:0]
    key = sizes.idxmax()
    return cpu[(cpu[keys] == pd.Series(dict(zip(keys, key)))).all(axis=1)]


def plot_throughput_vs_kv(frame: pd.DataFrame, profile, calibrated, out: Path) -> Path | None:
    runs = kv_sweep_runs(frame)
    if runs.empty:
        return None
    first = runs.iloc[0]
    spec = spec_of(first["model"])
    workload = Workload.fixed(int(first["prompt_len"]), int(first["gen_len"]), int(first["num_prompts"]))
    values = list(np.geomspace(runs["kv_gib"].min() / 2, runs["kv_gib"].max() * 4, 14))
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    for p, style, label in (
        (profile, "-", "planner sweep, profile as measured"),
        (calibrated, "--", "planner sweep, calibrated profile"),
    ):
        if p is None:
            continue
        sweep = run_sweep(Problem(spec, p, workload, Budgets.from_args(p, 1.0)), "kv-gb", values)
        if "error" in sweep:
            sweep = sweep[sweep["error"].fillna("") == ""]
        ax.plot(sweep["kv-gb"], sweep["generated_tok_s"], style, marker=".", label=label)
    ax.scatter(runs["kv_gib"], runs["achieved_tok_s"], s=60, color="tab:red", zorder=5, label="measured runs")
    for row in runs.itertuples():
        ax.annotate(
            f"N={row.num_seqs}",
            (row.kv_gib, row.achieved_tok_s),
            textcoords="offset points",
            xytext=(5, -12),
            fontsize=8,
        )
    ax.set(
        xscale="log",
        xlabel="KV budget (GiB)",
        ylabel="generated tok/s",
        title=f"{first['model']}: {int(first['num_prompts'])} prompts, {int(first['prompt_len'])}+"
        f"{int(first['gen_len'])} tokens, on {profile.name}",
    )
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "throughput_vs_kv.png")


def spec_of(name: str):
    """The spec of a checkpoint name: a models/ name, or one truncated by `with_layers` (`NAME-L{n}`)."""
    base, _, layers = name.rpartition("-L")
    return load_spec(base).with_layers(int(layers)) if base and layers.isdigit() else load_spec(name)


# ----- CAP radar -----
def cap_points(model: str, profiles: list[str], workload: Workload, kv_gb: float) -> pd.DataFrame:
    spec, rows = load_spec(model), []
    for name in profiles:
        profile = load_profile(name)
        if not profile.has_device:
            continue
        try:
            plan = make_plan(spec, profile, workload, Budgets.from_args(profile, kv_gb))
        except UserError:
            continue
        price, amortised = profile.price.usd_per_hour, False
        if price is None and profile.price.purchase_usd:
            price, amortised = profile.price.purchase_usd / AMORTISED_HOURS, True
        tok_s = plan.predicted.generated_tok_s
        memory = plan.memory["host"]["total"] + plan.memory.get("device", {}).get("total", 0.0)
        rows.append(
            {
                "profile": name,
                "tok_s": tok_s,
                "tokens_per_usd": tok_s * 3600 / price if price else math.nan,
                "memory_gib": memory / GiB,
                "amortised": amortised,
            }
        )
    return pd.DataFrame(rows)


def plot_cap_radar(points: pd.DataFrame, model: str, out: Path) -> Path | None:
    if points.empty:
        return None
    axes = ["throughput (tok/s)", "tokens per $", "memory footprint\n(host + device GiB, inverted)"]
    scaled = np.column_stack(
        [
            points["tok_s"] / points["tok_s"].max(),
            (points["tokens_per_usd"] / points["tokens_per_usd"].max()).fillna(0.0),
            points["memory_gib"].min() / points["memory_gib"],
        ]
    )
    angles = np.linspace(0, 2 * np.pi, len(axes), endpoint=False)
    fig, ax = plt.subplots(figsize=(7.5, 7.0), subplot_kw={"polar": True})
    ax.set_theta_offset(np.pi / 2)
    for row, values in zip(points.itertuples(), scaled):
        closed = np.append(values, values[0])
        amortised = " (purchase over 3 years)" if row.amortised else ""
        ax.plot(
            np.append(angles, angles[0]),
            closed,
            lw=1.3,
            label=f"{row.profile}: {row.tok_s:,.0f} tok/s, {row.tokens_per_usd / 1e6:.2f} M tok/${amortised}, "
            f"{row.memory_gib:.0f} GiB",
        )
        ax.fill(np.append(angles, angles[0]), closed, alpha=0.05)
    ax.set_xticks(angles, axes, fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_rlabel_position(180 / len(axes))
    ax.set_title(f"CAP radar: {model} across shipped profiles (planner predictions; 1 = best)", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=1)
    return _save(fig, out / "cap_radar.png")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="notebooks/plots.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--accuracy-csv", help="accuracy matrix CSV (default: bench/results/accuracy[-quick].csv)"
    )
    parser.add_argument(
        "--profile",
        help="profile of the runs (default: the CSV's `profile` column, else this machine's measured one)",
    )
    parser.add_argument(
        "--calibrated-profile", help="calibrated profile YAML for the KV sweep's second curve"
    )
    parser.add_argument("--radar-model", default="mixtral-8x7b")
    parser.add_argument("--radar-profiles", nargs="+", help="profiles on the radar (default: all shipped)")
    parser.add_argument("--roofline-model", default="mixtral-mini")
    parser.add_argument("--gpu-profile", default="a5000-epyc7453", help="second roofline panel ('' for none)")
    parser.add_argument("--out-dir", type=Path, default=FIGURES)
    parser.add_argument(
        "--no-markdown", action="store_true", help="do not update BENCHMARKS.md's figures section"
    )
    args = parser.parse_args(argv)
    csv = accuracy_csv(args.accuracy_csv)
    frame = pd.read_csv(csv) if csv is not None and csv.is_file() else None
    profile = load_profile(args.profile or runs_profile(frame) or find_profile_for_this_machine().name)
    calibrated = args.calibrated_profile
    if calibrated is None and csv is not None:
        suffix = "-quick" if csv.stem.endswith("-quick") else ""
        candidate = RESULTS / "accuracy" / f"{profile.name}-calibrated{suffix}.yaml"
        calibrated = str(candidate) if candidate.is_file() else None
    written = []
    if frame is not None and len(frame):
        written.append(plot_predicted_vs_achieved(frame, args.out_dir))
        written.append(
            plot_throughput_vs_kv(
                frame, profile, load_profile(calibrated) if calibrated else None, args.out_dir
            )
        )
    else:
        print(
            "no accuracy CSV: skipping predicted_vs_achieved and throughput_vs_kv (run bench.bench_accuracy)"
        )
    written.append(plot_roofline(profile, frame, args.out_dir, args.gpu_profile or None, args.roofline_model))
    written.append(plot_throughput_vs_link(RESULTS / "link-sweep.csv", args.out_dir, spec_of))
    radar = cap_points(
        args.radar_model, args.radar_profiles or list_profiles(), Workload.fixed(512, 256, 10_000), 64.0
    )
    written.append(plot_cap_radar(radar, args.radar_model, args.out_dir))
    written = [path for path in written if path is not None]
    for path in written:
        print(f"wrote {path}")
    if not args.no_markdown and args.out_dir.resolve() == FIGURES.resolve():
        from bench.common import update_section

        update_section("figures", figures_markdown(written, csv))
    return 0


CAPTIONS = {
    "predicted_vs_achieved": "Predicted against achieved end-to-end tok/s of the accuracy matrix, before (hollow) "
    "and after (filled) calibration, with the +-5% and +-12% bands.",
    "throughput_vs_kv": "`planner sweep` of the KV budget (profile as measured, and calibrated) with the "
    "measured `qwen3-kv-*` runs on top.",
    "roofline": "Roofline of the decode step: each bandwidth roof with the plan's point at the FLOPs per byte "
    "that resource moves; the binding resource's point (star) touches its roof.",
    "throughput_vs_link": "`planner sweep --vary link-gbps` on an emulated link with the measured runs "
    "(`bench.bench_link_sweep`) on top: where the link stops binding.",
    "cap_radar": "CAP radar for mixtral-8x7b across the shipped GPU profiles (planner predictions): "
    "throughput, tokens per dollar, memory footprint; 1 = best.",
}


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def figures_markdown(paths: list[Path], csv: Path | None) -> str:
    lines = [
        "## Figures (`make plots` = `python notebooks/plots.py`)",
        "",
        f"Regenerated from `{_shown(csv) if csv else 'no accuracy CSV'}` and the "
        "planner; every figure is a PNG under `notebooks/figures/`.",
        "",
    ]
    for path in paths:
        lines += [f"![{path.stem}](notebooks/figures/{path.name})", "", CAPTIONS.get(path.stem, ""), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

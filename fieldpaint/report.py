"""The evaluation report: `report.md` with tables, PNG figures and a plain-language verdict.

Everything here reads what `fieldpaint.evaluate` wrote (cases.csv, summary.csv, groups/*.npz)
and the runs' metrics, so a report can be redrawn without re-running anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fieldpaint.data.fields import FieldStats  # noqa: E402
from fieldpaint.evaluate import REFERENCE, breakdown_coverages, group_file  # noqa: E402
from fieldpaint.runlog import read_metrics  # noqa: E402

EXAMPLE_COVERAGES = (0.9, 0.95, 0.99)


def _nearest(values: list[float], target: float) -> float:
    return min(values, key=lambda v: abs(v - target))


# ----------------------------------------------------------------------------------------------
# figures


def plot_ratio_vs_coverage(summary: pd.DataFrame, path: Path) -> Path:
    families = sorted(summary["mask"].unique())
    methods = [m for m in sorted(summary["method"].unique()) if m != REFERENCE]
    fig, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families), 3.6), squeeze=False, sharey=True)
    for ax, family in zip(axes[0], families):
        for method in methods:
            g = summary[(summary["mask"] == family) & (summary["method"] == method)].sort_values("coverage")
            if g["ratio_mean"].notna().any():
                ax.errorbar(g["coverage"] * 100, g["ratio_mean"],
                            yerr=[g["ratio_mean"] - g["ratio_ci_low"], g["ratio_ci_high"] - g["ratio_mean"]],
                            marker="o", ms=3, capsize=2, label=method)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_title(f"{family} masks")
        ax.set_xlabel("coverage: hidden fraction of valid pixels (%)")
    axes[0][0].set_ylabel(f"mean MSE ratio to {REFERENCE} (below 1: better than GP)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _shared_scale(images: list[np.ndarray]) -> float:
    tops = [float(np.nanpercentile(a, 99)) for a in images if np.isfinite(a).any()]
    top = float(np.median(tops)) if tops else 0.0
    return top if top > 0 else 1.0


def plot_example(npz: Path, stats: FieldStats, title: str, path: Path, channel: int = 0) -> Path:
    """Truth, observations, then each method's mean, std and error, on shared colour scales."""
    d = np.load(npz)
    methods = sorted(k.split("/", 1)[1] for k in d.files if k.startswith("mean/"))
    scale, shift = stats.std[channel], stats.mean[channel]
    land = d["valid"][0] < 0.5
    show = lambda a: np.where(land, np.nan, a * scale + shift)  # noqa: E731
    truth = show(d["truth"][channel])
    obs = np.where(d["mask"][0] > 0.5, truth, np.nan)
    vmin, vmax = np.nanpercentile(truth, [1, 99])
    errors = {m: show(d[f"mean/{m}"][channel]) - truth for m in methods}
    # One scale per kind of panel, shared by the methods: the median over methods of each one's
    # 99th percentile, so a single broken method saturates (extend arrows) instead of flattening the rest.
    emax = _shared_scale([np.abs(e) for e in errors.values()])
    smax = _shared_scale([d[f"std/{m}"][channel] * scale for m in methods])
    rows = 1 + len(methods)
    fig, axes = plt.subplots(rows, 3, figsize=(12, 2.3 * rows), squeeze=False)
    name = stats.variables[channel]
    panels = [(axes[0][0], truth, "truth", "viridis", vmin, vmax), (axes[0][1], obs, "observed", "viridis", vmin, vmax)]
    axes[0][2].axis("off")
    for r, m in enumerate(methods, start=1):
        panels += [(axes[r][0], show(d[f"mean/{m}"][channel]), f"{m}: mean", "viridis", vmin, vmax),
                   (axes[r][1], np.where(land, np.nan, d[f"std/{m}"][channel] * scale), f"{m}: std", "magma", 0, smax),
                   (axes[r][2], errors[m], f"{m}: error (mean - truth)", "RdBu_r", -emax, emax)]
    for ax, image, label, cmap, lo, hi in panels:
        im = ax.imshow(image, origin="lower", cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, extend="both").set_label(name, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_spectra(npz: Path, title: str, path: Path) -> Path:
    d = np.load(npz)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    k = np.arange(len(d["spectrum_truth"]))[1:]
    ax.loglog(k, d["spectrum_truth"][1:], "k", lw=2, label="truth")
    for key in sorted(f for f in d.files if f.startswith("spectrum/")):
        ax.loglog(k, d[key][1:], lw=1, label=key.split("/", 1)[1])
    ax.set_xlabel("wavenumber (cycles per shorter side)")
    ax.set_ylabel("power (normalised units², summed over channels)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(run: Path, path: Path) -> Path | None:
    rows = read_metrics(run)
    if not rows:
        return None
    epoch = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in ("epoch_loss", "train_loss", "test_loss"):
        a.plot(epoch, [r[key] for r in rows], marker=".", label=key.replace("_", " "))
    a.set_yscale("log")
    a.set_xlabel("epoch")
    a.set_ylabel("denoising loss (normalised units)")
    a.legend(fontsize=8)
    b.plot(epoch, [r["lr"] for r in rows], label="learning rate")
    b.set_xlabel("epoch")
    b.set_ylabel("learning rate")
    twin = b.twinx()
    twin.plot(epoch, [r["ema_decay"] for r in rows], color="C3", label="EMA decay")
    twin.set_ylabel("EMA decay")
    a.set_title(f"{run.name}: losses (train/test with EMA weights)", fontsize=9)
    b.set_title(f"{run.name}: schedule", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# text


def verdict(summary: pd.DataFrame) -> list[str]:
    """Plain sentences computed from the numbers: who wins where, and where each method collapses."""
    lines = []
    best = summary.loc[summary.groupby(["mask", "coverage"])["mse_mean"].idxmin()]
    counts = best["method"].value_counts()
    lines.append("- Lowest mean MSE per (mask family, coverage): " +
                 ", ".join(f"**{m}** in {n} of {len(best)}" for m, n in counts.items()) + ".")
    for item in breakdown_coverages(summary):
        g = summary[(summary["method"] == item["method"]) & (summary["mask"] == item["mask"])]
        wins, compared = int(g["wins"].sum()), int(g["compared"].sum())
        if compared == 0:
            continue
        head = f"- **{item['method']}**, **{item['mask']}** masks: lower MSE than the GP in {wins}/{compared} cases"
        if not item["beats_gp_at"]:
            lines.append(f"{head}; not better than the GP (by median MSE ratio) at any coverage tried.")
        elif item["stops_beating_gp_at"] is None:
            lines.append(f"{head}; better than the GP at every coverage tried.")
        else:
            better = ", ".join(f"{c:.1%}" for c in item["beats_gp_at"])
            lines.append(f"{head}; better than the GP at {better} hidden, not at "
                         f"{item['stops_beating_gp_at']:.1%} (median MSE ratio >= 1).")
    if len(lines) == 1:
        lines.append("- No method was compared with the GP (add `gp` to --methods).")
    return lines


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def summary_table(summary: pd.DataFrame) -> list[str]:
    head = ("| mask | coverage | method | MSE mean | MSE median | wins vs GP | ratio mean [95% CI] | "
            "ratio median | CRPS | spread/skill | spectrum err | NFE | s/field |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in summary.sort_values(["mask", "coverage", "method"]).itertuples():
        ci = f"{_fmt(r.ratio_mean)} [{_fmt(r.ratio_ci_low)}, {_fmt(r.ratio_ci_high)}]"
        lines.append(f"| {r.mask} | {r.coverage:.1%} | {r.method} | {_fmt(r.mse_mean)} | {_fmt(r.mse_median)} | "
                     f"{r.wins}/{r.compared} | {ci} | {_fmt(r.ratio_median)} | {_fmt(r.crps_mean)} | "
                     f"{_fmt(r.spread_skill_mean)} | {_fmt(r.spectrum_error_mean)} | {r.nfe} | "
                     f"{_fmt(r.seconds_per_field)} |")
    return lines


def write_report(out: Path, stats: FieldStats, runs: list[Path], header: dict) -> Path:
    summary = pd.read_csv(out / "summary.csv")
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    lines = ["# fieldpaint evaluation", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "MSE is over hidden, valid pixels in normalised units (per-channel z-scores of the train "
              "split); ratios and wins compare each method with the per-field fitted GP on the same cases. "
              "Coverage is the hidden fraction of the valid pixels.", "", "## Verdict", ""]
    lines += verdict(summary)
    lines += ["", "## MSE ratio to the GP against coverage", "",
              f"![ratio]({plot_ratio_vs_coverage(summary, figures / 'ratio_vs_coverage.png').relative_to(out)})", ""]
    lines += ["## Tables", ""] + summary_table(summary) + [""]
    coverages = sorted(summary["coverage"].unique())
    families = sorted(summary["mask"].unique())
    lines += ["## Example reconstructions", ""]
    for family in families:
        for target in sorted({_nearest(coverages, c) for c in EXAMPLE_COVERAGES}):
            npz = group_file(out, family, target)
            if npz.exists():
                png = plot_example(npz, stats, f"{family} masks, {target:.1%} hidden (first field)",
                                   figures / f"example_{family}_{target:.4f}.png")
                lines += [f"### {family}, {target:.1%} hidden", "", f"![example]({png.relative_to(out)})", ""]
    lines += ["## Spectra", ""]
    for family in families:
        npz = group_file(out, family, _nearest(coverages, 0.95))
        if npz.exists():
            png = plot_spectra(npz, f"{family} masks, {_nearest(coverages, 0.95):.1%} hidden: mean spectra",
                               figures / f"spectra_{family}.png")
            lines += [f"![spectra]({png.relative_to(out)})", ""]
    lines += ["## Training curves", ""]
    for run in runs:
        png = plot_training_curves(run, figures / f"training_{run.name}.png")
        if png is not None:
            lines += [f"![training]({png.relative_to(out)})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

"""The evaluation report's figures: ratio against coverage, quality against cost, example
reconstructions, spectra and training curves, each drawn from what `fieldpaint.evaluate` wrote."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fieldpaint.data.fields import FieldStats  # noqa: E402
from fieldpaint.diffusion.reconstructor import DEFAULT_CG_ITERATIONS  # noqa: E402
from fieldpaint.runlog import read_metrics  # noqa: E402
from fieldpaint.summary import is_kriging, percent  # noqa: E402

NFE_COVERAGES = 3  # the quality-against-cost figure shows the highest this many coverages


def nearest_coverage(values: list[float], target: float) -> float:
    return min(values, key=lambda v: abs(v - target))


# ----------------------------------------------------------------------------------------------
# figures


def plot_ratio_vs_coverage(summary: pd.DataFrame, path: Path) -> Path:
    """The geometric-mean MSE ratio to the reference with its 95 % interval, per method and family;
    kriging variants dashed; a coverage with failed cases is marked with x on the top edge."""
    reference = str(summary["reference"].iloc[0])
    families = sorted(summary["mask"].unique())
    methods = [m for m in sorted(summary["method"].unique()) if m != reference]
    fig, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families), 3.6), squeeze=False, sharey=True)
    for ax, family in zip(axes[0], families):
        for i, method in enumerate(methods):
            g = summary[(summary["mask"] == family) & (summary["method"] == method)].sort_values("coverage")
            ok = g[np.isfinite(g["ratio_gmean"]) & (g["failures"] == 0)]
            style = {"ls": "--" if is_kriging(method) else "-", "color": f"C{i % 10}"}
            if not ok.empty:
                low = (ok["ratio_gmean"] - ok["ratio_ci_low"]).fillna(0.0)
                high = (ok["ratio_ci_high"] - ok["ratio_gmean"]).fillna(0.0)
                ax.errorbar(ok["coverage"] * 100, ok["ratio_gmean"], yerr=[low, high], marker="o", ms=3,
                            capsize=2, label=method, **style)
            failed = g[g["failures"] > 0]
            if not failed.empty:
                ax.plot(failed["coverage"] * 100, [1.0] * len(failed), "x", ms=7, color=style["color"],
                        transform=ax.get_xaxis_transform(), clip_on=False,
                        label=f"{method}: failed cases")
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_title(f"{family} masks")
        ax.set_xlabel("coverage: hidden fraction of valid pixels (%)")
    axes[0][0].set_ylabel(f"geometric-mean MSE ratio to {reference}\n(95 % CI; below 1: better)")
    handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels())}
    axes[0][-1].legend(handles.values(), handles.keys(), fontsize=7)  # every family's entries, once
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def is_mmps(method: str) -> bool:
    return method.split(":")[-1].startswith("mmps")


def cg_of(method: str, default: int) -> int:
    """MMPS's CG iterations per step: from a `cg<N>` in the label (`mmps-50-cg5`), else `default`."""
    found = re.search(r"cg(\d+)", method.split(":")[-1])
    return int(found.group(1)) if found else default


def forward_equivalents(method: str, nfe: float, cg_iterations: int = DEFAULT_CG_ITERATIONS) -> float:
    """Cost per member in forward passes: nfe, or for MMPS nfe·(1 + 2·cg), since each of its steps runs one
    forward and up to cg backward passes (vector-Jacobian products), a backward costing about two forwards."""
    return nfe * (1 + 2 * cg_of(method, cg_iterations)) if is_mmps(method) else nfe


def sampler_family(method: str) -> str:
    """The label without its numbers, so that variants at several step counts share a line:
    `ddim-50` -> `ddim`, `mmps-50-cg5` -> `mmps-cg5`, `RUN:repaint` stays."""
    return re.sub(r"-\d+(?=-|$)", "", method)


def costed(summary: pd.DataFrame, cg_iterations: int = DEFAULT_CG_ITERATIONS) -> pd.DataFrame:
    """The summary rows of methods with network evaluations (nfe > 0), with `forward_equivalents`
    (a `cg_iterations` column, where evaluate wrote one, overrides the default per row)."""
    reference = str(summary["reference"].iloc[0])
    diffusion = ~summary["method"].map(is_kriging) & (summary["method"] != reference)
    rows = summary[diffusion & (pd.to_numeric(summary["nfe"], errors="coerce").fillna(0) > 0)].copy()
    cg = rows["cg_iterations"] if "cg_iterations" in rows else pd.Series(cg_iterations, index=rows.index)
    rows["forward_equivalents"] = [forward_equivalents(m, float(n), int(c) if np.isfinite(c) else cg_iterations)
                                   for m, n, c in zip(rows["method"], rows["nfe"], cg.astype(float))]
    return rows


def plot_quality_vs_nfe(summary: pd.DataFrame, path: Path, cg_iterations: int = DEFAULT_CG_ITERATIONS) -> Path:
    """Per mask family (rows) and each of the highest coverages: the geometric-mean MSE ratio to the
    reference and the mean CRPS against network evaluations per member (log x). MMPS is drawn twice,
    filled at its forward passes and open at its forward-equivalents nfe·(1 + 2·cg), joined by a dotted
    line; variants of one sampler (labels differing only in numbers) are joined by a line."""
    reference = str(summary["reference"].iloc[0])
    rows = costed(summary, cg_iterations)
    families = sorted(summary["mask"].unique())
    coverages = sorted(summary["coverage"].unique())[-NFE_COVERAGES:]
    colours = {f: f"C{i % 10}" for i, f in enumerate(sorted({sampler_family(m) for m in rows["method"]}))}
    n = len(coverages)
    fig, axes = plt.subplots(len(families), 2 * n, figsize=(3.1 * 2 * n, 2.9 * len(families)), squeeze=False)
    for r, family in enumerate(families):
        for j, coverage in enumerate(coverages):
            here = summary[(summary["mask"] == family) & np.isclose(summary["coverage"], coverage)]
            costs = rows[(rows["mask"] == family) & np.isclose(rows["coverage"], coverage)]
            for k, (column, label) in enumerate((("ratio_gmean", f"MSE ratio to {reference}"),
                                                 ("crps_mean", "mean CRPS"))):
                ax = axes[r][j + k * n]
                for name, g in costs.groupby(costs["method"].map(sampler_family), sort=True):
                    g = g[np.isfinite(pd.to_numeric(g[column], errors="coerce"))].sort_values("nfe")
                    if g.empty:
                        continue
                    colour = colours[name]
                    ax.plot(g["nfe"], g[column], "o-", ms=4, color=colour, label=name)
                    mm = g[g["method"].map(is_mmps)]
                    for row in mm.itertuples():
                        ax.plot([row.nfe, row.forward_equivalents], [getattr(row, column)] * 2, ":", color=colour)
                    if not mm.empty:
                        ax.plot(mm["forward_equivalents"], mm[column], "o", ms=5, mfc="none", color=colour,
                                label=f"{name}: forward-equivalents")
                if column == "ratio_gmean":
                    ax.axhline(1.0, color="k", lw=0.8, ls=":")
                    ax.set_yscale("log")
                else:
                    ref = here[here["method"] == reference]["crps_mean"]
                    if len(ref) and np.isfinite(ref.iloc[0]):
                        ax.axhline(float(ref.iloc[0]), color="k", lw=0.8, ls="--", label=reference)
                ax.set_xscale("log")
                ax.set_title(f"{family}, {percent(coverage)} hidden: {label}", fontsize=8)
                ax.set_xlabel("network evaluations per member", fontsize=7)
                ax.tick_params(labelsize=7)
    handles = {label: h for row in axes for ax in row for h, label in zip(*ax.get_legend_handles_labels())}
    if handles:
        axes[0][-1].legend(handles.values(), handles.keys(), fontsize=6)
    fig.suptitle(f"Quality against cost; open markers: MMPS forward-equivalents nfe·(1 + 2·cg), "
                 f"cg = {cg_iterations} unless the label says", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
    ax.set_xlabel("wavenumber (cycles across the longer side of the grid)")
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

"""The evaluation report: `report.md` with tables, PNG figures and a plain-language verdict.

Everything here reads what `fieldpaint.evaluate` wrote (cases.csv, summary.csv, groups/*.npz)
and the runs' metrics, so a report can be redrawn without re-running anything.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fieldpaint.data.fields import FieldStats  # noqa: E402
from fieldpaint.diffusion.reconstructor import DEFAULT_CG_ITERATIONS  # noqa: E402
from fieldpaint.evaluate import group_file  # noqa: E402
from fieldpaint.runlog import read_metrics  # noqa: E402
from fieldpaint.summary import (ALIAS, best_per_group, describe_method, is_kriging, percent,  # noqa: E402
                                summarize, verdict_sentences)

EXAMPLE_COVERAGES = (0.9, 0.95, 0.99)
NFE_COVERAGES = 3  # the quality-against-cost figure shows the highest this many coverages
CG_HEADER = "MMPS CG iterations per step"  # the header line the report reads MMPS's CG count from


def _nearest(values: list[float], target: float) -> float:
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


def cost_table(summary: pd.DataFrame, cg_iterations: int = DEFAULT_CG_ITERATIONS) -> list[str]:
    """Per diffusion method: network evaluations (forward passes) and forward-equivalents per member,
    seconds per field (mean over groups)."""
    rows = costed(summary, cg_iterations)
    if rows.empty:
        return ["No method with network evaluations was evaluated.", ""]
    lines = ["| method | NFE per member (forward passes) | forward-equivalents per member | s/field |",
             "|---|---|---|---|"]
    for method, g in rows.groupby("method", sort=True):
        lines.append(f"| {method} | {_fmt(g['nfe'].mean())} | {_fmt(g['forward_equivalents'].mean())} | "
                     f"{_fmt(g['seconds_per_field'].mean())} |")
    return lines + [""]


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


def lowest(summary: pd.DataFrame, cases: pd.DataFrame | None) -> str:
    """Which method has the lowest geometric-mean MSE ratio per (mask, coverage), and in how many of
    those groups its interval against the runner-up lies below 1. Methods with failures never lead."""
    if cases is None:
        return ""
    best = best_per_group(cases, summary)
    if best.empty:
        return "Lowest geometric-mean MSE ratio: no method finished a group without failures."
    counts = best.groupby("best")["clear"].agg(["size", "sum"]).sort_values("size", ascending=False)
    return ("Lowest geometric-mean MSE ratio per (mask family, coverage), among methods without failures: " +
            ", ".join(f"**{m}** in {int(r['size'])} of {len(best)} (clearly, its interval against the "
                      f"runner-up below 1, in {int(r['sum'])})" for m, r in counts.iterrows()) + ".")


def verdict(summary: pd.DataFrame, cases: pd.DataFrame | None = None) -> list[str]:
    """The verdict as Markdown bullets: the leader per group, then one sentence per (method, mask)."""
    lines = [f"- {text}" for text in [lowest(summary, cases)] if text]
    lines += [f"- {sentence}" for sentence in verdict_sentences(summary)]
    failed = summary[summary["failures"] > 0]
    if not failed.empty:
        lines.append("- **Failures** (non-finite or missing MSE; each counts as a loss, and the group's verdict "
                     "is 'failed'): " + ", ".join(
                         f"{r.method} on {r.mask} masks at {percent(r.coverage)}: {r.failures} of {r.n}"
                         for r in failed.itertuples()) + ".")
    if not verdict_sentences(summary):
        lines.append("- No method was compared with the reference.")
    return lines


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _ratio_ci(r) -> str:
    """`ratio [low, high]` of a summary row (a namedtuple or a Series)."""
    return f"{_fmt(r.ratio_gmean)} [{_fmt(r.ratio_ci_low)}, {_fmt(r.ratio_ci_high)}]"


def _kriging_cell(row: pd.Series | None) -> str:
    if row is None:
        return "not run"
    failed = f" ({row.failures} of {row.n} failed)" if row.failures else ""
    return f"{_ratio_ci(row)}, {row.verdict}{failed}"


def summary_table(summary: pd.DataFrame) -> list[str]:
    reference = str(summary["reference"].iloc[0])
    head = (f"| mask | coverage | method | cases | failures | wins vs {reference} | ratio to {reference} "
            "(geometric mean [95% CI]) | verdict | MSE mean | MSE median | MSE physical | MAE | CRPS | "
            "spread/skill | spectrum err | NFE | s/field |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in summary.sort_values(["mask", "coverage", "method"]).itertuples():
        lines.append(f"| {r.mask} | {percent(r.coverage)} | {r.method} | {r.n} | {r.failures} | "
                     f"{r.wins}/{r.compared} | {_ratio_ci(r)} | {r.verdict} | {_fmt(r.mse_mean)} | "
                     f"{_fmt(r.mse_median)} | {_fmt(r.mse_physical_mean)} | {_fmt(r.mae_mean)} | "
                     f"{_fmt(r.crps_mean)} | {_fmt(r.spread_skill_mean)} | {_fmt(r.spectrum_error_mean)} | "
                     f"{_fmt(r.nfe)} | {_fmt(r.seconds_per_field)} |")
    return lines


def kriging_table(summary: pd.DataFrame) -> list[str]:
    """The reference beside every kriging variant (every method named gp*), group by group."""
    reference = str(summary["reference"].iloc[0])
    variants = sorted(m for m in summary["method"].unique() if is_kriging(m) and m != reference)
    if not variants:
        return [f"No kriging variant other than the reference {reference} was evaluated.", ""]
    head = ("| mask | coverage | reference is | " +
            " | ".join(f"{describe_method(v)}: ratio [95% CI], verdict" for v in variants) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (mask, coverage), g in summary.groupby(["mask", "coverage"], sort=True):
        by = g.set_index("method")
        cells = [_kriging_cell(by.loc[v] if v in by.index else None) for v in variants]
        variant = by.loc[reference, "reference_variant"] if reference in by.index else reference
        lines.append(f"| {mask} | {percent(coverage)} | {variant} | " + " | ".join(cells) + " |")
    return lines + [""]


def _load_summary(out: Path, reference: str | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """summary.csv as evaluate wrote it, or recomputed from cases.csv when it is of an older format or
    against another reference than the one asked for."""
    cases = pd.read_csv(out / "cases.csv") if (out / "cases.csv").exists() else None
    summary = pd.read_csv(out / "summary.csv") if (out / "summary.csv").exists() else None
    current = summary is not None and "ratio_gmean" in summary and "reference" in summary
    if current and (reference is None or (summary["reference"] == reference).all()):
        return summary, cases
    if cases is None:
        raise FileNotFoundError(f"{out} holds no cases.csv to summarise against {reference!r}")
    if reference is None:
        reference = "kriging" if (cases["method"] == "kriging").any() else "gp"
    return summarize(cases, reference), cases


def write_report(out: Path, stats: FieldStats, runs: list[Path], header: dict, *,
                 reference: str | None = None, cg_iterations: int | None = None) -> Path:
    """`out/report.md` and its figures from what evaluate wrote into `out`.

    reference: the method every ratio is against; by default the one summary.csv was computed
    against (when it is another, the summary is recomputed from cases.csv for the report).
    cg_iterations: MMPS's CG iterations per step, for its forward-equivalents; by default the
    header's `CG_HEADER` line, else 10 (a label with `cg<N>` in it says its own)."""
    out = Path(out)
    summary, cases = _load_summary(out, reference)
    reference = str(summary["reference"].iloc[0])
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    variants = sorted(v for v in summary["reference_variant"].dropna().unique() if v != reference)
    named = (f"{reference}**, {ALIAS}: " + ", ".join(describe_method(v) for v in variants) if variants
             else f"{describe_method(reference)}**")
    lines = ["# fieldpaint evaluation", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", f"**Reference: {named}. Every ratio, win and verdict compares a "
              "method with it on the same cases (field, mask family, coverage, mask). MSE is over hidden, valid "
              "pixels in normalised units (per-channel z-scores of the train split); coverage is the hidden "
              "fraction of the valid pixels. The ratio is the geometric mean over cases of MSE / MSE of the "
              "reference, exp(mean log ratio), with a 95 % paired percentile-bootstrap interval over cases; "
              "'better' or 'worse' is said only where that interval excludes 1, otherwise "
              "'indistinguishable'. A case whose MSE is non-finite or missing is a failure: it counts as a "
              "loss (ratio +inf, MSE +inf in the MSE mean and median) and makes the group's verdict 'failed'.",
              "", "## Verdict", ""]
    lines += verdict(summary, cases)
    lines += ["", f"## Kriging variants beside the reference ({reference})", ""] + kriging_table(summary)
    lines += ["", f"## MSE ratio to {reference} against coverage", "",
              f"![ratio]({plot_ratio_vs_coverage(summary, figures / 'ratio_vs_coverage.png').relative_to(out)})", ""]
    cg = int(cg_iterations or (header or {}).get(CG_HEADER) or DEFAULT_CG_ITERATIONS)
    if not costed(summary, cg).empty:
        png = plot_quality_vs_nfe(summary, figures / "quality_vs_nfe.png", cg)
        lines += ["## MSE and CRPS against NFE per method", "",
                  "Network evaluations per member on a log scale. NFE counts forward passes; MMPS also runs up to "
                  f"{cg} CG iterations per step (`{CG_HEADER}`), each a backward pass costing about two forwards, "
                  "so it is drawn a second time (open markers) at its forward-equivalents nfe·(1 + 2·cg).", "",
                  f"![quality against NFE]({png.relative_to(out)})", ""] + cost_table(summary, cg)
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

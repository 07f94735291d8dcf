"""The evaluation report: `report.md` with tables, PNG figures and a plain-language verdict.

Everything here reads what `fieldpaint.evaluate` wrote (cases.csv, summary.csv, groups/*.npz)
and the runs' metrics, so a report can be redrawn without re-running anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import pandas as pd  # noqa: E402

from fieldpaint.data.fields import FieldStats  # noqa: E402
from fieldpaint.diffusion.reconstructor import DEFAULT_CG_ITERATIONS  # noqa: E402
from fieldpaint.evaluate import group_file  # noqa: E402
from fieldpaint.figures import (nearest_coverage, cg_of, costed, forward_equivalents, is_mmps,  # noqa: E402,F401
                                plot_example, plot_quality_vs_nfe, plot_ratio_vs_coverage, plot_spectra,
                                plot_training_curves, sampler_family)
from fieldpaint.summary import (ALIAS, best_per_group, describe_method, is_kriging, percent,  # noqa: E402
                                summarize, verdict_sentences)

EXAMPLE_COVERAGES = (0.9, 0.95, 0.99)
CG_HEADER = "MMPS CG iterations per step"  # the header line the report reads MMPS's CG count from


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


def cost_table(summary: pd.DataFrame, cg_iterations: int = DEFAULT_CG_ITERATIONS) -> list[str]:
    """Per diffusion method: network evaluations (forward passes) and forward-equivalents per member,
    seconds per field (mean over groups)."""
    rows = costed(summary, cg_iterations)
    if rows.empty:
        return ["No method with network evaluations was evaluated.", ""]
    lines = ["| method | members | NFE per member (forward passes) | forward-equivalents per member | s/field |",
             "|---|---|---|---|---|"]
    for method, g in rows.groupby("method", sort=True):
        members = _fmt(g["members"].mean()) if "members" in g else "n/a"
        lines.append(f"| {method} | {members} | {_fmt(g['nfe'].mean())} | {_fmt(g['forward_equivalents'].mean())} | "
                     f"{_fmt(g['seconds_per_field'].mean())} |")
    return lines + [""]



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


def _frames_cell(frames: str, tried: dict[str, float], symmetric: int = 1) -> str:
    """'fixed', or e.g. 'rolled along x (fixed: 0.612)': the frames chosen and the others' validation MSE;
    '..., in 4 symmetric frames' when the members were also drawn in the data's symmetries."""
    name = "fixed" if frames == "fixed" else f"rolled along {frames}"
    if symmetric > 1:
        name += f", in {symmetric} symmetric frames"
    others = ", ".join(f"{f}: {_fmt(v)}" for f, v in tried.items() if f != frames)
    return f"{name} ({others})" if others else name


def mean_step_table(out: Path) -> list[str]:
    """Where each conditional method's mean came from, group by group (mean_step.json): the chosen
    sampling step and the validation error there beside the members' average's."""
    path = out / "mean_step.json"
    if not path.exists():
        return []
    choices = json.loads(path.read_text())
    if not choices:
        return []
    validated = all(c.get("validation_gmean_mse") for c in choices)
    how = ("the sampling step whose denoised fields, averaged over the members, had the lowest geometric-mean "
           "MSE on validation cases from the train split; test scores took no part" if validated else
           "the sampling step given by --mean-step, averaged over the members")
    lines = ["## Where the conditional models' means come from", "",
             f"Per mask family and coverage, {how} (step 1 is the noisiest; the last step is the members' own "
             "average). On periodic data the members' frames are chosen with it: fixed, or member k of K rolled by "
             "k/K of the field along a periodic axis (in brackets, the other candidates' validation MSE at their "
             "best step); on data that declares symmetries, member k also in the frame of symmetry k mod their "
             "number (the header names them). Spread/skill for such a mean compares it with the members' spread "
             "without the K-member correction. The members are then recentred on that mean, their spread about their "
             "average (and the std) scaled by the factor that brought the validation cases' mean spread/skill to 1 "
             "(below 1: the members were over-dispersed there; none: the members as drawn).", "",
             "| mask | coverage | method | members' frames | mean from step | validation MSE there | validation MSE "
             "of the members' average | spread scale |", "|---|---|---|---|---|---|---|---|"]
    for c in choices:
        scores = c.get("validation_gmean_mse") or []
        chosen = int(c["chosen"])
        step = "the members' average" if chosen == int(c["steps"]) else f"{chosen} of {c['steps']}"
        there = _fmt(scores[chosen - 1]) if scores else "n/a"
        last = _fmt(scores[-1]) if scores else "n/a"
        frames = _frames_cell(c.get("frames", "fixed"), c.get("frames_validation_gmean_mse") or {},
                              int(c.get("symmetric_frames", 1)))
        lines.append(f"| {c['mask']} | {percent(c['coverage'])} | {c['method']} | {frames} | {step} | {there} | "
                     f"{last} | {_fmt(c['spread_scale']) if 'spread_scale' in c else 'none'} |")
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
    lines += [""] + mean_step_table(out)
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
        for target in sorted({nearest_coverage(coverages, c) for c in EXAMPLE_COVERAGES}):
            npz = group_file(out, family, target)
            if npz.exists():
                png = plot_example(npz, stats, f"{family} masks, {target:.1%} hidden (first field)",
                                   figures / f"example_{family}_{target:.4f}.png")
                lines += [f"### {family}, {target:.1%} hidden", "", f"![example]({png.relative_to(out)})", ""]
    lines += ["## Spectra", ""]
    for family in families:
        npz = group_file(out, family, nearest_coverage(coverages, 0.95))
        if npz.exists():
            png = plot_spectra(npz, f"{family} masks, {nearest_coverage(coverages, 0.95):.1%} hidden: mean spectra",
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

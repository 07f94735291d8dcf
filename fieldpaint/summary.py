"""Summaries of the cases table against one reference method: one statistic, one verdict rule.

The statistic, everywhere (tables, verdicts, figure, "lowest"): the geometric mean of per-case
MSE ratios to the reference on the same cases (same field, mask family, coverage and mask seed),

    ratio = exp(mean_i log(MSE_i / MSE_ref,i)),

with a 95 % paired percentile-bootstrap interval over cases. Unlike the arithmetic mean of
ratios (0.5 and 2.0 average to 1.25 whichever method is the reference) it is symmetric under
swapping the roles: ratio(A vs B) = 1 / ratio(B vs A), and the interval maps to its reciprocal.

Why the percentile bootstrap and not BCa: the percentile interval respects the log transform
(the interval of the ratio is exp of the interval of the mean log ratio) and the role swap exactly
(the same resamples, negated); it stays defined when a case's log ratio is infinite (a failure),
where BCa's jackknife acceleration is not; and with the handful of cases an evaluation has, BCa's
estimated acceleration is itself noisy. Its known weakness is some under-coverage at very small n
(an interval a little too narrow, which errs towards claiming a difference); taking the outer
order statistics at each end, never interpolating, widens it slightly. (Efron & Tibshirani 1993,
ch. 13.) The resamples come from a fixed seed, so a summary is reproducible and the two directions
of a comparison use the same resamples.

Failure rule. A case is a failure of a method when its MSE is non-finite (NaN, inf) or its row
is missing while the reference has the case. A failure never helps the failing method:
- in the statistic it is a loss with ratio +inf (log ratio +inf), so the method's geometric mean
  is +inf; a case where the *reference* failed and the method did not is a win with ratio 0
  (log ratio -inf), the mirror image, so the role swap stays exact; a case where both failed
  compares nothing and is left out of the statistic (it is still counted in `failures`);
- a method with any failure in a group gets the verdict "failed", never "better", "worse" or
  "indistinguishable", whatever its other cases say;
- its `mse_mean` and `mse_median` count failures as MSE +inf, so it is never "lowest" by them;
  the other per-metric means (MAE, CRPS, ...) are over its finite cases, beside `failures`.
Two equal MSEs (including both 0) are a tie, log ratio 0.

Verdicts: "reference" for the reference itself; "not compared" where the reference has no case
in the group; "failed" as above; "better" when the interval's upper end is below 1; "worse"
when its lower end is above 1; otherwise (and when there are too few cases for an interval)
"indistinguishable".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fieldpaint.errors import FieldpaintError

KEYS = ["mask", "coverage", "field", "seed"]  # one case
LEVEL = 0.95
N_BOOT = 10_000
SEED = 0
VERDICTS = ("better", "worse", "indistinguishable", "failed", "reference", "not compared")
# what each kriging variant is, for sentences that name the reference
KERNELS = {"gp": "per-field kernel", "gp-dataset": "dataset kernel", "gp-oracle": "true kernel"}
ALIAS = "the kriging variant chosen per group on training fields"  # evaluate's `kriging`


def describe_method(name: str) -> str:
    """`gp-dataset (kriging, dataset kernel)`; other names as they are."""
    kernel = KERNELS.get(name.split(":")[-1])
    return f"{name} (kriging, {kernel})" if kernel else f"kriging ({ALIAS})" if name == "kriging" else name


def is_kriging(name: str) -> bool:
    return name.split(":")[-1].startswith("gp")


# ----------------------------------------------------------------------------------------------
# the statistic


def log_ratios(mse: np.ndarray, mse_ref: np.ndarray) -> np.ndarray:
    """Per-case log(MSE / MSE_ref) under the failure rule: NaN where both failed (left out)."""
    a, b = np.asarray(mse, dtype=np.float64), np.asarray(mse_ref, dtype=np.float64)
    fa, fb = ~np.isfinite(a), ~np.isfinite(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log(np.where(fa, 1.0, a)) - np.log(np.where(fb, 1.0, b))
    lr = np.where(a == b, 0.0, lr)  # ties, including 0 vs 0
    lr = np.where(fa, np.inf, np.where(fb, -np.inf, lr))
    return np.where(fa & fb, np.nan, lr)


def paired_ratio(mse: np.ndarray, mse_ref: np.ndarray, *, level: float = LEVEL, n_boot: int = N_BOOT,
                 seed: int = SEED) -> tuple[float, float, float]:
    """Geometric-mean MSE ratio of paired cases and its percentile-bootstrap interval.

    Returns (ratio, low, high); NaN where nothing is compared, an interval of NaN below 2 cases.
    A resample holding failures of both methods (+inf and -inf) has no mean: the interval is NaN.
    """
    lr = log_ratios(mse, mse_ref)
    lr = lr[~np.isnan(lr)]
    if len(lr) == 0:
        return math.nan, math.nan, math.nan
    with np.errstate(invalid="ignore"):
        centre = float(np.exp(np.mean(lr)))
        if len(lr) < 2:
            return centre, math.nan, math.nan
        draws = lr[np.random.default_rng(seed).integers(0, len(lr), size=(n_boot, len(lr)))].mean(axis=1)
    if np.isnan(draws).any():
        return centre, math.nan, math.nan
    # No interpolation between order statistics (inf - inf has none); the lower one for the low end
    # and the higher one for the high end keep the interval exactly reciprocal under the role swap.
    lo = np.quantile(draws, (1 - level) / 2, method="lower")
    hi = np.quantile(draws, (1 + level) / 2, method="higher")
    return centre, float(np.exp(lo)), float(np.exp(hi))


def decide(ratio_ci: tuple[float, float], failures: int) -> str:
    """The verdict of one non-reference group (rule in the module docstring)."""
    lo, hi = ratio_ci
    if failures > 0:
        return "failed"
    if hi < 1.0:  # False for NaN
        return "better"
    if lo > 1.0:
        return "worse"
    return "indistinguishable"


# ----------------------------------------------------------------------------------------------
# the summary table


def _paired(cases: pd.DataFrame, method: str, reference: str) -> pd.DataFrame:
    """One row per case of `method` or `reference` in the same groups: mse and mse_ref side by side."""
    a = cases[cases["method"] == method]
    b = cases[cases["method"] == reference][KEYS + ["mse"]].rename(columns={"mse": "mse_ref"})
    b = b[b.set_index(["mask", "coverage"]).index.isin(a.set_index(["mask", "coverage"]).index)]
    merged = a.merge(b, on=KEYS, how="outer", indicator=True)
    merged["method"] = method
    merged["has_ref"] = merged["_merge"] != "left_only"
    return merged.drop(columns="_merge").sort_values(KEYS, kind="stable")


def _finite_mean(values: pd.Series, ok: pd.Series) -> float:
    v = pd.to_numeric(values[ok], errors="coerce").to_numpy(dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


def _group_row(method: str, mask: str, coverage: float, g: pd.DataFrame, reference: str, variant: str,
               **boot) -> dict:
    """One summary row from the paired cases `g` of one (method, mask, coverage)."""
    mse = pd.to_numeric(g["mse"], errors="coerce").to_numpy(dtype=np.float64)
    mse_ref = pd.to_numeric(g["mse_ref"], errors="coerce").to_numpy(dtype=np.float64)
    failed = ~np.isfinite(mse)
    ok = pd.Series(~failed, index=g.index)
    compare = method != reference and bool(g["has_ref"].any())
    if method == reference:
        ratio, lo, hi, verdict = 1.0, 1.0, 1.0, "reference"
    elif not compare:
        ratio, lo, hi, verdict = math.nan, math.nan, math.nan, "not compared"
    else:
        ratio, lo, hi = paired_ratio(mse, mse_ref, **boot)
        verdict = decide((lo, hi), int(failed.sum()))
    worst = np.where(failed, np.inf, mse)  # failures count as MSE +inf in mean and median
    win = np.isfinite(mse) & (~np.isfinite(mse_ref) | (mse < mse_ref))
    return {
        "method": method, "mask": mask, "coverage": float(coverage), "reference": reference,
        "reference_variant": variant, "n": len(g), "failures": int(failed.sum()),
        "reference_failures": int((~np.isfinite(mse_ref)).sum()) if compare else 0,
        "compared": int((~np.isnan(log_ratios(mse, mse_ref))).sum()) if compare else 0,
        "wins": int(win.sum()) if compare else 0,
        "ratio_gmean": ratio, "ratio_ci_low": lo, "ratio_ci_high": hi, "verdict": verdict,
        "mse_mean": float(np.mean(worst)) if len(worst) else math.nan,
        "mse_median": float(np.median(worst)) if len(worst) else math.nan,
        **{f"{k}_mean": _finite_mean(g[k], ok) if k in g else math.nan
           for k in ("mse_physical", "mae", "mae_physical", "crps", "spread_skill", "spectrum_error")},
        "nfe": _finite_mean(g["nfe"], ok) if "nfe" in g else math.nan,
        "members": _finite_mean(g["members"], ok) if "members" in g else math.nan,
        "seconds_per_field": _finite_mean(g["seconds"], ok) if "seconds" in g else math.nan,
    }


def summarize(cases: pd.DataFrame, reference: str, *, level: float = LEVEL, n_boot: int = N_BOOT,
              seed: int = SEED) -> pd.DataFrame:
    """Per (method, mask, coverage): failures, wins and the geometric-mean MSE ratio to `reference`
    on the same cases with its paired bootstrap interval, the verdict, and the mean scores."""
    if reference not in set(cases["method"]):
        raise FieldpaintError(f"the reference method {reference!r} has no cases; methods present: "
                              f"{', '.join(sorted(set(cases['method'])))}")
    boot = {"level": level, "n_boot": n_boot, "seed": seed}
    # the kriging variant behind an alias reference (evaluate's `kriging` rows name it), per group
    ref = cases[cases["method"] == reference]
    variants = ({} if "reference_variant" not in ref else
                {k: str(v.dropna().iloc[0]) for k, v in ref.groupby(["mask", "coverage"])["reference_variant"]
                 if v.notna().any()})
    rows = []
    for method in sorted(set(cases["method"])):
        paired = _paired(cases, method, reference)
        for (mask, coverage), g in paired.groupby(["mask", "coverage"], sort=True):
            variant = variants.get((mask, coverage), reference)
            rows.append(_group_row(method, mask, coverage, g, reference, variant, **boot))
    return pd.DataFrame(rows).sort_values(["mask", "coverage", "method"], ignore_index=True)


def best_per_group(cases: pd.DataFrame, summary: pd.DataFrame, **boot) -> pd.DataFrame:
    """Per (mask, coverage): the method with the lowest geometric-mean ratio among those that did
    not fail, the runner-up, and the best's ratio to the runner-up with its paired interval
    (`clear` when that interval lies below 1)."""
    rows = []
    for (mask, coverage), g in summary.groupby(["mask", "coverage"], sort=True):
        ranked = g[(g["failures"] == 0) & np.isfinite(g["ratio_gmean"])]
        alias = (ranked["verdict"].eq("reference") & ranked["reference_variant"].ne(ranked["method"])
                 & ranked["reference_variant"].isin(ranked["method"]))
        ranked = ranked[~alias].sort_values("ratio_gmean", kind="stable")  # an alias ties with its variant
        if ranked.empty:
            continue
        best = ranked["method"].iloc[0]
        row = {"mask": mask, "coverage": float(coverage), "best": best, "runner_up": None,
               "ratio": math.nan, "ci_low": math.nan, "ci_high": math.nan, "clear": False}
        if len(ranked) > 1:
            second = ranked["method"].iloc[1]
            here = cases[(cases["mask"] == mask) & np.isclose(cases["coverage"], coverage)]
            p = _paired(here, best, second)
            ratio, lo, hi = paired_ratio(p["mse"].to_numpy(float), p["mse_ref"].to_numpy(float), **boot)
            row.update(runner_up=second, ratio=ratio, ci_low=lo, ci_high=hi, clear=bool(hi < 1.0))
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# crossover and sentences


def crossover(summary: pd.DataFrame) -> list[dict]:
    """Per (method, mask), every coverage by verdict, and where the method is better throughout.

    `better_from`: the lowest tried coverage c such that the method is significantly better at c
    and at every tried coverage above it (None when it is not better at the highest one);
    `better_up_to`: the mirror image from the lowest coverage up. `worse_at` lists every losing
    coverage, `failed_at` every coverage with a failed case (a failure is not in `worse_at`)."""
    out = []
    rows = summary[~summary["verdict"].isin(["reference"])]
    for (method, mask), g in rows.groupby(["method", "mask"], sort=True):
        g = g.sort_values("coverage")
        at = {v: [float(c) for c in g.loc[g["verdict"] == v, "coverage"]] for v in VERDICTS}
        verdicts, coverages = list(g["verdict"]), [float(c) for c in g["coverage"]]
        better_from = better_up_to = None
        for c, v in zip(reversed(coverages), reversed(verdicts)):
            if v != "better":
                break
            better_from = c
        for c, v in zip(coverages, verdicts):
            if v != "better":
                break
            better_up_to = c
        out.append({"method": method, "mask": mask, "reference": str(g["reference"].iloc[0]),
                    "better_at": at["better"], "worse_at": at["worse"],
                    "indistinguishable_at": at["indistinguishable"], "failed_at": at["failed"],
                    "not_compared_at": at["not compared"],
                    "better_from": better_from, "better_up_to": better_up_to})
    return out


def percent(c: float) -> str:
    return f"{c * 100:.4g} %"


def _ratio(r) -> str:
    return f"{r.ratio_gmean:.3g} [{r.ratio_ci_low:.3g}, {r.ratio_ci_high:.3g}]"


def describe_reference(group: pd.DataFrame) -> str:
    """The reference of a summary slice indexed by coverage, with the kriging variant behind it where
    the reference is an alias (evaluate's `kriging`): `kriging (gp-dataset: dataset kernel, chosen on
    training fields)`."""
    reference = str(group["reference"].iloc[0])
    variants = group["reference_variant"] if "reference_variant" in group else pd.Series(dtype=str)
    variants = variants[variants.notna() & (variants != reference)]
    if variants.empty:
        return describe_method(reference)
    named = {v: f"{v}: {KERNELS[v]}" if v in KERNELS else v for v in dict.fromkeys(variants)}
    if len(named) == 1 and len(variants) == len(group):
        return f"{reference} ({next(iter(named.values()))}, chosen on training fields)"
    chosen = "; ".join(f"{named[v]} at {', '.join(percent(c) for c in variants.index[variants == v])}"
                       for v in named)
    return f"{reference} (chosen on training fields: {chosen})"


def verdict_sentences(summary: pd.DataFrame) -> list[str]:
    """One plain sentence per (method, mask), computed from the summary, e.g.
    "conditional vs gp-dataset (kriging, dataset kernel) on random masks: better at 95 %, 99 % hidden
    (ratio 0.46 [0.42, 0.5], 0.39 [0.35, 0.44]); indistinguishable at 90 % (0.97 [0.85, 1.09]); ..."."""
    lines = []
    for item in crossover(summary):
        g = summary[(summary["method"] == item["method"]) & (summary["mask"] == item["mask"])]
        g = g.set_index("coverage").sort_index()
        parts = []
        # where the method is the variant behind an alias reference, it is compared with itself
        itself = [c for c in g.index if "reference_variant" in g and g.loc[c, "reference_variant"] == item["method"]]
        for verdict, key in (("better", "better_at"), ("indistinguishable", "indistinguishable_at"),
                             ("worse", "worse_at")):
            at = [c for c in item[key] if c not in itself]
            if at:
                ratios = ", ".join(_ratio(g.loc[c]) for c in at)
                where = ", ".join(percent(c) for c in at)
                parts.append(f"{verdict} at {where} hidden (ratio {ratios})" if not parts else
                             f"{verdict} at {where} ({ratios})")
        if itself:
            parts.append(f"is the reference itself at {', '.join(percent(c) for c in itself)}")
        if item["failed_at"]:
            parts.append("FAILED at " + ", ".join(
                f"{percent(c)} ({int(g.loc[c, 'failures'])} of {int(g.loc[c, 'n'])} cases non-finite)"
                for c in item["failed_at"]))
        if item["not_compared_at"]:
            parts.append("not compared at " + ", ".join(percent(c) for c in item["not_compared_at"])
                         + " (no reference cases)")
        if item["better_from"] is not None:
            span = ("every coverage tried" if item["better_from"] == float(g.index.min())
                    else f"every coverage tried from {percent(item['better_from'])} up")
            parts.append(f"significantly better at {span}")
        elif item["better_up_to"] is not None:
            parts.append(f"significantly better at every coverage tried up to {percent(item['better_up_to'])}")
        ref_failed = g[g["reference_failures"] > 0]
        if not ref_failed.empty:
            parts.append("the reference failed on " + ", ".join(
                f"{int(r.reference_failures)} case(s) at {percent(c)}" for c, r in ref_failed.iterrows()))
        lines.append(f"{item['method']} vs {describe_reference(g)} on {item['mask']} masks: "
                     + "; ".join(parts) + ".")
    return lines

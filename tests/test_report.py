"""The report from a synthetic evaluation folder: it names the reference, shows the kriging variants
beside it, says "indistinguishable" where the interval straddles 1 and shows failures."""

import numpy as np
import pandas as pd

from fieldpaint.data.fields import FieldStats
from fieldpaint.report import write_report
from fieldpaint.summary import summarize
from tests.test_summary import STRADDLING, cases_table

STATS = FieldStats(("u",), (0.0,), (1.0,))


def evaluation_folder(tmp_path):
    """kriging (= gp-dataset, as evaluate writes it), gp, a straddling `conditional`, a winning `ddnm`
    and a `linear` that fails on two cases, at one coverage of one family."""
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.5, 2.0, size=len(STRADDLING))
    failing = reference * 0.5
    failing[[3, 7]] = np.nan
    table = cases_table({"gp-dataset": list(reference), "gp": list(reference * 1.2),
                         "conditional": list(reference * STRADDLING),
                         "ddnm": list(reference * 0.5 * np.exp(rng.normal(0, 0.05, len(STRADDLING)))),
                         "linear": list(failing)})
    alias = table[table["method"] == "gp-dataset"].assign(method="kriging", reference_variant="gp-dataset")
    cases = pd.concat([table, alias], ignore_index=True)
    out = tmp_path / "eval"
    out.mkdir()
    cases.to_csv(out / "cases.csv", index=False)
    summarize(cases, "kriging").to_csv(out / "summary.csv", index=False)
    return out


def section(report: str, title: str) -> str:
    return report.split(f"## {title}")[1].split("\n## ")[0]


def test_report_names_the_reference_and_says_indistinguishable(tmp_path):
    out = evaluation_folder(tmp_path)
    path = write_report(out, STATS, [], {"what": "synthetic"}, reference="kriging")
    report = path.read_text()
    assert ("**Reference: kriging**, the kriging variant chosen per group on training fields: "
            "gp-dataset (kriging, dataset kernel).") in report
    verdict = section(report, "Verdict")
    (conditional,) = [line for line in verdict.splitlines() if line.startswith("- conditional vs kriging")]
    assert "indistinguishable at 90 % hidden" in conditional and "better" not in conditional
    assert "vs kriging (gp-dataset: dataset kernel, chosen on training fields) on random masks" in conditional
    (itself,) = [line for line in verdict.splitlines() if line.startswith("- gp-dataset vs")]
    assert "is the reference itself at 90 %" in itself and "indistinguishable" not in itself
    (ddnm,) = [line for line in verdict.splitlines() if line.startswith("- ddnm vs")]
    assert "better at 90 % hidden" in ddnm
    (linear,) = [line for line in verdict.splitlines() if line.startswith("- linear vs")]
    assert "FAILED at 90 % (2 of 16 cases non-finite)" in linear and "better" not in linear
    assert "linear on random masks at 90 %: 2 of 16" in verdict
    assert "**ddnm** in 1 of 1" in verdict  # the leader by the same statistic; linear (failed) never leads
    kriging = section(report, "Kriging variants")
    assert "gp (kriging, per-field kernel)" in kriging and "gp-dataset (kriging, dataset kernel)" in kriging
    assert "| random | 90 % | gp-dataset |" in kriging and "worse" in kriging  # gp at 1.2x the reference
    tables = section(report, "Tables")
    assert "geometric mean [95% CI]" in tables and "| linear | 16 | 2 |" in tables
    assert "nan" not in tables
    assert (out / "figures" / "ratio_vs_coverage.png").stat().st_size > 1000


def test_report_against_another_reference_is_recomputed_from_the_cases(tmp_path):
    out = evaluation_folder(tmp_path)
    report = write_report(out, STATS, [], {}, reference="gp").read_text()
    assert "**Reference: gp (kriging, per-field kernel)**." in report
    (line,) = [x for x in section(report, "Verdict").splitlines() if x.startswith("- gp-dataset vs gp")]
    assert "better at 90 % hidden" in line
    assert (pd.read_csv(out / "summary.csv")["reference"] == "kriging").all()  # evaluate's file untouched


def test_forward_equivalents_and_sampler_families():
    from fieldpaint.report import forward_equivalents, sampler_family

    assert forward_equivalents("mmps", 50, 10) == 50 * 21  # one forward + 10 backwards of ~2 forwards per step
    assert forward_equivalents("run:mmps-50-cg5", 50, 10) == 50 * 11  # the label's own CG count
    assert forward_equivalents("ddnm", 100, 10) == 100
    assert sampler_family("ddim-50") == "ddim" and sampler_family("mmps-50-cg5") == "mmps-cg5"
    assert sampler_family("repaint-250-10-10") == "repaint" and sampler_family("conditional-dpm") == "conditional-dpm"


def test_report_draws_quality_against_network_evaluations(tmp_path):
    """Methods at several NFE on two families and four coverages: the figure exists, the report links it,
    and MMPS's cost is given in forward passes and in forward-equivalents (the header's CG count)."""
    rng = np.random.default_rng(1)
    frames = []
    for mask in ("random", "tracks"):
        for coverage in (0.5, 0.9, 0.95, 0.99):
            reference = rng.uniform(0.5, 2.0, 8)
            methods = {"gp-dataset": reference, "ddnm": reference * 1.3, "mmps": reference * 0.8,
                       "ddim-50": reference * 0.7, "ddim-20": reference * 0.75, "dpm-10": reference * 0.72}
            table = cases_table({k: list(v) for k, v in methods.items()}, mask=mask, coverage=coverage)
            table["nfe"] = table["method"].map({"gp-dataset": 0, "ddnm": 100, "mmps": 50, "ddim-50": 50,
                                                "ddim-20": 20, "dpm-10": 10})
            table["members"] = table["method"].map(lambda m: 0 if m == "gp-dataset" else 16 if m == "dpm-10" else 4)
            table["crps"] = table["mse"] ** 0.5
            frames.append(table)
    table = pd.concat(frames, ignore_index=True)
    alias = table[table["method"] == "gp-dataset"].assign(method="kriging", reference_variant="gp-dataset")
    cases = pd.concat([table, alias], ignore_index=True)
    out = tmp_path / "eval"
    out.mkdir()
    cases.to_csv(out / "cases.csv", index=False)
    summarize(cases, "kriging", n_boot=200).to_csv(out / "summary.csv", index=False)
    report = write_report(out, STATS, [], {"MMPS CG iterations per step": 5}, reference="kriging").read_text()
    figure = out / "figures" / "quality_vs_nfe.png"
    assert figure.stat().st_size > 5000
    assert "![quality against NFE](figures/quality_vs_nfe.png)" in report
    costs = section(report, "MSE and CRPS against NFE per method")
    assert "| mmps | 4 | 50 | 550 |" in costs  # members, NFE, 50 · (1 + 2 · 5)
    assert "| ddnm | 4 | 100 | 100 |" in costs and "| dpm-10 | 16 | 10 | 10 |" in costs
    assert "gp-dataset" not in costs and "| kriging" not in costs  # no network, no cost row

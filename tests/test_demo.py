"""`fieldpaint demo --quick`: every stage runs, every report file exists, the numbers are finite."""

import math

import pandas as pd

from fieldpaint.cli import main


def test_quick_demo_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    for name in ("report.md", "cases.csv", "summary.csv", "summary.json", "reference.json", "data/kolmogorov.nc",
                 "runs/unconditional/checkpoints/best.safetensors", "runs/conditional/checkpoints/best.safetensors",
                 "figures/ratio_vs_coverage.png", "figures/training_unconditional.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["method"]) == {"kriging", "gp", "gp-dataset", "linear", "unconditional:mmps",
                                      "conditional:conditional-dpm"}
    assert (summary["failures"] == 0).all() and set(summary["verdict"]) <= {
        "better", "worse", "indistinguishable", "reference"}
    assert all(math.isfinite(v) for v in summary[["mse_mean", "crps_mean", "ratio_gmean"]].to_numpy().ravel())
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "nan" not in report.split("## Tables")[1].split("## Example")[0]
    # A rerun skips every finished stage and leaves the results as they were.
    before = (out / "cases.csv").read_text()
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert (out / "cases.csv").read_text() == before

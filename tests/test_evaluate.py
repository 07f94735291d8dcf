"""The evaluation harness: same cases for every method, summary arithmetic, files and report end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import train_tiny_grf_run
from fieldpaint.cli import main
from fieldpaint.data.fields import FieldSplit, FieldStats
from fieldpaint.evaluate import draw_case_masks, run_group
from fieldpaint.reconstruct import Reconstruction


class Recorder:
    """A method that remembers what it was given and returns the truth it was built with."""

    def __init__(self, truth):
        self.truth, self.seen = truth, []

    def reconstruct(self, obs, mask, valid, *, samples=1, seed=0):
        self.seen.append((obs.clone(), mask.clone()))
        return Reconstruction(self.truth.clone(), torch.full_like(self.truth, 0.1), None, 0, 0.0)


def test_every_method_gets_the_same_cases():
    x = torch.randn(3, 2, 16, 32)
    valid = torch.ones(3, 1, 16, 32)
    valid[:, :, :2, :2] = 0
    data = FieldSplit(x, valid, np.arange(3))
    stats = FieldStats(("a", "b"), (0.0, 0.0), (1.0, 1.0))
    a, b = Recorder(x), Recorder(x + 1)
    rows = run_group({"gp": a, "other": b}, data, stats, "tracks", 0.9, samples=1, seed=5, reference="gp")
    assert torch.equal(a.seen[0][0], b.seen[0][0]) and torch.equal(a.seen[0][1], b.seen[0][1])
    assert torch.equal(a.seen[0][1], draw_case_masks(data, "tracks", 0.9, seed=5))  # reproducible cases
    assert float((a.seen[0][1] * (1 - valid)).sum()) == 0  # land never observed
    by = {(r["method"], r["field"]): r for r in rows}
    assert by[("gp", 0)]["mse"] == 0.0 and by[("other", 0)]["mse"] == pytest.approx(1.0)
    # the reference's rows are repeated under the name "kriging", naming the variant they came from
    assert {k: v for k, v in by[("kriging", 0)].items() if k not in ("method", "reference_variant")} == \
        {k: v for k, v in by[("gp", 0)].items() if k != "method"}
    assert by[("kriging", 0)]["reference_variant"] == "gp" and len(rows) == 3 * 3
    # physical units: channel stds 1 and 1 here; scaled stats multiply the errors
    stats = FieldStats(("a", "b"), (0.0, 0.0), (2.0, 3.0))
    (row,) = [r for r in run_group({"other": Recorder(x + 1)}, data, stats, "tracks", 0.9, samples=1, seed=5)
              if r["field"] == 0]
    assert row["mse_physical"] == pytest.approx((4 + 9) / 2) and row["mae_physical"] == pytest.approx(2.5)


@pytest.fixture(scope="module")
def grf_run(tmp_path_factory):
    return train_tiny_grf_run(tmp_path_factory.mktemp("evaluate"))


def test_evaluate_end_to_end_writes_every_file(grf_run, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--run", str(grf_run / "run"), "--methods", "gp,gp-oracle,nearest,linear,ddnm",
            "--masks", "random,boxes", "--coverages", "0.5,0.9", "--n", "4", "--samples", "2", "--steps", "4",
            "--gp-nu", "1.5", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    for name in ("cases.csv", "summary.csv", "summary.json", "reference.json", "report.md",
                 "figures/ratio_vs_coverage.png",
                 "figures/spectra_random.png", "figures/training_run.png"):
        assert (out / name).exists() and (out / name).stat().st_size > 0, name
    figures = list((out / "figures").glob("example_*.png"))
    assert len(figures) == 2 and all(f.stat().st_size > 1000 for f in figures)
    cases = pd.read_csv(out / "cases.csv")
    # the five asked for, gp-dataset (a reference candidate, always run) and the reference rows
    assert len(cases) == 7 * 2 * 2 * 4
    assert np.isfinite(cases[["mse", "crps", "mae"]].to_numpy()).all()
    assert (cases["observed_max_error"] < 1e-4).all()  # every method keeps the observations
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "ddnm" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] == "kriging" and len(summary["groups"]) == 7 * 2 * 2
    choices = json.loads((out / "reference.json").read_text())
    assert len(choices) == 2 * 2 and {c["chosen"] for c in choices} <= {"gp", "gp-dataset"}
    for group in summary["groups"]:  # the reference is itself: its ratio is exactly 1
        if group["method"] == "kriging":
            assert group["ratio_gmean"] == pytest.approx(1.0)
    # On the GP's home turf, the oracle (the generator's own kernel) is the best baseline.
    mean = cases.groupby("method")["mse"].mean()
    assert mean["gp-oracle"] <= mean[["gp", "nearest", "linear"]].min() * 1.02
    # A rerun refuses to clobber; --resume skips finished groups and keeps the rows.
    assert main(args) == 2
    assert main(args + ["--resume"]) == 0
    assert len(pd.read_csv(out / "cases.csv")) == len(cases)


def test_unknown_method_and_mask_are_one_line_errors(grf_run, tmp_path, capsys):
    base = ["evaluate", "--run", str(grf_run / "run"), "--out", str(tmp_path / "e"), "--n", "2"]
    assert main(base + ["--methods", "gp,kriging9000"]) == 2
    assert "kriging9000" in capsys.readouterr().err
    assert main(base + ["--masks", "random,clouds"]) == 2
    assert "clouds" in capsys.readouterr().err
    assert main(base + ["--coverages", "0.5,1.2"]) == 2
    assert "coverage" in capsys.readouterr().err
    assert main(base + ["--methods", "conditional"]) == 2
    assert "conditional" in capsys.readouterr().err


def test_a_method_may_draw_its_own_member_count(grf_run):
    """per_method {"samples": K} gives that method K members whatever the evaluation asks, and the
    rows record each method's member count (0 for Gaussian baselines)."""
    from fieldpaint.evaluate import build_methods, load_fields
    from fieldpaint.reconstruct import BaselineData
    from fieldpaint.runs import load_run

    run = load_run(grf_run / "run")
    fields, _, stats, _, attrs = load_fields([run], None, None, "test", 2)
    baseline = BaselineData(stats, attrs, load_train=lambda: None)
    methods = build_methods(["linear", "ddnm"], [run], baseline, sampler={"steps": 3}, gp={},
                            per_method={"ddnm": {"samples": 3}}, candidates=())
    rows = run_group(methods, fields, stats, "random", 0.5, samples=2, seed=0)
    members = {r["method"]: r["members"] for r in rows}
    assert members == {"linear": 0, "ddnm": 3}
    assert {r["nfe"] for r in rows if r["method"] == "ddnm"} == {3}

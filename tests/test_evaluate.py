"""The evaluation harness: same cases for every method, summary arithmetic, files and report end to end."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fieldpaint.cli import main
from fieldpaint.config import from_dict
from fieldpaint.data.grf import generate_grf
from fieldpaint.data.io import write_dataset
from fieldpaint.evaluate import (EvalSet, bootstrap_interval, breakdown_coverages, draw_case_masks, run_group,
                                 summarize)
from fieldpaint.reconstruct import Reconstruction
from fieldpaint.train import train


def test_summary_arithmetic_on_a_hand_made_table():
    rows = []
    gp = [1.0, 2.0, 4.0, 1.0]
    other = [0.5, 3.0, 2.0, 1.0]  # ratios 0.5, 1.5, 0.5, 1.0 -> 2 wins of 4, mean 0.875, median 0.75
    for i, (a, b) in enumerate(zip(gp, other)):
        base = {"mask": "random", "coverage": 0.9, "field": i, "seed": i, "mae": 0, "mse_physical": 0,
                "mae_physical": 0, "crps": 0,
                "spread_skill": 1, "spectrum_error": 0, "nfe": 0, "seconds": 0}
        rows += [{**base, "method": "gp", "mse": a}, {**base, "method": "ddnm", "mse": b}]
    summary = summarize(pd.DataFrame(rows)).set_index("method")
    assert summary.loc["ddnm", "wins"] == 2 and summary.loc["ddnm", "compared"] == 4
    assert summary.loc["ddnm", "ratio_mean"] == pytest.approx(0.875)
    assert summary.loc["ddnm", "ratio_median"] == pytest.approx(0.75)
    assert summary.loc["ddnm", "mse_mean"] == pytest.approx(1.625)
    assert summary.loc["gp", "ratio_mean"] == 1.0 and summary.loc["gp", "wins"] == 0
    lo, hi = summary.loc["ddnm", "ratio_ci_low"], summary.loc["ddnm", "ratio_ci_high"]
    assert 0.5 <= lo <= 0.875 <= hi <= 1.5


def test_breakdown_names_the_coverage_where_a_method_stops_beating_gp():
    summary = pd.DataFrame({"method": ["m"] * 3 + ["gp"] * 3, "mask": ["random"] * 6,
                            "coverage": [0.5, 0.9, 0.99] * 2, "ratio_median": [0.5, 0.9, 1.3, 1, 1, 1]})
    (item,) = breakdown_coverages(summary)
    assert item["stops_beating_gp_at"] == 0.99 and item["beats_gp_at"] == [0.5, 0.9]


def test_bootstrap_interval_covers_the_mean_of_a_known_sample():
    values = np.random.default_rng(0).normal(1.0, 1.0, size=400)
    lo, hi = bootstrap_interval(values)
    half = 1.96 / math.sqrt(400)  # normal-theory half-width of the 95 % interval of the mean
    assert lo == pytest.approx(values.mean() - half, abs=0.03) and hi == pytest.approx(values.mean() + half, abs=0.03)


class Recorder:
    """A method that remembers what it was given and returns the truth it was built with."""

    def __init__(self, truth):
        self.truth, self.seen = truth, []

    def reconstruct(self, obs, mask, valid, *, samples=1, seed=0):
        self.seen.append((obs.clone(), mask.clone()))
        return Reconstruction(self.truth.clone(), torch.full_like(self.truth, 0.1), None, 0, 0.0)


def test_every_method_gets_the_same_cases():
    from fieldpaint.data.fields import FieldStats

    x = torch.randn(3, 2, 16, 32)
    valid = torch.ones(3, 1, 16, 32)
    valid[:, :, :2, :2] = 0
    data = EvalSet(x, valid, np.arange(3), FieldStats(("a", "b"), (0.0, 0.0), (1.0, 1.0)), {}, None)
    a, b = Recorder(x), Recorder(x + 1)
    rows = run_group({"gp": a, "other": b}, data, "tracks", 0.9, samples=1, seed=5)
    assert torch.equal(a.seen[0][0], b.seen[0][0]) and torch.equal(a.seen[0][1], b.seen[0][1])
    assert torch.equal(a.seen[0][1], draw_case_masks(data, "tracks", 0.9, seed=5))  # reproducible cases
    assert float((a.seen[0][1] * (1 - valid)).sum()) == 0  # land never observed
    by = {(r["method"], r["field"]): r for r in rows}
    assert by[("gp", 0)]["mse"] == 0.0 and by[("other", 0)]["mse"] == pytest.approx(1.0)
    # physical units: channel stds 1 and 1 here; scaled stats multiply the errors
    data.stats = FieldStats(("a", "b"), (0.0, 0.0), (2.0, 3.0))
    (row,) = [r for r in run_group({"other": Recorder(x + 1)}, data, "tracks", 0.9, samples=1, seed=5) if r["field"] == 0]
    assert row["mse_physical"] == pytest.approx((4 + 9) / 2) and row["mae_physical"] == pytest.approx(2.5)


@pytest.fixture(scope="module")
def grf_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    channels, split, attrs = generate_grf(24, 6, 16, 32, channels=1, nu=1.5, length_scale=4.0, seed=2)
    write_dataset(root / "grf.nc", channels, split, attrs)
    config = from_dict({
        "data": {"path": str(root / "grf.nc"), "variables": ["field"], "height": 16, "width": 32},
        "model": {"channels": [8, 16], "norm_groups": 4, "attention_heads": 2},
        "diffusion": {"timesteps": 50},
        "train": {"epochs": 1, "batch_size": 8, "ema_warmup_steps": 5, "eval_train_samples": 8},
    })
    train(config, root / "run", progress=False)
    return root


def test_evaluate_end_to_end_writes_every_file(grf_run, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--run", str(grf_run / "run"), "--methods", "gp,gp-oracle,nearest,linear,ddnm",
            "--masks", "random,boxes", "--coverages", "0.5,0.9", "--n", "4", "--samples", "2", "--steps", "4",
            "--gp-nu", "1.5", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    for name in ("cases.csv", "summary.csv", "summary.json", "report.md", "figures/ratio_vs_coverage.png",
                 "figures/spectra_random.png", "figures/training_run.png"):
        assert (out / name).exists() and (out / name).stat().st_size > 0, name
    figures = list((out / "figures").glob("example_*.png"))
    assert len(figures) == 2 and all(f.stat().st_size > 1000 for f in figures)
    cases = pd.read_csv(out / "cases.csv")
    assert len(cases) == 5 * 2 * 2 * 4
    assert np.isfinite(cases[["mse", "crps", "mae"]].to_numpy()).all()
    assert (cases["observed_max_error"] < 1e-4).all()  # every method keeps the observations
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "ddnm" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] == "gp" and len(summary["groups"]) == 5 * 2 * 2
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

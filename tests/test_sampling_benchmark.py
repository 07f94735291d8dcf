"""mmps and conditional-dpm through `fieldpaint evaluate` end to end, and benchmarks/sampling.py's
quality mode (`--quick`), on tiny models trained for one epoch on a 16x32 GRF file."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fieldpaint.cli import main
from fieldpaint.config import from_dict
from fieldpaint.data.grf import generate_grf
from fieldpaint.data.io import write_dataset
from fieldpaint.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grf_runs(tmp_path_factory):
    """An unconditional and a conditional (concat) model, one epoch each, on one GRF file."""
    root = tmp_path_factory.mktemp("sampling")
    channels, split, attrs = generate_grf(24, 6, 16, 32, channels=1, nu=1.5, length_scale=4.0, seed=2)
    write_dataset(root / "grf.nc", channels, split, attrs)
    for name, conditioning in (("unconditional", "none"), ("conditional", "concat")):
        config = from_dict({
            "data": {"path": str(root / "grf.nc"), "variables": ["field"], "height": 16, "width": 32},
            "model": {"channels": [8, 16], "norm_groups": 4, "attention_heads": 2, "conditioning": conditioning},
            "diffusion": {"timesteps": 50},
            "train": {"epochs": 1, "batch_size": 8, "ema_warmup_steps": 5, "eval_train_samples": 8},
        })
        train(config, root / name, progress=False)
    return root


def test_evaluate_runs_mmps_and_conditional_dpm(grf_runs, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", "--run", str(grf_runs / "unconditional"), "--run", str(grf_runs / "conditional"),
            "--methods", "gp,linear,ddnm,mmps,conditional,conditional-dpm", "--masks", "random",
            "--coverages", "0.9", "--n", "2", "--samples", "2", "--steps", "4", "--cg-iterations", "3",
            "--validation-fields", "2", "--gp-nu", "1.5", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    cases = pd.read_csv(out / "cases.csv")
    nfe = cases.groupby("method")["nfe"].first()
    assert nfe["unconditional:mmps"] == 4 and nfe["conditional:conditional-dpm"] == 4
    assert cases["mse"].notna().all() and (cases["observed_max_error"] < 1e-4).all()
    report = (out / "report.md").read_text()
    assert "- MMPS CG iterations per step: 3" in report
    assert "![quality against NFE](figures/quality_vs_nfe.png)" in report
    assert "| unconditional:mmps | 2 | 4 | 28 |" in report  # 2 members, 4 NFE, 4 · (1 + 2 · 3) forward-equivalents
    assert (out / "figures" / "quality_vs_nfe.png").stat().st_size > 1000


def test_sampling_benchmark_quick(grf_runs, tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sampling.py"), "--unconditional", str(grf_runs / "unconditional"),
         "--conditional", str(grf_runs / "conditional"), "--quick", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    for label in ("repaint-10-2-2", "ddnm-6", "mmps-5-cg2", "mmps-5-cg3", "ddim-6", "ddim-4", "dpm-3", "dpm-5"):
        assert f"| {label} |" in text, label
    assert "| mmps-5-cg2 | 5 | 25 |" in text  # 5 · (1 + 2 · 2)
    assert "| repaint-10-2-2 | 18 | 18 |" in text  # 10 + 2 · 1 · 4
    assert "Target 1:" in text and "Target 2:" in text and "dpm-5 / ddim-6" in text
    assert (out / "report.md").exists() and (out / "figures" / "quality_vs_nfe.png").exists()


def test_inpaint_with_sigma_y_in_the_data_units(grf_runs, tmp_path):
    """--sigma-y in physical units reaches mmps divided by the run's std (one channel: a float)."""
    import numpy as np
    import xarray as xr

    from fieldpaint.runs import load_run

    with xr.open_dataset(grf_runs / "grf.nc") as ds:
        obs = ds.isel(sample=slice(0, 2)).load()
    keep = np.random.default_rng(0).uniform(size=obs["field"].shape) < 0.2
    obs["field"] = obs["field"].where(keep)
    obs.drop_vars("split").to_netcdf(tmp_path / "obs.nc")
    out = tmp_path / "rec.nc"
    assert main(["inpaint", "--checkpoint", str(grf_runs / "unconditional"), "--input", str(tmp_path / "obs.nc"),
                 "--out", str(out), "--method", "mmps", "--steps", "3", "--cg-iterations", "2", "--samples", "2",
                 "--sigma-y", "0.3", "--no-progress"]) == 0
    std = load_run(grf_runs / "unconditional").stats.std[0]
    with xr.open_dataset(out) as rec:
        assert rec.attrs["sigma_y"] == pytest.approx(0.3 / std, rel=1e-6)
        observed = rec["observed"].values.astype(bool)
        assert (rec["field"].values[observed] != obs["field"].values[observed]).mean() > 0.99  # not pasted

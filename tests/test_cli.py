"""The command line: help on every subcommand, one-line errors with exit status 2, no clobbering."""

import subprocess
import sys

import pytest

from fieldpaint.cli import main

SUBCOMMANDS = ["data", "configs", "train", "inpaint", "evaluate", "demo"]


def run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse exits for --help and usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("sub", SUBCOMMANDS + ["data generate", "data info", "data masks"])
def test_help_on_every_subcommand(capsys, sub):
    code, out, _ = run_cli(capsys, *sub.split(), "--help")
    assert code == 0 and "usage: fieldpaint" in out


def test_python_dash_m_runs_the_same_command():
    proc = subprocess.run([sys.executable, "-m", "fieldpaint", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "configs" in proc.stdout


def test_configs_show_prints_resolved_yaml(capsys):
    code, out, _ = run_cli(capsys, "configs", "show", "standard_attn_slim", "--set", "train.epochs=3")
    assert code == 0 and "epochs: 3" in out and "channels:" in out


def test_configs_show_unknown_key_is_one_line_exit_2(capsys):
    code, _, err = run_cli(capsys, "configs", "show", "standard_attn_slim", "--set", "train.lrr=1")
    assert code == 2 and "train.lrr" in err and err.count("\n") == 1


def test_configs_lists_every_preset_with_counts(capsys):
    from fieldpaint.config import preset_names

    code, out, _ = run_cli(capsys, "configs")
    assert code == 0
    for name in preset_names():
        assert name in out
    slim_row = out.split("standard_attn_slim", 1)[1].split()
    assert float(slim_row[0].rstrip("M")) == pytest.approx(6.1, rel=0.05)  # the notes' table


@pytest.mark.parametrize("coverage", ["1.0", "-0.1", "nan", "abc"])
def test_mask_coverage_outside_unit_interval_exits_2(capsys, tmp_path, coverage):
    code, _, err = run_cli(capsys, "data", "masks", "--coverage", coverage, "--out", str(tmp_path / "m.nc"))
    assert code == 2 and "coverage" in err
    assert not (tmp_path / "m.nc").exists()


def test_data_masks_writes_exact_coverage(capsys, tmp_path):
    import xarray as xr

    out = tmp_path / "m.nc"
    code, _, _ = run_cli(capsys, "data", "masks", "--family", "tracks", "--coverage", "0.9", "--n", "3",
                         "--height", "16", "--width", "32", "--out", str(out))
    assert code == 0
    with xr.open_dataset(out) as ds:
        observed = ds["mask"].values.reshape(3, -1).sum(axis=1)
    assert list(observed) == [round(0.1 * 16 * 32)] * 3


def test_generate_grf_then_info_and_no_overwrite(capsys, tmp_path):
    out = tmp_path / "grf.nc"
    args = ["data", "generate", "grf", "--n-train", "6", "--n-test", "2", "--height", "16", "--width", "32",
            "--out", str(out), "--quiet"]
    code, stdout, _ = run_cli(capsys, *args)
    assert code == 0 and "6 train, 2 test" in stdout
    before = out.read_bytes()
    code, _, err = run_cli(capsys, *args[:-3], "--seed", "1", "--out", str(out), "--quiet")
    assert code == 2 and "already exists" in err
    assert out.read_bytes() == before
    code, stdout, _ = run_cli(capsys, "data", "info", str(out))
    assert code == 0 and "16x32" in stdout and "6 train + 2 test" in stdout


def test_info_on_missing_file_exits_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "data", "info", str(tmp_path / "nope.nc"))
    assert code == 2 and err.count("\n") == 1

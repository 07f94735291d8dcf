"""The bad-input battery: every kind of bad input an adversarial user might try, run through
`fieldpaint.cli.main` in-process. Each must end with exit status 2 and exactly one line on stderr,
`fieldpaint: error: ...` (no traceback, no usage block), change no file that was there before
(sha256 of every file under the case's folder and the shared one), and leave no partial file
(`*.tmp-*`) and nothing new behind (no run folder, no output, no folder).

A case is `(id, make_argv)` where `make_argv(world, tmp, monkeypatch)` prepares its folder `tmp`
and returns the command line. The shared `world` (made once per module) holds a tiny GRF dataset
and a tiny trained run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import fieldpaint.atomic
from fieldpaint.atomic import write_atomic
from fieldpaint.cli import main
from fieldpaint.errors import FieldpaintError

TINY = ["--set", "model.channels=[8,16]", "--set", "model.norm_groups=4", "--set", "model.attention_heads=2",
        "--set", "diffusion.timesteps=20", "--set", "train.epochs=1",
        "--set", "train.batch_size=4", "--set", "train.eval_train_samples=4"]
ROOT_WRITES = "running as root: chmod does not stop root's writes, so an unwritable folder cannot be made"


@dataclass(frozen=True)
class World:
    folder: Path
    data: Path  # 12 GRF fields of 16x32, variable `field`
    run: Path  # a 1-epoch run of the tiny model on it
    ckpt: Path  # its last checkpoint

    def train_args(self, *extra: str) -> list[str]:
        return ["--config", "standard_attn_slim", "--set", f"data.path={self.data}", "--set", "data.variables=[field]",
                "--set", "data.height=16", "--set", "data.width=32", *TINY, *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    folder = tmp_path_factory.mktemp("world")
    data = folder / "grf.nc"
    assert main(["data", "generate", "grf", "--n-train", "8", "--n-test", "4", "--height", "16", "--width", "32",
                 "--out", str(data), "--quiet"]) == 0
    w = World(folder, data, folder / "run", folder / "run" / "checkpoints" / "last.safetensors")
    assert main(["train", *w.train_args(), "--run-dir", str(w.run), "--no-progress"]) == 0
    assert w.ckpt.is_file()
    return w


def snapshot(*folders: Path) -> dict[Path, str | None]:
    """Every file (its sha256) and folder (None) under `folders`."""
    seen: dict[Path, str | None] = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in dirs:
                seen[Path(root) / name] = None
            for name in files:
                path = Path(root) / name
                seen[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def write_random(path: Path, n: int = 4096) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(n))
    return path


def a_file(tmp: Path) -> Path:
    return write_random(tmp / "somefile", 10)


def unwritable(tmp: Path) -> Path:
    folder = tmp / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def crash_in_fsync(monkeypatch) -> None:
    """A crash after the temporary is written, before it is put in place (a full disk, a kill)."""
    def fail(path):
        raise OSError(28, "No space left on device (simulated)", str(path))
    monkeypatch.setattr(fieldpaint.atomic, "fsync_path", fail)


def masks(out, *extra) -> list[str]:
    return ["data", "masks", "--n", "2", "--height", "16", "--width", "32", "--out", str(out), *extra]


def generate(out, *extra) -> list[str]:
    return ["data", "generate", "grf", "--n-train", "4", "--n-test", "2", "--height", "16", "--width", "32",
            "--quiet", "--out", str(out), *extra]


def inpaint(w: World, out, *extra, method="linear") -> list[str]:
    return ["inpaint", "--method", method, "--input", str(w.data), "--out", str(out), "--no-progress", *extra]


def evaluate(w: World, out, *extra) -> list[str]:
    return ["evaluate", "--data", str(w.data), "--methods", "linear", "--masks", "random", "--coverages", "0.9",
            "--n", "2", "--out", str(out), "--no-progress", *extra]


def demo(out, *extra) -> list[str]:
    return ["demo", "--quick", "--device", "cpu", "--no-progress", "--out", str(out), *extra]


def existing(tmp: Path, name: str, argv_for) -> Path:
    """An output made by a first, successful run of the same command."""
    out = tmp / name
    assert main(argv_for(out)) == 0
    return out


CONFIG_NUMBERS = ["train.lr=inf", "train.lr=nan", "train.lr=-1e-3", "train.weight_decay=-1", "train.betas=[2,3]",
                  "train.betas=[0.9]", "train.warmup_epochs=nan", "train.seed=1e23", "train.seed=1.5",
                  "diffusion.timesteps=1e9", "diffusion.timesteps=0", "model.norm_groups=0", "model.norm_groups=3",
                  "model.channels=[]", "train.batch_size=0", "train.epochs=-1", "train.lrr=1", "nosection.x=1",
                  "train.epochs=abc", "train.lr=[1,2]", "model.attention_levels=[5]", "data.height=7",
                  "train.lr", "=1", "model.wrap=z"]

CASES = [
    # --- config numbers, for train (no run folder may appear) and for configs show
    *[(f"train {s}", lambda w, t, m, s=s: ["train", *w.train_args("--set", s), "--run-dir", str(t / "run")])
      for s in CONFIG_NUMBERS],
    *[(f"configs show {s}", lambda w, t, m, s=s: ["configs", "show", "standard_attn_slim", "--set", s])
      for s in CONFIG_NUMBERS],
    ("configs show unknown preset", lambda w, t, m: ["configs", "show", "no_such_preset"]),
    ("configs show no name", lambda w, t, m: ["configs", "show"]),
    ("configs show random-bytes yaml", lambda w, t, m: ["configs", "show", str(write_random(t / "c.yaml"))]),
    ("configs show yaml list", lambda w, t, m: ["configs", "show", str(_text(t / "c.yaml", "[1, 2]\n"))]),
    ("configs show yaml bad", lambda w, t, m: ["configs", "show", str(_text(t / "c.yaml", "train: {lr: [\n"))]),
    ("train data.path missing", lambda w, t, m: ["train", *w.train_args("--set", f"data.path={t / 'nope.nc'}"),
                                                 "--run-dir", str(t / "run")]),
    ("train data.path corrupt", lambda w, t, m: ["train", *w.train_args(
        "--set", f"data.path={write_random(t / 'bad.nc')}"), "--run-dir", str(t / "run")]),
    ("train variable not in file", lambda w, t, m: ["train", *w.train_args("--set", "data.variables=[nope]"),
                                                    "--run-dir", str(t / "run")]),
    ("train grid smaller than the file's", lambda w, t, m: [
        "train", *w.train_args("--set", "data.height=8", "--set", "data.crop=false"), "--run-dir", str(t / "run")]),
    ("train model.wrap on data not periodic", lambda w, t, m: [
        "train", *w.train_args("--set", "model.wrap=x"), "--run-dir", str(t / "run")]),
    ("train model.wrap across padding", lambda w, t, m: [
        "train", *w.train_args("--set", "model.wrap=x", "--set", "data.periodic=x", "--set", "data.width=36"),
        "--run-dir", str(t / "run")]),
    ("train no run-dir", lambda w, t, m: ["train", *w.train_args()]),
    ("train unknown flag", lambda w, t, m: ["train", "--bogus"]),
    ("no subcommand", lambda w, t, m: []),
    ("unknown subcommand", lambda w, t, m: ["frobnicate"]),
    # --- counts, coverages and sizes
    ("masks --n 0", lambda w, t, m: masks(t / "m.nc", "--n", "0")),
    ("masks --n -3", lambda w, t, m: masks(t / "m.nc", "--n", "-3")),
    ("masks --coverage 1.5", lambda w, t, m: masks(t / "m.nc", "--coverage", "1.5")),
    ("masks --coverage inf", lambda w, t, m: masks(t / "m.nc", "--coverage", "inf")),
    ("masks --family nope", lambda w, t, m: masks(t / "m.nc", "--family", "nope")),
    ("masks --height 0", lambda w, t, m: masks(t / "m.nc", "--height", "0")),
    ("masks --width -4", lambda w, t, m: masks(t / "m.nc", "--width", "-4")),
    ("masks --seed -1", lambda w, t, m: masks(t / "m.nc", "--seed", "-1")),
    ("masks absurd size", lambda w, t, m: masks(t / "m.nc", "--n", "1000", "--height", "100000",
                                                "--width", "100000")),
    ("generate --n-train 0", lambda w, t, m: generate(t / "g.nc", "--n-train", "0")),
    ("generate --n-test -1", lambda w, t, m: generate(t / "g.nc", "--n-test", "-1")),
    ("generate --height 0", lambda w, t, m: generate(t / "g.nc", "--height", "0")),
    ("generate --width 1.5", lambda w, t, m: generate(t / "g.nc", "--width", "1.5")),
    ("generate --channels 0", lambda w, t, m: generate(t / "g.nc", "--channels", "0")),
    ("generate --nu 0.7", lambda w, t, m: generate(t / "g.nc", "--nu", "0.7")),
    ("generate --length-scale nan", lambda w, t, m: generate(t / "g.nc", "--length-scale", "nan")),
    ("generate --length-scale -2", lambda w, t, m: generate(t / "g.nc", "--length-scale", "-2")),
    ("generate --variance inf", lambda w, t, m: generate(t / "g.nc", "--variance", "inf")),
    ("generate --seed -1", lambda w, t, m: generate(t / "g.nc", "--seed", "-1")),
    ("generate grf absurd size", lambda w, t, m: ["data", "generate", "grf", "--height", "100000", "--width",
                                                  "100000", "--out", str(t / "g.nc"), "--quiet"]),
    ("generate grf absurd count", lambda w, t, m: generate(t / "g.nc", "--n-train", "1000000000",
                                                           "--height", "1024", "--width", "1024")),
    ("generate kolmogorov absurd size", lambda w, t, m: [
        "data", "generate", "kolmogorov", "--height", "100000", "--width", "100000", "--out", str(t / "k.nc"),
        "--quiet"]),
    ("generate kolmogorov --height 3", lambda w, t, m: [
        "data", "generate", "kolmogorov", "--n-train", "2", "--n-test", "1", "--height", "3", "--width", "5",
        "--out", str(t / "k.nc"), "--quiet"]),
    ("generate unknown generator", lambda w, t, m: ["data", "generate", "perlin", "--out", str(t / "g.nc")]),
    ("demo --minutes nan", lambda w, t, m: demo(t / "demo", "--minutes", "nan")),
    ("demo --minutes -1", lambda w, t, m: demo(t / "demo", "--minutes", "-1")),
    ("demo --minutes inf", lambda w, t, m: demo(t / "demo", "--minutes", "inf")),
    ("demo --minutes 0", lambda w, t, m: demo(t / "demo", "--minutes", "0")),
    ("inpaint --samples 0", lambda w, t, m: inpaint(w, t / "r.nc", "--samples", "0")),
    ("inpaint unknown method", lambda w, t, m: inpaint(w, t / "r.nc", method="nope")),
    ("evaluate --coverages 1.5", lambda w, t, m: evaluate(w, t / "ev", "--coverages", "1.5")),
    ("evaluate --masks nope", lambda w, t, m: evaluate(w, t / "ev", "--masks", "nope")),
    ("evaluate --methods nope", lambda w, t, m: evaluate(w, t / "ev", "--methods", "nope")),
    ("evaluate --n 0", lambda w, t, m: evaluate(w, t / "ev", "--n", "0")),
    # --- the operating system says no: an output under a regular file
    ("generate --out under a file", lambda w, t, m: generate(a_file(t) / "x.nc")),
    ("masks --out under a file", lambda w, t, m: masks(a_file(t) / "x.nc")),
    ("train --run-dir under a file", lambda w, t, m: ["train", *w.train_args(), "--run-dir", str(a_file(t) / "run")]),
    ("train --run-dir is a file", lambda w, t, m: ["train", *w.train_args(), "--run-dir", str(a_file(t))]),
    ("inpaint --out under a file", lambda w, t, m: inpaint(w, a_file(t) / "x.nc")),
    ("evaluate --out under a file", lambda w, t, m: evaluate(w, a_file(t) / "ev")),
    ("evaluate --out is a file", lambda w, t, m: evaluate(w, a_file(t))),
    ("demo --out under a file", lambda w, t, m: demo(a_file(t) / "demo")),
    ("demo --out is a file", lambda w, t, m: demo(a_file(t))),
    # ... an output that is a folder, even with --overwrite
    ("generate --out a folder --overwrite", lambda w, t, m: generate(t, "--overwrite")),
    ("masks --out a folder --overwrite", lambda w, t, m: masks(t, "--overwrite")),
    ("inpaint --out a folder --overwrite", lambda w, t, m: inpaint(w, t, "--overwrite")),
    # ... a folder nobody may write in: /proc refuses even root
    ("generate --out under /proc", lambda w, t, m: generate("/proc/fieldpaint-test/x.nc")),
    ("masks --out under /proc", lambda w, t, m: masks("/proc/fieldpaint-test/x.nc")),
    ("train --run-dir under /proc", lambda w, t, m: ["train", *w.train_args(), "--run-dir", "/proc/fieldpaint-test"]),
    ("inpaint --out under /proc", lambda w, t, m: inpaint(w, "/proc/fieldpaint-test/x.nc")),
    ("evaluate --out under /proc", lambda w, t, m: evaluate(w, "/proc/fieldpaint-test")),
    ("demo --out under /proc", lambda w, t, m: demo("/proc/fieldpaint-test")),
    # ... and a folder made unwritable with chmod (skipped as root)
    ("generate --out unwritable", lambda w, t, m: generate(unwritable(t) / "x.nc")),
    ("masks --out unwritable", lambda w, t, m: masks(unwritable(t) / "x.nc")),
    ("train --run-dir unwritable", lambda w, t, m: ["train", *w.train_args(), "--run-dir", str(unwritable(t) / "r")]),
    ("inpaint --out unwritable", lambda w, t, m: inpaint(w, unwritable(t) / "x.nc")),
    ("evaluate --out unwritable", lambda w, t, m: evaluate(w, unwritable(t) / "ev")),
    ("demo --out unwritable", lambda w, t, m: demo(unwritable(t) / "demo")),
    ("train --resume read-only run", lambda w, t, m: ["train", "--resume", str(_read_only_run(w, t)),
                                                      "--set", "train.epochs=2", "--no-progress"]),
    # --- no clobbering
    ("masks over an existing file", lambda w, t, m: masks(existing(t, "m.nc", masks), "--seed", "1")),
    ("generate over an existing file", lambda w, t, m: generate(existing(t, "g.nc", generate), "--seed", "1")),
    ("masks --overwrite, crash mid-write", lambda w, t, m: [
        masks(existing(t, "m.nc", masks), "--seed", "1", "--overwrite"), crash_in_fsync(m)][0]),
    ("generate --overwrite, crash mid-write", lambda w, t, m: [
        generate(existing(t, "g.nc", generate), "--seed", "1", "--overwrite"), crash_in_fsync(m)][0]),
    ("inpaint over an existing file", lambda w, t, m: inpaint(w, write_random(t / "r.nc"))),
    ("evaluate --out over an evaluation", lambda w, t, m: evaluate(w, _evaluation(t))),
    ("evaluate --out holds report.md only", lambda w, t, m: evaluate(w, _report_only(t), "--resume")),
    ("train new run over a run", lambda w, t, m: ["train", *w.train_args(), "--run-dir", str(_copy_run(w, t))]),
    # --- missing or corrupt inputs
    ("info missing file", lambda w, t, m: ["data", "info", str(t / "nope.nc")]),
    ("info variable not in file", lambda w, t, m: ["data", "info", str(w.data), "--variables", "nope"]),
    ("info corrupt netcdf", lambda w, t, m: ["data", "info", str(write_random(t / "bad.nc"))]),
    ("info empty file", lambda w, t, m: ["data", "info", str(write_random(t / "empty.nc", 0))]),
    ("info --test-fraction 1.5", lambda w, t, m: ["data", "info", str(w.data), "--test-fraction", "1.5"]),
    ("info --test-fraction nan", lambda w, t, m: ["data", "info", str(w.data), "--test-fraction", "nan"]),
    ("info a folder", lambda w, t, m: ["data", "info", str(t)]),
    ("inpaint missing input", lambda w, t, m: ["inpaint", "--method", "linear", "--input", str(t / "nope.nc"),
                                               "--out", str(t / "r.nc")]),
    ("inpaint corrupt input", lambda w, t, m: ["inpaint", "--method", "linear", "--input",
                                               str(write_random(t / "bad.nc")), "--out", str(t / "r.nc")]),
    ("inpaint variable not in file", lambda w, t, m: inpaint(w, t / "r.nc", "--variables", "nope")),
    ("inpaint random-bytes checkpoint", lambda w, t, m: inpaint(
        w, t / "r.nc", "--checkpoint", str(write_random(t / "c.safetensors")), method="repaint")),
    ("inpaint run folder without checkpoint", lambda w, t, m: inpaint(
        w, t / "r.nc", "--checkpoint", str(_empty_run(t)), method="repaint")),
    ("inpaint missing checkpoint", lambda w, t, m: inpaint(w, t / "r.nc", "--checkpoint", str(t / "nope"),
                                                           method="repaint")),
    ("inpaint diffusion without checkpoint", lambda w, t, m: inpaint(w, t / "r.nc", method="repaint")),
    ("evaluate random-bytes run", lambda w, t, m: ["evaluate", "--run", str(write_random(t / "c.safetensors")),
                                                   "--out", str(t / "ev"), "--no-progress"]),
    ("evaluate missing data", lambda w, t, m: evaluate(w, t / "ev", "--data", str(t / "nope.nc"))),
    ("evaluate corrupt data", lambda w, t, m: evaluate(w, t / "ev", "--data", str(write_random(t / "bad.nc")))),
    ("train --init-from another architecture", lambda w, t, m: [
        "train", *w.train_args("--set", "model.channels=[16,32]"), "--init-from", str(w.ckpt),
        "--run-dir", str(t / "run")]),
    ("train --init-from random bytes", lambda w, t, m: [
        "train", *w.train_args(), "--init-from", str(write_random(t / "c.safetensors")), "--run-dir", str(t / "run")]),
    ("train --init-from missing", lambda w, t, m: [
        "train", *w.train_args(), "--init-from", str(t / "nope.safetensors"), "--run-dir", str(t / "run")]),
    ("train --resume not a run", lambda w, t, m: ["train", "--resume", str(t)]),
    ("train --resume missing folder", lambda w, t, m: ["train", "--resume", str(t / "nope")]),
    ("train --resume corrupt last", lambda w, t, m: ["train", "--resume", str(_corrupt_run(w, t))]),
    ("train --resume with a bad --set", lambda w, t, m: ["train", "--resume", str(_copy_run(w, t)),
                                                         "--set", "train.lr=nan"]),
    ("train --resume and --init-from", lambda w, t, m: ["train", "--resume", str(_copy_run(w, t)),
                                                        "--init-from", str(w.ckpt)]),
]
NEEDS_WRITE_BARRIER = {"generate --out unwritable", "masks --out unwritable", "train --run-dir unwritable",
                       "inpaint --out unwritable", "evaluate --out unwritable", "demo --out unwritable",
                       "train --resume read-only run"}


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _copy_run(w: World, tmp: Path) -> Path:
    shutil.copytree(w.run, tmp / "run")
    return tmp / "run"


def _read_only_run(w: World, tmp: Path) -> Path:
    run = _copy_run(w, tmp)
    for folder in (run / "checkpoints", run):
        folder.chmod(0o500)
    return run


def _corrupt_run(w: World, tmp: Path) -> Path:
    run = _copy_run(w, tmp)
    write_random(run / "checkpoints" / "last.safetensors")
    return run


def _empty_run(tmp: Path) -> Path:
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    return tmp / "run"


def _evaluation(tmp: Path) -> Path:
    """What a finished evaluation leaves (contents do not matter: nothing may touch them)."""
    for name in ("cases.csv", "summary.csv", "report.md"):
        write_random(tmp / "ev" / name, 100)
    return tmp / "ev"


def _report_only(tmp: Path) -> Path:
    (tmp / "ev").mkdir()
    (tmp / "ev" / "report.md").write_text("# an old report\n")
    return tmp / "ev"


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own exit, which main should have turned into a line
        code = exit_.code
    return code, capsys.readouterr().err


# Failures whose fix lies in a file the CLI does not own; each reason says what to change.
XFAIL: dict[str, str] = {}


@pytest.mark.parametrize("make_argv", [
    pytest.param(make, id=name, marks=[pytest.mark.xfail(strict=True, reason=XFAIL[name])] if name in XFAIL else [])
    for name, make in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(request, world, tmp_path, capsys, monkeypatch, make_argv):
    if request.node.callspec.id in NEEDS_WRITE_BARRIER and os.geteuid() == 0:
        pytest.skip(ROOT_WRITES)
    case = tmp_path / "case"
    case.mkdir()
    try:
        with monkeypatch.context() as patch:
            argv = make_argv(world, case, patch)
            capsys.readouterr()
            before = snapshot(case, world.folder)
            code, err = run_cli(capsys, argv)
        after = snapshot(case, world.folder)
    finally:
        for root, dirs, _ in os.walk(case):  # let pytest clean up what a case locked
            for name in dirs:
                (Path(root) / name).chmod(0o700)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("fieldpaint: error: "), err
    assert "Traceback" not in err
    changed = [str(p) for p, digest in before.items() if after.get(p, "gone") != digest]
    assert not changed, f"changed or removed: {changed}"
    new = [str(p) for p in after.keys() - before.keys()]
    assert not new, f"left behind: {new}"
    assert not Path("/proc/fieldpaint-test").exists()


def test_the_battery_counts_its_cases():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 100


def test_overwrite_replaces_the_file_whole(world, tmp_path, capsys):
    out = existing(tmp_path, "m.nc", masks)
    before = out.read_bytes()
    assert main(masks(out, "--seed", "1", "--overwrite")) == 0
    assert out.read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_second_writer_gets_already_exists_even_after_its_check(tmp_path):
    """A file that appears between a writer's check and its link is not clobbered."""
    out = tmp_path / "x.nc"

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"second")
        out.write_bytes(b"first")  # the other writer wins the race, after our check passed

    with pytest.raises(FieldpaintError, match="already exists") as caught:
        write_atomic(out, write)
    assert str(caught.value).count("\n") == 0
    assert out.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["x.nc"]


def test_second_cli_writer_gets_one_line(world, tmp_path, capsys, monkeypatch):
    """The same race through the CLI: `data masks` passes its check, then another process writes."""
    out = tmp_path / "m.nc"
    real = fieldpaint.atomic.fsync_path

    def other_writer_first(path):
        if ".tmp-" in Path(path).name and not out.exists():
            out.write_bytes(b"first")
        real(path)

    monkeypatch.setattr(fieldpaint.atomic, "fsync_path", other_writer_first)
    code, err = run_cli(capsys, masks(out))
    assert code == 2 and err.count("\n") == 1 and "already exists" in err
    assert out.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["m.nc"]


def no_work(*args, **kw):
    raise AssertionError("the work started before the output location was checked")


@pytest.mark.parametrize("where", ["under a file", "under /proc"])
def test_evaluate_checks_its_output_before_any_work(world, tmp_path, capsys, monkeypatch, where):
    import fieldpaint.evaluate

    monkeypatch.setattr(fieldpaint.evaluate, "evaluate_and_report", no_work)
    out = a_file(tmp_path) / "ev" if where == "under a file" else Path("/proc/fieldpaint-test")
    code, err = run_cli(capsys, evaluate(world, out))
    assert code == 2 and err.count("\n") == 1 and err.startswith("fieldpaint: error: ")


@pytest.mark.parametrize("argv", [
    lambda w, t: generate(a_file(t) / "x.nc"), lambda w, t: masks(a_file(t) / "x.nc"),
    lambda w, t: generate("/proc/fieldpaint-test/x.nc"), lambda w, t: masks("/proc/fieldpaint-test/x.nc"),
    lambda w, t: generate(write_random(t / "g.nc")), lambda w, t: inpaint(w, "/proc/fieldpaint-test/x.nc")],
    ids=["generate under a file", "masks under a file", "generate under /proc", "masks under /proc",
         "generate over a file", "inpaint under /proc"])
def test_outputs_are_checked_before_any_work(world, tmp_path, capsys, monkeypatch, argv):
    import fieldpaint.api
    import fieldpaint.data.grf
    import fieldpaint.data.masks

    for owner, name in ((fieldpaint.data.grf, "generate_grf"), (fieldpaint.data.masks, "make_masks"),
                        (fieldpaint.api, "reconstructor")):
        monkeypatch.setattr(owner, name, no_work)
    code, err = run_cli(capsys, argv(world, tmp_path))
    assert code == 2 and err.count("\n") == 1 and err.startswith("fieldpaint: error: ")

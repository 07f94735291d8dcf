"""Fault injection: a run killed anywhere resumes (or restarts) and ends bit-identical to an
uninterrupted one; corrupt checkpoints are refused; a diverged run never replaces a finite one.

Kills are simulated by raising `Killed` (a BaseException, so no `except Exception` swallows it)
from a monkeypatched function at a chosen point, and twice by a real SIGKILL of a subprocess.
After a kill the user's recovery is what `fieldpaint train` offers: `--resume DIR`, or, when
there is nothing to resume, the same new-run command again (`prepare_run` decides).
"""

import json
import os
import signal
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import fieldpaint.checkpoint as checkpoint_module
from fieldpaint.checkpoint import load_checkpoint
from fieldpaint.config import dump_yaml, from_dict
from fieldpaint.data.grf import sample_matern_grf
from fieldpaint.data.io import write_dataset
from fieldpaint.errors import CheckpointError, FieldpaintError
from fieldpaint.runlog import MetricsLog, read_metrics
from fieldpaint.train import TrainingDiverged, prepare_run, train

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("seconds", "samples_per_s")


class Killed(BaseException):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 16x32 two-channel dataset, a 3-epoch config (4 steps per epoch, dropout on, so the RNG
    state matters) in a YAML file, and the uninterrupted run to compare with."""
    folder = tmp_path_factory.mktemp("faults")
    fields = sample_matern_grf(40, 2, 16, 32, length_scale=4.0, seed=3)
    fields[:, :, :3, :4] = np.nan
    write_dataset(folder / "tiny.nc", {"a": fields[:, 0], "b": fields[:, 1]},
                  np.array(["train"] * 32 + ["test"] * 8), {"generator": "test"})
    config = from_dict({
        "data": {"path": str(folder / "tiny.nc"), "variables": ["a", "b"], "height": 16, "width": 32},
        "model": {"channels": [8, 16], "norm_groups": 4, "attention_heads": 2, "dropout": 0.1},
        "diffusion": {"timesteps": 100},
        "train": {"epochs": 3, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 1, "ema_warmup_steps": 10,
                  "ema_decay": 0.9, "eval_train_samples": 16, "deterministic": True, "precision": "fp32"}})
    (folder / "config.yaml").write_text(dump_yaml(config))
    train(config, folder / "reference", progress=False)
    return folder, config


def finish(config_path: Path, run_dir: Path) -> dict:
    """What a user does after a kill: resume; if there is nothing to resume, start the run again."""
    try:
        plan = prepare_run(resume=run_dir)
    except FieldpaintError as err:
        assert "nothing to resume" in str(err)
        plan = prepare_run(config=str(config_path), run_dir=run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exact resume warns about nothing
        return train(plan.config, plan.run_dir, resume=plan.resume, init_from=plan.init_from, progress=False)


def assert_same_run(reference: Path, run: Path) -> None:
    for name in ("last", "best"):
        a, b = (load_checkpoint(d / "checkpoints" / f"{name}.safetensors") for d in (reference, run))
        assert (a.step, a.epoch, a.extra, a.optimizer_signature) == (b.step, b.epoch, b.extra, b.optimizer_signature)
        assert a.scheduler_state == b.scheduler_state and a.config == b.config
        for what in ("model_state", "ema_state"):
            x, y = getattr(a, what), getattr(b, what)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), (name, what)
        for i, entries in a.optimizer_state["state"].items():
            assert all(torch.equal(v, b.optimizer_state["state"][i][k]) for k, v in entries.items()), (name, i)
        assert torch.equal(a.rng["torch"], b.rng["torch"])
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(read_metrics(reference)) == strip(read_metrics(run))
    assert (reference / "metrics.csv").read_text().count("\n") == (run / "metrics.csv").read_text().count("\n")
    assert (reference / "config.yaml").read_text() == (run / "config.yaml").read_text()
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name], "temporaries left behind"


# ----------------------------------------------------------------------------------------------
# simulated kills


def _named(name):
    return lambda *args, **kw: Path(args[1] if len(args) > 1 else args[0]).name == name


def _saving(name):  # save_checkpoint(path, **state)
    return lambda path, **state: Path(path).name == name


def _always(*args, **kw):
    return True


def kill(monkeypatch, target: str, nth: int, when=_always, after: bool = False) -> None:
    """Make the nth matching call of `target` ("module.attr" or "module.Class.attr") raise Killed,
    before it runs (or just after, with after=True)."""
    owner_name, attr = target.rsplit(".", 1)
    if owner_name == "MetricsLog":
        owner = MetricsLog
    else:
        import importlib

        owner = importlib.import_module(owner_name)
    real, seen = getattr(owner, attr), [0]

    def wrapper(*args, **kw):
        if when(*args, **kw):
            seen[0] += 1
            if seen[0] == nth:
                if after:
                    real(*args, **kw)
                raise Killed(f"{target} #{nth}")
        return real(*args, **kw)

    monkeypatch.setattr(owner, attr, wrapper)


def torn_metrics_row(monkeypatch, nth: int) -> None:
    """The nth metrics row is cut in half on disk, as by a kill during the append."""
    real, seen = MetricsLog.log, [0]

    def log(self, row):
        seen[0] += 1
        if seen[0] == nth:
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps(row)[:25])
            raise Killed("torn metrics row")
        return real(self, row)

    monkeypatch.setattr(MetricsLog, "log", log)


STEP, EVAL, SAVE, LOG, REPLACE = ("fieldpaint.train.train_step", "fieldpaint.train.evaluate_loss",
                                  "fieldpaint.train.save_checkpoint", "MetricsLog.log", "os.replace")
# Each case: the kills of successive attempts (one attempt per kill, then a clean one).
CASES = {
    "writing config.yaml of the new run, before its link": [(REPLACE, 1, _named("config.yaml"))],
    "writing run.json, after config.yaml": [(REPLACE, 1, _named("run.json"))],
    "after the config, before the first step": [(STEP, 1)],
    "mid epoch 1": [(STEP, 3)],
    "in the first evaluation": [(EVAL, 1)],
    "after the first metrics row, before any checkpoint": [(LOG, 1, _always, True)],
    "inside the first save of best, before its rename": [(REPLACE, 1, _named("best.safetensors"))],
    "after the first best, before the first last": [(SAVE, 1, _saving("last.safetensors"))],
    "inside the first save of last, before its rename": [(REPLACE, 1, _named("last.safetensors"))],
    "mid epoch 2": [(STEP, 6)],
    "after the metrics row of epoch 2": [(LOG, 2, _always, True)],
    "inside the save of last, epoch 2": [(REPLACE, 2, _named("last.safetensors"))],
    "after best, before last, final epoch": [(SAVE, 3, _saving("last.safetensors"))],
    "inside the save of last, final epoch": [(REPLACE, 3, _named("last.safetensors"))],
    "in the final evaluation": [(EVAL, 5)],
    "torn metrics row, epoch 2": ["torn-2"],
    "mid epoch 2, then in the resume's metrics rewrite": [(STEP, 6), (REPLACE, 1, _named("metrics.jsonl"))],
    "mid epoch 2, then at the resume's first step": [(STEP, 6), (STEP, 1)],
    "mid epoch 2, then inside the resume's first save of last": [(STEP, 6), (REPLACE, 1, _named("last.safetensors"))],
    "before the first step, then again at the restart's first step": [(STEP, 1), (STEP, 1)],
    "inside best of epoch 1, then torn metrics row of epoch 3": [(REPLACE, 1, _named("best.safetensors")), "torn-3"],
}
KILLS = sum(len(v) for v in CASES.values())


@pytest.mark.parametrize("case", list(CASES))
def test_killed_run_resumes_bit_identical(setup, tmp_path, monkeypatch, case):
    folder, config = setup
    run = tmp_path / "run"
    killed = 0
    for attempt, point in enumerate(CASES[case]):
        with monkeypatch.context() as m:
            if isinstance(point, str):
                torn_metrics_row(m, int(point.split("-")[1]))
            else:
                kill(m, *point)
            with pytest.raises(Killed):
                if attempt == 0:
                    train(config, run, progress=False)
                else:
                    finish(folder / "config.yaml", run)
            killed += 1
    finish(folder / "config.yaml", run)
    assert killed == len(CASES[case])
    assert_same_run(folder / "reference", run)


def test_stale_temporaries_of_a_dead_writer_are_removed(setup, tmp_path):
    folder, config = setup
    train(config, tmp_path / "run", progress=False, stop_after_epoch=1)
    stale = tmp_path / "run" / "checkpoints" / ".last.safetensors.tmp-999999999-deadbeef"  # no such pid
    old = tmp_path / "run" / "checkpoints" / "last.safetensors.tmp-999999999"  # the older naming
    stale.write_bytes(b"x" * 1000)
    old.write_bytes(b"x" * 1000)
    finish(folder / "config.yaml", tmp_path / "run")
    assert not stale.exists() and not old.exists()
    assert_same_run(folder / "reference", tmp_path / "run")


CHILD = """
import os, signal, sys
import torch
torch.set_num_threads(1)
import fieldpaint.train as T
from fieldpaint.config import load_config

config, run_dir, point = load_config(sys.argv[1]), sys.argv[2], sys.argv[3]
real_replace, seen = os.replace, []

def replace(src, dst):
    if point == "last" and os.path.basename(dst) == "last.safetensors":
        seen.append(dst)
        if len(seen) == 2:  # epoch 2's last: the bytes are written, not yet renamed
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

os.replace = replace
if point == "first-step":
    T.train_step = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
T.train(config, run_dir, progress=False)
"""


@pytest.mark.parametrize("point", ["first-step", "last"])
def test_real_sigkill_resumes_bit_identical(setup, tmp_path, point):
    folder, _ = setup
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder / "config.yaml"), str(run), point],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    temporaries = [p for p in run.rglob("*") if ".tmp-" in p.name]
    assert bool(temporaries) == (point == "last")  # a full-size temporary of the killed write
    finish(folder / "config.yaml", run)
    assert_same_run(folder / "reference", run)


def test_kill_count():
    """`KILLS` simulated kills in CASES plus 2 real SIGKILLs; see the report."""
    assert KILLS >= 20


# ----------------------------------------------------------------------------------------------
# corrupt checkpoints


def _tensor_span(path: Path, key: str) -> tuple[int, int]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    begin, end = json.loads(data[8:8 + n])[key]["data_offsets"]
    return 8 + n + begin, 8 + n + end


@pytest.fixture
def last_copy(setup, tmp_path):
    folder, _ = setup
    path = tmp_path / "last.safetensors"
    path.write_bytes((folder / "reference" / "checkpoints" / "last.safetensors").read_bytes())
    key = "model." + next(iter(load_checkpoint(path).model_state))
    return path, key


def test_flipped_bit_in_a_weight_is_refused(last_copy):
    path, key = last_copy
    begin, end = _tensor_span(path, key)
    data = bytearray(path.read_bytes())
    data[(begin + end) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"last\.safetensors is corrupt: its tensor data"):
        load_checkpoint(path)


def test_nan_bytes_are_refused(last_copy):
    path, key = last_copy
    begin, end = _tensor_span(path, key)
    data = bytearray(path.read_bytes())
    data[begin:end] = np.full((end - begin) // 4, np.nan, dtype=np.float32).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_edited_metadata_is_refused(last_copy):
    path, _ = last_copy
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    document = json.loads(header["fieldpaint_checkpoint"])
    document["step"] += 1
    save_file(tensors, str(path), metadata={**header, "fieldpaint_checkpoint": json.dumps(document)})
    with pytest.raises(CheckpointError, match="its metadata does not match its checksum"):
        load_checkpoint(path)


def test_non_finite_weights_are_refused_even_with_a_valid_checksum(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):  # never written ...
        checkpoint_module.save_checkpoint(tmp_path / "a.safetensors", model=model, step=1, epoch=1, config={}, stats=None)
    assert not (tmp_path / "a.safetensors").exists()
    monkeypatch.setattr(checkpoint_module, "_check_finite", lambda *a: None)
    checkpoint_module.save_checkpoint(tmp_path / "a.safetensors", model=model, step=1, epoch=1, config={}, stats=None)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"a\.safetensors holds non-finite weights"):  # ... nor read
        load_checkpoint(tmp_path / "a.safetensors")


def test_resume_from_a_corrupt_last_changes_nothing(setup, tmp_path):
    folder, config = setup
    train(config, tmp_path / "run", progress=False, stop_after_epoch=1)
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    data = bytearray(last.read_bytes())
    data[-100] ^= 0x01
    last.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="last.safetensors") as err:
        plan = prepare_run(resume=tmp_path / "run")
        train(plan.config, plan.run_dir, resume=True, progress=False)
    assert "\n" not in str(err.value)
    assert before == {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------------------------
# a non-finite loss


def nan_after(monkeypatch, steps: int) -> None:
    """Training losses (not evaluation ones) become NaN after `steps` training calls."""
    import fieldpaint.train as T

    real, seen = T.diffusion_loss, [0]

    def loss(*args, **kw):
        value = real(*args, **kw)
        if torch.is_grad_enabled():
            seen[0] += 1
            if seen[0] > steps:
                return value * float("nan")
        return value

    monkeypatch.setattr(T, "diffusion_loss", loss)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(setup, tmp_path, monkeypatch):
    folder, config = setup
    run = tmp_path / "run"
    train(config, run, progress=False, stop_after_epoch=1)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    nan_after(monkeypatch, 2)  # epoch 2's third step
    with pytest.raises(TrainingDiverged, match=r"training loss is nan in epoch 2; .*last\.safetensors is kept") as err:
        train(config, run, progress=False, resume=True)
    assert "\n" not in str(err.value)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    changed = {p.name for p in after if after[p] != before.get(p)}
    assert changed <= {"metrics.csv", "metrics.jsonl"}  # the history, rewritten identically on resume
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    assert all(torch.isfinite(v).all() for v in load_checkpoint(run / "checkpoints" / "last.safetensors").model_state.values())
    monkeypatch.undo()
    finish(folder / "config.yaml", run)  # the kept checkpoint resumes into the reference run
    assert_same_run(folder / "reference", run)


def test_non_finite_loss_in_the_first_epoch_writes_no_checkpoint(setup, tmp_path, monkeypatch):
    _, config = setup
    nan_after(monkeypatch, 0)
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()

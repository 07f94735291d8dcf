"""The training loop: the notes' recipe, evaluation with EMA weights, exact and safe resume, DDP."""

import json
import math
import os
import socket
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from fieldpaint.checkpoint import load_checkpoint
from fieldpaint.cli import main
from fieldpaint.config import dump_yaml, from_dict, to_dict
from fieldpaint.data.grf import sample_matern_grf
from fieldpaint.data.io import write_dataset
from fieldpaint.runlog import read_metrics
from fieldpaint.train import evaluate_loss, load_training_data, train


def tiny_config(path, **train):
    """A 16x32 run of a few seconds. Pinned to fp32 (train.precision defaults to auto, bf16 on a
    CPU with AVX512-BF16): the golden numbers, the bitwise resume and the DDP comparisons below are
    fp32 facts; the bf16 and auto tests override it."""
    values = {
        "data": {"path": str(path), "variables": ["a", "b"], "height": 16, "width": 32},
        "model": {"channels": [8, 16], "norm_groups": 4, "attention_heads": 2, "dropout": 0.0},
        "diffusion": {"timesteps": 100},
        "train": {"epochs": 3, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 1, "ema_warmup_steps": 10, "ema_decay": 0.9,
                  "eval_train_samples": 16, "deterministic": True,
                  "precision": "fp32", **train},
    }
    return from_dict(values)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    fields = sample_matern_grf(40, 2, 16, 32, length_scale=4.0, seed=3)
    fields[:, :, :3, :4] = np.nan  # never-valid corner ("land")
    path = tmp_path_factory.mktemp("data") / "tiny.nc"
    split = np.array(["train"] * 32 + ["test"] * 8)
    write_dataset(path, {"a": fields[:, 0] * 2.0 + 1.0, "b": fields[:, 1]}, split, {"generator": "test"})
    return path


def final_weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.safetensors")


def test_tiny_run_learns_and_writes_its_folder(tiny_data, tmp_path):
    config = tiny_config(tiny_data, epochs=8)
    row = train(config, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    # Measured (torch 2.13 CPU, this seed): the test loss falls from 0.934 to 0.722 (x0.77) over 8 epochs,
    # also at the commit this test was written against; a model that does not learn stays near x1.
    assert row["test_loss"] < 0.85 * rows[0]["test_loss"]
    for name in ("config.yaml", "run.json", "metrics.csv", "checkpoints/last.safetensors", "checkpoints/best.safetensors"):
        assert (tmp_path / "run" / name).exists(), name
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["train_samples"] == 32 and info["params_per_sample"] == pytest.approx(info["trainable_parameters"] / 32)
    assert rows[-1]["ema_decay"] == pytest.approx(0.9)  # 32 steps > 10 warmup steps


def test_evaluation_scores_the_ema_weights(tiny_data, tmp_path):
    # No EMA warmup (the notes' Run 1): the EMA weights stay near their init, far from the raw ones.
    config = tiny_config(tiny_data, epochs=2, ema_warmup_steps=0, lr=5e-3)
    row = train(config, tmp_path / "run", progress=False)
    ckpt = final_weights(tmp_path / "run")
    from fieldpaint.diffusion.schedule import make_schedule
    from fieldpaint.models.registry import build_model

    _, test, _ = load_training_data(config)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
    model = build_model(config)
    model.load_state_dict(ckpt.ema_state)
    assert evaluate_loss(model, test, config, schedule, torch.device("cpu")) == pytest.approx(row["test_loss"], rel=1e-6)
    model.load_state_dict(ckpt.model_state)
    assert evaluate_loss(model, test, config, schedule, torch.device("cpu")) != pytest.approx(row["test_loss"], rel=1e-3)


@pytest.mark.parametrize("precision, channels_last", [("fp32", False), ("bf16", True)])
def test_resume_after_a_kill_ends_with_the_same_weights(tiny_data, tmp_path, precision, channels_last):
    # bf16 + channels_last is what train.precision auto runs on a CPU with AVX512-BF16; resuming it
    # needs the saved (contiguous) Adam moments put back in the channels_last parameters' layout.
    config = tiny_config(tiny_data, epochs=3, precision=precision, channels_last=channels_last)
    config = from_dict({**to_dict(config), "model": {**to_dict(config)["model"], "dropout": 0.1}})
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "killed", progress=False, stop_after_epoch=1)
    train(config, tmp_path / "killed", progress=False, resume=True)
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "killed")
    assert a.step == b.step and a.epoch == b.epoch == 3
    for key in a.model_state:
        assert torch.equal(a.model_state[key], b.model_state[key]), key
    for key in a.ema_state:
        assert torch.equal(a.ema_state[key], b.ema_state[key]), key
    assert [r["test_loss"] for r in read_metrics(tmp_path / "whole")] == \
        [r["test_loss"] for r in read_metrics(tmp_path / "killed")]


def test_resume_with_changed_optimizer_starts_it_fresh(tiny_data, tmp_path):
    # The notes' regression: Adam state loaded into AdamW damaged converged weights.
    old = tiny_config(tiny_data, epochs=1, optimizer="adam", weight_decay=0.0)
    train(old, tmp_path / "run", progress=False)
    new = tiny_config(tiny_data, epochs=2, optimizer="adamw", weight_decay=1e-4)
    with pytest.warns(UserWarning, match="optimizer: adam -> adamw"):
        train(new, tmp_path / "run", progress=False, resume=True)
    ckpt = final_weights(tmp_path / "run")
    steps = {int(s["step"]) for s in ckpt.optimizer_state["state"].values()}
    assert steps == {4}, "a fresh optimizer has taken only this epoch's 4 steps"


def test_resume_with_same_settings_restores_the_optimizer(tiny_data, tmp_path):
    config = tiny_config(tiny_data, epochs=2)
    train(config, tmp_path / "run", progress=False, stop_after_epoch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(config, tmp_path / "run", progress=False, resume=True)
    ckpt = final_weights(tmp_path / "run")
    assert {int(s["step"]) for s in ckpt.optimizer_state["state"].values()} == {8}


def test_reset_optimizer_forces_the_fresh_path(tiny_data, tmp_path):
    config = tiny_config(tiny_data, epochs=2)
    train(config, tmp_path / "run", progress=False, stop_after_epoch=1)
    train(config, tmp_path / "run", progress=False, resume=True, reset_optimizer=True)
    ckpt = final_weights(tmp_path / "run")
    assert {int(s["step"]) for s in ckpt.optimizer_state["state"].values()} == {4}


def test_init_from_loads_weights_and_starts_a_new_run(tiny_data, tmp_path):
    config = tiny_config(tiny_data, epochs=2)
    train(config, tmp_path / "first", progress=False)
    source = final_weights(tmp_path / "first")
    code = main(["train", "--config", str(tmp_path / "first" / "config.yaml"), "--set", "train.epochs=1",
                 "--set", "train.lr=1e-12", "--set", "train.warmup_epochs=0", "--run-dir", str(tmp_path / "second"),
                 "--init-from", str(tmp_path / "first"), "--no-progress"])
    assert code == 0
    second = final_weights(tmp_path / "second")
    assert second.epoch == 1 and second.step == 4
    for key, value in source.model_state.items():  # LR ~0: the weights are the source's
        assert torch.allclose(second.model_state[key], value, atol=1e-6), key


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_lost(tiny_data, tmp_path, capsys):
    config = tiny_config(tiny_data, epochs=1)
    train(config, tmp_path / "run", progress=False)
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    code = main(["train", "--resume", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "last.safetensors" in err and err.count("\n") == 1
    assert before == {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}


def test_new_run_refuses_an_existing_run_folder(tiny_data, tmp_path, capsys):
    config = tiny_config(tiny_data, epochs=1)
    train(config, tmp_path / "run", progress=False)
    code = main(["train", "--config", str(tmp_path / "run" / "config.yaml"), "--run-dir", str(tmp_path / "run")])
    assert code == 2 and "--resume" in capsys.readouterr().err


def test_conditional_training_never_observes_invalid_pixels(tiny_data, tmp_path):
    from fieldpaint.diffusion.conditioning import draw_training_masks

    config = tiny_config(tiny_data)
    train_data, _, _ = load_training_data(config)
    masks = draw_training_masks(train_data.valid, config.masks, seed=1)
    assert float((masks * (1 - train_data.valid)).sum()) == 0.0
    hidden = 1 - masks.sum(dim=(1, 2, 3)) / train_data.valid.sum(dim=(1, 2, 3))
    assert float(hidden.min()) >= 0.5 - 1e-2 and float(hidden.max()) <= 0.995 + 1e-2
    conditional = from_dict({**to_dict(config), "model": {**to_dict(config)["model"], "conditioning": "concat"},
                             "train": {**to_dict(config)["train"], "epochs": 1}})
    row = train(conditional, tmp_path / "cond", progress=False)
    assert math.isfinite(row["test_loss"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, config_dict, run_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(from_dict(config_dict), run_dir, progress=False)


def test_ddp_two_processes_match_one_process(tiny_data, tmp_path):
    config = tiny_config(tiny_data, epochs=2)
    train(config, tmp_path / "single", progress=False)
    mp.spawn(_ddp_worker, args=(2, _free_port(), to_dict(config), tmp_path / "ddp"), nprocs=2, join=True)
    single, ddp = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "ddp")
    for a, b in zip(single, ddp):
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
        assert b["epoch_loss"] == pytest.approx(a["epoch_loss"], rel=1e-3)


def _curves(run_dir):
    return np.array([[r["epoch_loss"], r["test_loss"]] for r in read_metrics(run_dir)])


# Measured on the 2-core CPU machine (torch 2.x), 4 epochs of this tiny run, seeds 0 and 3-6: the
# largest relative difference between the bf16 (autocast + channels_last) and fp32 curves of epoch
# and test loss was 1.5e-4 to 5.5e-4 (2.0e-4 at seed 0); fp32 + channels_last alone differs by
# <= 2.2e-7; fp16 autocast in place of bf16 differs by 2.6e-3 to 4.5e-3; another seed by 4e-2.
# So the bf16 curves must lie within 1e-3 of fp32 (5x the seed-0 difference) and differ by more
# than 1e-5 (autocast really ran: 45x above channels_last's rounding). With the fused channels_last
# GroupNorm-SiLU of fieldpaint.models.layers (its elementwise work in bf16), seed 0 differs by
# 2.8e-4 and fp32 + channels_last by 1.6e-7 (torch 2.13 CPU).
BF16_REL_TOL, BF16_MIN_REL = 1e-3, 1e-5


def test_bf16_autocast_and_channels_last_follow_the_fp32_curves(tiny_data, tmp_path):
    fp32 = tiny_config(tiny_data, epochs=4)
    bf16 = tiny_config(tiny_data, epochs=4, precision="bf16", channels_last=True)
    train(fp32, tmp_path / "fp32", progress=False)
    train(bf16, tmp_path / "bf16", progress=False)
    a, b = _curves(tmp_path / "fp32"), _curves(tmp_path / "bf16")
    rel = float(np.abs(b / a - 1).max())
    assert BF16_MIN_REL < rel < BF16_REL_TOL, rel
    ckpt = final_weights(tmp_path / "bf16")
    assert all(v.dtype == torch.float32 for v in ckpt.model_state.values() if v.is_floating_point())

    # train.precision auto: bf16 + channels_last where the hardware does bf16 natively, fp32
    # elsewhere; the same curves as the explicit settings, and run.json says which was used.
    import fieldpaint.runtime as R

    for native, twin in ((True, "bf16"), (False, "fp32")):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(R, "bf16_native", lambda device, native=native: (native, f"native bf16: {native}"))
            train(tiny_config(tiny_data, epochs=4, precision="auto", channels_last="auto"), tmp_path / f"auto_{native}",
                  progress=False)
        info = json.loads((tmp_path / f"auto_{native}" / "run.json").read_text())
        assert (info["precision"], info["channels_last"]) == (twin, native), info
        assert info["precision_reason"] == f"train.precision auto: native bf16: {native}"
        assert np.array_equal(_curves(tmp_path / f"auto_{native}"), _curves(tmp_path / twin))


def test_precision_auto_follows_the_hardware(monkeypatch):
    import fieldpaint.runtime as R
    from fieldpaint.config import TrainConfig

    assert TrainConfig().precision == "auto" and TrainConfig().channels_last == "auto"  # the defaults
    cpu = torch.device("cpu")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert R.resolve_precision("auto", "auto", cpu).name == ("bf16" if native else "fp32")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    p = R.resolve_precision("auto", "auto", cpu)
    assert (p.name, p.channels_last, p.autocast_dtype) == ("fp32", False, None)
    assert "neither AVX512-BF16 nor AMX" in p.describe()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    p = R.resolve_precision("auto", "auto", cpu)
    assert (p.name, p.channels_last, p.autocast_dtype) == ("bf16", True, torch.bfloat16)
    assert R.resolve_precision("auto", False, cpu).channels_last is False  # an explicit layout wins
    assert R.resolve_precision("fp32", "auto", cpu).name == "fp32"  # explicit precisions are taken as given
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert R.resolve_precision("bf16", "auto", cpu) == R.Precision("bf16", True, "train.precision bf16")


def test_replan_after_the_first_epoch_finishes_the_new_plan_and_resumes_exactly(tiny_data, tmp_path):
    """train(replan=): a run planned for 2 epochs and re-planned to 4 after its first follows the
    4-epoch schedule from there (closed form of the cosine LR), records the new plan in config.yaml
    and its checkpoints, and a kill after the re-plan resumes bit for bit. replan is asked after
    every epoch, with the epochs done and their summed wall seconds; the resumed run is not."""
    from fieldpaint.config import load_config
    from fieldpaint.train import prepare_run

    planned, target = tiny_config(tiny_data, epochs=2, ema_decay=0.9), tiny_config(tiny_data, epochs=4, ema_decay=0.95)
    seen = []

    def replan(epochs_done, seconds):
        seen.append((epochs_done, seconds))
        return target

    train(planned, tmp_path / "whole", progress=False, replan=replan)
    rows = read_metrics(tmp_path / "whole")
    assert [done for done, _ in seen] == [1, 2, 3, 4]
    for (done, seconds), before in zip(seen, [0.0] + [s for _, s in seen]):
        # the run's epochs so far, each its steps and its evaluation (the metrics' seconds are the steps)
        assert seconds - before >= rows[done - 1]["seconds"] > 0
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    # 4 steps per epoch (32 fields, batch 8), warmup 4 steps, then cosine over 12 to 0 at step 16;
    # the 2-epoch plan would have reached 0 at step 8.
    lr = 3e-3
    assert rows[1]["lr"] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 4 / 12)))
    assert rows[3]["lr"] == pytest.approx(0.0, abs=1e-12)
    # the EMA's decay ramp (ema_warmup_steps 10) too: the old plan's 0.9 for step 3, the new 0.95 after
    assert [r["ema_decay"] for r in rows] == pytest.approx([0.9 * 3 / 10, 0.95 * 7 / 10, 0.95, 0.95])
    assert load_config(str(tmp_path / "whole" / "config.yaml")).train.epochs == 4
    assert final_weights(tmp_path / "whole").config["train"]["epochs"] == 4

    seen.clear()
    train(planned, tmp_path / "killed", progress=False, replan=replan, stop_after_epoch=2)
    resumed = prepare_run(resume=tmp_path / "killed").config
    assert resumed.train.epochs == 4 and resumed.train.ema_decay == 0.95
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exact resume: no fresh-optimizer warning
        train(resumed, tmp_path / "killed", progress=False, resume=True, replan=replan)
    assert [done for done, _ in seen] == [1, 2]  # the resumed epochs were not re-planned
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "killed")
    assert a.step == b.step == 16
    for key in a.model_state:
        assert torch.equal(a.model_state[key], b.model_state[key]), key


def test_a_replan_that_shortens_the_run_ends_it_there(tiny_data, tmp_path):
    """A re-plan to the epochs already done ends the run after them, the shorter plan recorded in
    the last checkpoint's config."""
    planned, short = tiny_config(tiny_data, epochs=4), tiny_config(tiny_data, epochs=2)
    train(planned, tmp_path / "run", progress=False,
          replan=lambda epochs_done, seconds: planned if epochs_done < 2 else short)
    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert final_weights(tmp_path / "run").config["train"]["epochs"] == 2


def test_replan_refuses_a_change_beyond_the_epochs(tiny_data, tmp_path):
    planned = tiny_config(tiny_data, epochs=2)
    other = from_dict({**to_dict(planned), "train": {**to_dict(planned)["train"], "lr": 1e-3}})
    with pytest.raises(ValueError, match="replan may change only train.epochs"):
        train(planned, tmp_path / "run", progress=False, replan=lambda epochs_done, seconds: other)


def test_time_train_steps_times_real_steps(tiny_data, monkeypatch):
    import fieldpaint.steptimes as S

    calls = []
    real = S.train_step
    monkeypatch.setattr(S, "train_step", lambda *a, **k: calls.append(k["step"]) or real(*a, **k))
    seconds = S.time_train_steps(tiny_config(tiny_data), torch.device("cpu"), repeats=2)
    assert seconds > 0 and calls == [0, 1, 2]  # one warm-up + 2 timed steps, each a real train_step


@pytest.mark.parametrize("compiled", [False, True])
def test_time_train_steps_runs_the_net_train_compile_makes(tiny_data, monkeypatch, compiled):
    """benchmarks/compile_step.py times train.compile through this: the steps must run the
    compiled net (a recording stand-in for torch.compile here: compiling takes minutes on CPU)."""
    import fieldpaint.steptimes as S

    class Compiled(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model  # what torch.compile's wrapper holds, and unwrap_model reads

        def forward(self, *args, **kwargs):
            return self._orig_mod(*args, **kwargs)

    nets = []
    real = S.train_step
    monkeypatch.setattr(S.torch, "compile", Compiled)
    monkeypatch.setattr(S, "train_step", lambda net, *a, **k: nets.append(type(net)) or real(net, *a, **k))
    config = tiny_config(tiny_data)
    config = from_dict({**to_dict(config), "train": {**to_dict(config)["train"], "compile": compiled}})
    S.train_step_times(config, torch.device("cpu"), 1)
    assert nets and all((net is Compiled) == compiled for net in nets)


def test_prepare_run_decides_new_resume_and_restart(tiny_data, tmp_path):
    from fieldpaint.errors import FieldpaintError
    from fieldpaint.train import prepare_run

    config = tiny_config(tiny_data, epochs=1)
    (tmp_path / "c.yaml").write_text(dump_yaml(config))
    plan = prepare_run(config=str(tmp_path / "c.yaml"), run_dir=tmp_path / "run")
    assert not plan.resume and not (tmp_path / "run").exists()  # deciding writes nothing
    with pytest.raises(FieldpaintError, match="nothing to resume"):
        prepare_run(resume=tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(dump_yaml(config))  # killed before its first checkpoint
    assert prepare_run(resume=tmp_path / "run").resume  # resumes (from scratch) ...
    assert not prepare_run(config=str(tmp_path / "c.yaml"), run_dir=tmp_path / "run").resume  # ... or restarts
    plan = prepare_run(resume=tmp_path / "run", overrides=["train.epochs=2"])
    train(plan.config, plan.run_dir, resume=True, progress=False)
    assert final_weights(tmp_path / "run").epoch == 2
    with pytest.raises(FieldpaintError, match="already holds a run"):
        prepare_run(config=str(tmp_path / "c.yaml"), run_dir=tmp_path / "run")
    with pytest.raises(FieldpaintError, match="only one"):
        prepare_run(resume=tmp_path / "run", init_from=tmp_path / "run")


def _files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_failed_starts_leave_no_trace(tiny_data, tmp_path, monkeypatch):
    """Bad input fails before the run folder is created or touched, so a corrected rerun works."""
    from fieldpaint.errors import CheckpointError, ConfigError
    from fieldpaint.train import prepare_run

    config = tiny_config(tiny_data, epochs=1)
    train(config, tmp_path / "first", progress=False)
    other = from_dict({**to_dict(config), "model": {**to_dict(config)["model"], "channels": [8, 24]}})
    with pytest.raises(CheckpointError, match="does not fit"):  # --init-from another architecture
        train(other, tmp_path / "second", init_from=tmp_path / "first", progress=False)
    assert not (tmp_path / "second").exists()

    def bad_optimizer(model, cfg):  # torch's own check, e.g. of a learning rate config validation missed
        raise ValueError("Invalid learning rate: -1.0")

    with monkeypatch.context() as m:
        m.setattr("fieldpaint.train.build_optimizer", bad_optimizer)
        with pytest.raises(ConfigError, match="optimizer"):
            train(config, tmp_path / "third", progress=False)
    assert not (tmp_path / "third").exists()

    before = _files(tmp_path / "first")  # --resume --set model.channels=...: refused, nothing rewritten
    plan = prepare_run(resume=tmp_path / "first", overrides=["model.channels=[8, 24]", "train.epochs=2"])
    with pytest.raises(CheckpointError, match="does not fit"):
        train(plan.config, plan.run_dir, resume=True, progress=False)
    assert _files(tmp_path / "first") == before
    train(config, tmp_path / "second", init_from=tmp_path / "first", progress=False)  # the corrected rerun


def test_resume_drops_a_torn_metrics_line(tiny_data, tmp_path):
    config = tiny_config(tiny_data, epochs=2)
    train(config, tmp_path / "run", progress=False, stop_after_epoch=1)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "step": 8, "epoch_l')  # a kill during the append of epoch 2
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1]
    train(config, tmp_path / "run", progress=False, resume=True)
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 3


def test_min_snr_weights_follow_the_paper():
    # Hang et al. (2023), eq. 8: the x0-space loss is weighted by min(SNR, gamma), SNR = ᾱ/(1-ᾱ),
    # gamma = 5. Checked two ways: hand values, and the identity w · ||target - pred||² =
    # min(SNR, 5) · ||x0 - x̂0||² for an arbitrary prediction of either target.
    from fieldpaint.diffusion.loss import diffusion_loss, min_snr_weights
    from fieldpaint.diffusion.schedule import make_schedule, x0_from_eps, x0_from_v

    ac = torch.tensor([0.5, 20 / 21, 1 / 101])  # SNR 1, 20, 0.01
    assert torch.allclose(min_snr_weights(ac, "eps"), torch.tensor([1.0, 5 / 20, 1.0]))
    assert torch.allclose(min_snr_weights(ac, "v"), torch.tensor([0.5, 5 / 21, 0.01 / 1.01]))
    schedule = make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    x0, eps, pred = (torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ac_t = schedule.alphas_cumprod[t].double()
    snr = ac_t / (1 - ac_t)
    a, b = ac_t.sqrt()[:, None, None, None], (1 - ac_t).sqrt()[:, None, None, None]
    xt = a * x0 + b * eps
    for prediction, target, x0_hat in (("eps", eps, x0_from_eps(xt, t, pred, schedule.alphas_cumprod.double())),
                                       ("v", a * eps - b * x0, x0_from_v(xt, t, pred, schedule.alphas_cumprod.double()))):
        weighted = min_snr_weights(schedule.alphas_cumprod[t], prediction).double() * ((target - pred) ** 2).sum((1, 2, 3))
        in_x0 = torch.clamp(snr, max=5.0) * ((x0 - x0_hat) ** 2).sum((1, 2, 3))
        assert torch.allclose(weighted, in_x0, rtol=1e-5), prediction
    # 'none' is the unweighted loss itself; 'min_snr' changes it
    model = lambda x, t, cond: torch.zeros_like(x)
    x0f, valid = x0.float(), torch.ones(6, 1, 4, 4)
    plain = diffusion_loss(model, x0f, valid, schedule, "v", t=t, noise=eps.float())
    assert torch.equal(plain, diffusion_loss(model, x0f, valid, schedule, "v", t=t, noise=eps.float(), weighting="none"))
    assert not torch.allclose(plain, diffusion_loss(model, x0f, valid, schedule, "v", t=t, noise=eps.float(),
                                                    weighting="min_snr"))


def test_make_batch_draws_the_terminal_share(tiny_data):
    # diffusion.terminal_fraction reaches the batches: the share of t = T-1 over many steps is
    # f + (1-f)/T, and f = 0 keeps the uniform stream (the same t as before the option existed).
    from fieldpaint.runtime import Runtime
    from fieldpaint.train import make_batch

    def timesteps(fraction):
        config = from_dict({**to_dict(tiny_config(tiny_data)), "diffusion": {"timesteps": 100, "terminal_fraction": fraction}})
        data = load_training_data(config)[0]
        return torch.cat([make_batch(data, torch.arange(8), config, 0, step, Runtime(torch.device("cpu")))["t"]
                          for step in range(400)])

    uniform = timesteps(0.0)
    expected = torch.cat([torch.randint(0, 100, (8,), generator=torch.Generator().manual_seed(step)) for step in range(400)])
    assert torch.equal(uniform, expected)  # step_generator(0, step) is seeded with step
    p = 0.5 + 0.5 / 100
    share = (timesteps(0.5) == 99).double().mean().item()
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / 3200)  # 5 binomial standard errors

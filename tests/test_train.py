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
from fieldpaint.config import from_dict, to_dict
from fieldpaint.data.grf import sample_matern_grf
from fieldpaint.data.io import write_dataset
from fieldpaint.runlog import read_metrics
from fieldpaint.train import evaluate_loss, load_training_data, train


def tiny_config(path, **train):
    values = {
        "data": {"path": str(path), "variables": ["a", "b"], "height": 16, "width": 32},
        "model": {"channels": [8, 16], "norm_groups": 4, "attention_heads": 2, "dropout": 0.0},
        "diffusion": {"timesteps": 100},
        "train": {"epochs": 3, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 1, "ema_warmup_steps": 10, "ema_decay": 0.9,
                  "eval_train_samples": 16, "deterministic": True, **train},
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
    assert row["test_loss"] < 0.7 * rows[0]["test_loss"]
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


def test_resume_after_a_kill_ends_with_the_same_weights(tiny_data, tmp_path):
    config = tiny_config(tiny_data, epochs=3)
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


def test_bf16_autocast_and_channels_last_train(tiny_data, tmp_path):
    config = tiny_config(tiny_data, epochs=2, precision="bf16", channels_last=True, deterministic=False)
    row = train(config, tmp_path / "run", progress=False)
    assert math.isfinite(row["test_loss"]) and row["test_loss"] < 1.5
    ckpt = final_weights(tmp_path / "run")
    assert all(v.dtype == torch.float32 for v in ckpt.model_state.values() if v.is_floating_point())

"""Checkpoints: exact resume, safe loading, atomic writes, clear errors."""

import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from fieldpaint.checkpoint import (capture_rng_state, check_compatible, load_checkpoint, resolve_checkpoint,
                                   restore_rng_state, save_checkpoint)
from fieldpaint.config import TrainConfig
from fieldpaint.ema import EMA
from fieldpaint.errors import CheckpointError
from fieldpaint.optim import build_optimizer, build_scheduler, optimizer_signature, resume_optimizer


def small_model(width: int = 8) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, width, 3, padding=1), nn.GroupNorm(4, width), nn.SiLU(),
                         nn.Conv2d(width, 2, 1))


def batches(n: int):
    g = torch.Generator().manual_seed(11)
    return [(torch.randn(4, 2, 6, 6, generator=g), torch.randn(4, 2, 6, 6, generator=g)) for _ in range(n)]


def train_step(model, opt, sched, batch):
    x, y = batch
    (model(x) - y).square().mean().backward()
    opt.step()
    opt.zero_grad()
    sched.step()


def save_simple(path, model=None, step=1, **kw):
    return save_checkpoint(path, model=model or small_model(), step=step, epoch=0, config={"name": "t"},
                           stats=None, **kw)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_resume_is_bitwise_identical(tmp_path, optimizer):
    cfg = TrainConfig(optimizer=optimizer, epochs=2, lr=1e-2, warmup_epochs=0.5)
    data = batches(5)
    model = small_model()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 5)
    ema = EMA(model, 0.99, 2)
    for i in range(4):
        train_step(model, opt, sched, data[i])
        ema.update(model, i)
    path = save_checkpoint(tmp_path / "last.safetensors", model=model, ema=ema, optimizer=opt, scheduler=sched,
                           step=4, epoch=0, config={"train": {"optimizer": optimizer}}, stats={"mean": [0.5]},
                           optimizer_signature=optimizer_signature(cfg, 5))
    lr_before = [g["lr"] for g in opt.param_groups]
    train_step(model, opt, sched, data[4])  # the uninterrupted run

    ckpt = load_checkpoint(path)
    fresh = small_model(width=8)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(ckpt.model_state)
    fresh_opt = build_optimizer(fresh, cfg)
    fresh_sched = build_scheduler(fresh_opt, cfg, 5)
    assert resume_optimizer(fresh_opt, fresh_sched, saved_signature=ckpt.optimizer_signature,
                            signature=optimizer_signature(cfg, 5), optimizer_state=ckpt.optimizer_state,
                            scheduler_state=ckpt.scheduler_state) == []
    assert fresh_sched.last_epoch == 4
    assert [g["lr"] for g in fresh_opt.param_groups] == lr_before
    train_step(fresh, fresh_opt, fresh_sched, data[4])
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert fresh_sched.state_dict() == sched.state_dict()
    assert ckpt.step == 4 and ckpt.epoch == 0 and ckpt.stats == {"mean": [0.5]}
    assert ckpt.optimizer_signature == optimizer_signature(cfg, 5)
    restored = EMA(small_model(), 0.99, 2)
    restored.load_state_dict(ckpt.ema_state)
    for k, v in ema.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v)


def test_optimizer_state_matches_torch_format(tmp_path):
    cfg = TrainConfig(epochs=1)
    model = small_model()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 4)
    train_step(model, opt, sched, batches(1)[0])
    ckpt = load_checkpoint(save_simple(tmp_path / "c.safetensors", model, optimizer=opt, scheduler=sched))
    want, got = opt.state_dict(), ckpt.optimizer_state
    assert got["param_groups"] == want["param_groups"]  # betas come back as a tuple
    assert set(got["state"]) == set(want["state"])
    for i, entries in want["state"].items():
        assert set(got["state"][i]) == set(entries)
        for name, value in entries.items():
            assert torch.equal(got["state"][i][name], value) and got["state"][i][name].dtype == value.dtype


def test_rng_round_trip(tmp_path):
    def draws():
        return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    draws()
    state = capture_rng_state()
    first = draws()
    restore_rng_state(state)
    assert draws() == first

    path = save_simple(tmp_path / "r.safetensors")
    after_save = draws()
    draws()
    restore_rng_state(load_checkpoint(path).rng)
    assert draws() == after_save


def test_file_is_safetensors_plus_json(tmp_path):
    model = small_model()
    ema = EMA(model, 0.9, 0)
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, ema=ema, step=7, epoch=2,
                           config={"model": {"channels": [8]}}, stats={"std": np.array([1.5, 2.0])},
                           metrics={"test_loss": 0.01}, extra={"note": "x"})
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["fieldpaint_checkpoint"])
        keys = set(f.keys())
    assert meta["step"] == 7 and meta["epoch"] == 2 and meta["format_version"] == 2
    assert meta["config"] == {"model": {"channels": [8]}} and meta["stats"] == {"std": [1.5, 2.0]}
    assert {k.split(".")[0] for k in keys} == {"model", "ema", "rng"}
    assert {f"model.{k}" for k in model.state_dict()} <= keys
    ckpt = load_checkpoint(path)
    assert ckpt.metrics == {"test_loss": 0.01} and ckpt.extra == {"note": "x"}
    assert ckpt.optimizer_state is None and ckpt.scheduler_state is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's import of torch.jit
def test_wrappers_are_unwrapped(tmp_path):
    model = small_model()
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    ckpt = load_checkpoint(save_simple(tmp_path / "a.safetensors", compiled))
    assert set(ckpt.model_state) == set(model.state_dict())

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(small_model())
        ema = EMA(ddp, 0.9, 0)
        ckpt = load_checkpoint(save_simple(tmp_path / "b.safetensors", ddp, ema=ema))
    finally:
        torch.distributed.destroy_process_group()
    assert set(ckpt.model_state) == set(model.state_dict()) == set(ckpt.ema_state)


def test_missing_truncated_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.safetensors")
    good = save_simple(tmp_path / "good.safetensors").read_bytes()
    cases = {
        "half.safetensors": good[: len(good) // 2],
        "short.safetensors": good[:-10],
        "garbage.safetensors": np.random.RandomState(0).bytes(4096),
        "empty.safetensors": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(tmp_path / name)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a fieldpaint checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")


def test_interrupted_write_keeps_previous_last(tmp_path, monkeypatch):
    last = tmp_path / "checkpoints" / "last.safetensors"
    save_simple(last, step=1)

    def crash(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk vanished"):
        save_simple(last, step=2)
    monkeypatch.undo()
    assert load_checkpoint(last).step == 1
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.safetensors"]  # no temp file left
    save_simple(last, step=3)
    assert load_checkpoint(last).step == 3


def test_resolve_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        resolve_checkpoint(run)
    run.mkdir()
    with pytest.raises(CheckpointError, match="last.safetensors"):
        resolve_checkpoint(run)
    last = save_simple(run / "checkpoints" / "last.safetensors")
    best = save_simple(run / "checkpoints" / "best.safetensors")
    assert resolve_checkpoint(run) == last
    assert resolve_checkpoint(run, best=True) == best
    assert resolve_checkpoint(run / "checkpoints") == last
    assert resolve_checkpoint(best) == best


def test_incompatible_architecture(tmp_path):
    ckpt = load_checkpoint(save_simple(tmp_path / "c.safetensors", small_model(8), ema=EMA(small_model(8), 0.9, 0)))
    check_compatible(ckpt, small_model(8))
    with pytest.raises(CheckpointError, match=r"'0.weight' has shape \(8, 2, 3, 3\) in the checkpoint "
                                              r"but \(16, 2, 3, 3\)"):
        check_compatible(ckpt, small_model(16))
    deeper = nn.Sequential(*small_model(8), nn.Conv2d(2, 2, 1))
    with pytest.raises(CheckpointError, match="'4.weight'"):
        check_compatible(ckpt, deeper)
    shallower = nn.Sequential(*list(small_model(8))[:2])
    with pytest.raises(CheckpointError, match=r"hold '3\.bias'"):
        check_compatible(ckpt, shallower)

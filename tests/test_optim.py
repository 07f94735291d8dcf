"""Optimizer construction, the LR schedule (closed form) and the resume guard of the notes."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from fieldpaint.config import TrainConfig
from fieldpaint.optim import (build_optimizer, build_scheduler, lr_at_step, optimizer_signature,
                              resume_optimizer, signature_changes)

BASE, MIN, W, TOTAL = 1e-3, 1e-5, 100, 1100


def lr(step, schedule="cosine", warmup=W):
    return lr_at_step(step, base_lr=BASE, min_lr=MIN, warmup_steps=warmup, total_steps=TOTAL, schedule=schedule)


def small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(), nn.Conv2d(8, 2, 1))


def test_warmup_values():
    # Convention: step 0 is the first update and gets base/W; step W-1 reaches base.
    assert lr(0) == pytest.approx(BASE / W)
    assert lr(49) == pytest.approx(BASE * 50 / W)
    assert lr(W - 1) == pytest.approx(BASE)


def test_cosine_values():
    assert lr(W) == pytest.approx(BASE)
    # p = (step - W) / (TOTAL - W); lr = min + (base - min) (1 + cos πp) / 2
    assert lr(W + 500) == pytest.approx(MIN + (BASE - MIN) / 2)
    assert lr(W + 250) == pytest.approx(MIN + (BASE - MIN) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr(TOTAL) == pytest.approx(MIN)
    assert lr(TOTAL + 50) == pytest.approx(MIN)
    values = [lr(s) for s in range(W, TOTAL + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_constant_schedule():
    assert lr(0, "constant") == pytest.approx(BASE / W)
    assert lr(W, "constant") == BASE and lr(TOTAL + 7, "constant") == BASE
    assert lr(0, "constant", warmup=0) == BASE
    assert lr(0, "cosine", warmup=0) == pytest.approx(BASE)
    with pytest.raises(ValueError, match="step"):
        lr(W, "step")


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_scheduler_agrees_with_lr_at_step(schedule):
    cfg = TrainConfig(epochs=6, lr=2e-3, min_lr=1e-4, warmup_epochs=2.0, lr_schedule=schedule)
    spe = 7
    model = small_model()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, spe)
    for step in range(cfg.epochs * spe + 3):
        expected = lr_at_step(step, base_lr=2e-3, min_lr=1e-4, warmup_steps=14, total_steps=42, schedule=schedule)
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(expected, rel=1e-12)
        opt.step()
        sched.step()


def test_scheduler_epochs_override():
    """A schedule restarted on resume covers only the remaining epochs, warmup included."""
    cfg = TrainConfig(epochs=10, lr=1.0, min_lr=0.0, warmup_epochs=1.0)
    opt = build_optimizer(small_model(), cfg)
    sched = build_scheduler(opt, cfg, 4, epochs=3)  # warmup 4 steps, total 12
    seen = []
    for _ in range(13):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert seen[8] == pytest.approx(0.5) and seen[12] == pytest.approx(0.0, abs=1e-15)
    assert optimizer_signature(cfg, 4, epochs=3)["total_steps"] == 12


def test_adamw_groups_and_decoupled_decay():
    cfg = TrainConfig(lr=0.1, weight_decay=0.01)
    model = small_model()
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert id(model[1].weight) in {id(p) for p in no_decay["params"]}  # GroupNorm gain
    assert decay["betas"] == (0.9, 0.999)
    # Zero gradient: AdamW's step is pure decay, p ← p (1 - lr·wd) (Loshchilov & Hutter 2019);
    # the undecayed bias does not move.
    before_w, before_b = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model[0].weight, before_w * (1 - 0.1 * 0.01))
    assert torch.equal(model[0].bias, before_b)


def test_adam_weight_decay_is_l2():
    cfg = TrainConfig(optimizer="adam", lr=0.1, weight_decay=0.5, betas=(0.8, 0.99))
    model = small_model()
    opt = build_optimizer(model.parameters(), cfg)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["betas"] == (0.8, 0.99)
    # L2 enters the gradient: with zero loss gradient g = wd·p, and Adam's bias-corrected first
    # step (Kingma & Ba 2015, Alg. 1) is -lr·g / (|g| + eps).
    w = model[0].weight.detach().clone().double()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    g = 0.5 * w
    torch.testing.assert_close(model[0].weight.double(), w - 0.1 * g / (g.abs() + 1e-8), atol=1e-7, rtol=0)


SETTINGS = {
    "optimizer": ("adam", "optimizer: adamw -> adam"),
    "betas": ((0.9, 0.99), "betas: [0.9, 0.999] -> [0.9, 0.99]"),
    "weight_decay": (0.0, "weight_decay: 0.0001 -> 0.0"),
    "lr": (3e-4, "lr: 0.001 -> 0.0003"),
    "min_lr": (1e-6, "min_lr: 0.0 -> 1e-06"),
    "lr_schedule": ("constant", "lr_schedule: cosine -> constant"),
    "warmup_epochs": (5.0, "warmup_steps: 1430 -> 715"),
    "epochs": (60, "total_steps: 7150 -> 8580"),
}


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_signature_change_detected(key):
    value, message = SETTINGS[key]
    base = TrainConfig()
    changed = dataclasses.replace(base, **{key: value})
    assert signature_changes(optimizer_signature(base, 143), optimizer_signature(changed, 143)) == [message]


def test_signature_unchanged_and_json_round_trip():
    cfg = TrainConfig()
    sig = optimizer_signature(cfg, 143)
    assert signature_changes(sig, optimizer_signature(cfg, 143)) == []
    assert signature_changes(json.loads(json.dumps(sig)), sig) == []
    # Batch size changes steps per epoch, hence the schedule's length in steps.
    assert signature_changes(sig, optimizer_signature(cfg, 100)) == ["warmup_steps: 1430 -> 1000",
                                                                     "total_steps: 7150 -> 5000"]
    assert signature_changes({"lr": 1.0}, {"lr": 1.0, "new": 2}) == ["new: <missing> -> 2"]


def _trained(cfg: TrainConfig, spe: int):
    model = small_model()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, spe)
    for _ in range(3):
        model(torch.randn(2, 2, 6, 6)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return model, opt, sched


def test_resume_from_adam_to_adamw_starts_fresh():
    """The notes' regression: Adam (wd 0, constant LR) resumed as AdamW (wd 1e-4, cosine)."""
    old = TrainConfig(optimizer="adam", lr=3e-4, weight_decay=0.0, lr_schedule="constant", warmup_epochs=0)
    new = TrainConfig(optimizer="adamw", lr=3e-4, weight_decay=1e-4, lr_schedule="cosine", warmup_epochs=0)
    _, old_opt, old_sched = _trained(old, 10)
    model = small_model()
    opt = build_optimizer(model, new)
    sched = build_scheduler(opt, new, 10)
    with pytest.warns(UserWarning, match="optimizer: adam -> adamw"):
        changes = resume_optimizer(opt, sched, saved_signature=optimizer_signature(old, 10),
                                   signature=optimizer_signature(new, 10), optimizer_state=old_opt.state_dict(),
                                   scheduler_state=old_sched.state_dict())
    assert "optimizer: adam -> adamw" in changes and "weight_decay: 0.0 -> 0.0001" in changes
    assert "lr_schedule: constant -> cosine" in changes
    assert len(opt.state) == 0 and sched.last_epoch == 0  # nothing loaded


def test_resume_with_same_settings_loads_state():
    cfg = TrainConfig(epochs=2)
    _, old_opt, old_sched = _trained(cfg, 10)
    model = small_model()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 10)
    sig = optimizer_signature(cfg, 10)
    assert resume_optimizer(opt, sched, saved_signature=sig, signature=sig, optimizer_state=old_opt.state_dict(),
                            scheduler_state=old_sched.state_dict()) == []
    assert sched.last_epoch == 3 and opt.param_groups[0]["lr"] == old_opt.param_groups[0]["lr"]
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], old_opt.state_dict()["state"][0]["exp_avg"])
    with pytest.warns(UserWarning, match="signature: missing"):
        assert resume_optimizer(opt, sched, saved_signature=None, signature=sig,
                                optimizer_state=old_opt.state_dict(), scheduler_state=None)


def test_fused_kernel_on_cpu_and_kept_across_a_resume():
    # torch's fused AdamW (one pass per parameter) where it exists; loading a state dict saved by
    # the per-tensor loop (fused None, as checkpoints before it hold) keeps the fused kernel.
    from fieldpaint.optim import load_optimizer_state, param_groups

    model = nn.Linear(4, 3)
    cfg = TrainConfig()
    opt = build_optimizer(model, cfg)
    assert all(g["fused"] for g in opt.param_groups)
    old = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)  # the per-tensor loop
    model(torch.randn(2, 4)).sum().backward()
    old.step()
    load_optimizer_state(opt, old.state_dict())
    assert all(g["fused"] for g in opt.param_groups)
    opt.step()  # the fused kernel accepts the loaded step counters
    reference = torch.optim.AdamW(param_groups(nn.Linear(4, 3), cfg.weight_decay), lr=cfg.lr)
    assert {k for k in reference.param_groups[0] if k != "params"} <= set(opt.param_groups[0])

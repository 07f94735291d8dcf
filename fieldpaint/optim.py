"""Optimizer, learning-rate schedule, and the guard that keeps resumed optimizer state honest.

The notes' "big model regression": a checkpoint trained with Adam (weight_decay 0, constant LR)
was resumed with AdamW and a cosine schedule; Adam's moment buffers were loaded into AdamW and the
schedule was fast-forwarded, and the converged weights got worse (test loss 0.010 -> 0.014). So a
checkpoint records `optimizer_signature(...)` (`Checkpoint.optimizer_signature`), and
`resume_optimizer`, the one resume rule (fieldpaint.train calls it), loads optimizer and scheduler
state only when nothing in it changed; otherwise both start fresh and a warning names the changes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fieldpaint.config import TrainConfig

# Parameters with fewer dimensions than this (biases, GroupNorm/LayerNorm gains, scalar gates) get
# no weight decay: shrinking them towards 0 does not regularise, it only moves normalisation
# scales and offsets away from where the data put them (the nanoGPT / DiT-style split).
DECAY_MIN_NDIM = 2
NO_DECAY_RULE = f"ndim<{DECAY_MIN_NDIM}"


def param_groups(params_or_model: nn.Module | Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """[decayed weights, undecayed biases/norms], in parameter order, empty groups dropped."""
    if isinstance(params_or_model, nn.Module):
        params = list(params_or_model.parameters())
    else:
        params = list(params_or_model)
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= DECAY_MIN_NDIM]
    no_decay = [p for p in params if p.ndim < DECAY_MIN_NDIM]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# Devices with torch's fused Adam/AdamW kernel: one vectorised pass over each parameter, its
# gradient and both moments, instead of ~10 passes of the per-tensor loop (torch's default on CPU,
# where it also pays ~10 op dispatches per parameter). Same update to float rounding.
FUSED_DEVICES = ("cpu", "cuda")


def kernel_options(groups: list[dict]) -> dict:
    """{'fused': True} when every parameter is a float tensor on a FUSED_DEVICES device, else {}
    (torch's default choice)."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    return {"fused": True} if fused else {}


def build_optimizer(params_or_model: nn.Module | Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay, Loshchilov & Hutter 2019), or Adam whose weight_decay is the
    classic L2 term added to the gradient (the old `repaint_gaussian_attn` recipe, where it is 0);
    torch's fused kernel where it has one (`kernel_options`)."""
    groups = param_groups(params_or_model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **kernel_options(groups))
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), **kernel_options(groups))
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose 'adamw' or 'adam'")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)`, then two repairs torch does not make:

    - the kernel choice the optimizer was built with is kept (torch would take the saved groups'
      `fused`/`foreach`, e.g. a checkpoint of the per-tensor loop), and a fused kernel gets its
      step counters on the parameters' device;
    - each moment buffer takes its parameter's memory layout: a checkpoint stores contiguous
      (NCHW) tensors, and the fused kernel walks parameter, gradient and moments as flat arrays,
      so a channels_last parameter with NCHW moments would be updated with scrambled moments.
    """
    kernels = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kernel in zip(optimizer.param_groups, kernels):
        group.update(kernel)
        for p in group["params"]:
            entries = optimizer.state.get(p, {})
            for key, value in entries.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    entries[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)  # p's strides
            if group.get("fused") and torch.is_tensor(entries.get("step")):
                entries["step"] = entries["step"].to(device=p.device, dtype=torch.float32)


def lr_at_step(step: int, *, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int,
               schedule: str) -> float:
    """The learning rate of optimizer step `step` (0-based: step 0 is the first update).

    Warmup: base_lr · (step + 1) / warmup_steps for step < warmup_steps, so step 0 uses
    base_lr / warmup_steps (small, not 0: no update is wasted) and step warmup_steps - 1 uses
    base_lr. Then 'cosine' decays as min_lr + (base_lr - min_lr) · ½ (1 + cos(π p)),
    p = (step - warmup_steps) / (total_steps - warmup_steps), reaching min_lr at step total_steps
    and staying there; 'constant' holds base_lr.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}; choose 'cosine' or 'constant'")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_steps(cfg: TrainConfig, steps_per_epoch: int, epochs: int | None = None) -> tuple[int, int]:
    """(warmup_steps, total_steps) in optimizer steps; `epochs` overrides cfg.epochs (e.g. the
    epochs that remain when a resumed run restarts its schedule)."""
    epochs = cfg.epochs if epochs is None else epochs
    return round(cfg.warmup_epochs * steps_per_epoch), epochs * steps_per_epoch


def _lr_factor(cfg: TrainConfig, steps_per_epoch: int, epochs: int | None):
    """step -> lr / cfg.lr along `lr_at_step` for `cfg`'s schedule."""
    warmup, total = schedule_steps(cfg, steps_per_epoch, epochs)

    def factor(step: int) -> float:
        return lr_at_step(step, base_lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=warmup,
                          total_steps=total, schedule=cfg.lr_schedule) / cfg.lr

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, *,
                    epochs: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `lr_at_step`; call `scheduler.step()` after every `optimizer.step()`.

    Build it before loading saved optimizer state (as `resume_optimizer` does): constructing a
    LambdaLR resets every group's lr to its step-0 value.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, steps_per_epoch, epochs))


def retarget_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Make a `build_scheduler` LambdaLR follow `cfg`'s schedule from its current step on (a run
    whose epochs were re-planned): the lr of the next step is the one a run planned with `cfg`
    from the start would use there."""
    factor = _lr_factor(cfg, steps_per_epoch, None)
    scheduler.lr_lambdas = [factor] * len(scheduler.optimizer.param_groups)
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def optimizer_signature(cfg: TrainConfig, steps_per_epoch: int, *, epochs: int | None = None) -> dict[str, Any]:
    """Every setting whose change makes saved optimizer or scheduler state wrong to reuse."""
    warmup, total = schedule_steps(cfg, steps_per_epoch, epochs)
    return {
        "optimizer": cfg.optimizer,
        "betas": [float(b) for b in cfg.betas],
        "weight_decay": float(cfg.weight_decay),
        "no_decay_rule": NO_DECAY_RULE,
        "lr": float(cfg.lr),
        "min_lr": float(cfg.min_lr),
        "lr_schedule": cfg.lr_schedule,
        "warmup_steps": warmup,
        "total_steps": total,
    }


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def signature_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences, e.g. ['optimizer: adam -> adamw', 'weight_decay: 0.0 -> 0.0001'].

    Tuples and lists compare equal (a signature that went through JSON holds lists)."""
    missing = "<missing>"
    changes = []
    for key in list(old) + [k for k in new if k not in old]:
        a, b = _plain(old.get(key, missing)), _plain(new.get(key, missing))
        if a != b:
            changes.append(f"{key}: {a} -> {b}")
    return changes


def resume_optimizer(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                     *, saved_signature: dict[str, Any] | None, signature: dict[str, Any],
                     optimizer_state: dict | None, scheduler_state: dict | None) -> list[str]:
    """Load saved optimizer/scheduler state only if the signature is unchanged.

    Returns the list of changes: empty when the state was loaded. Otherwise the optimizer and the
    scheduler are left fresh (the schedule restarts with its warmup, which also protects the
    weights while Adam's new moment estimates settle) and a warning names every change.
    """
    if optimizer_state is None:
        changes = ["optimizer state: missing in the checkpoint"]
    elif saved_signature is None:
        changes = ["optimizer signature: missing in the checkpoint"]
    else:
        changes = signature_changes(saved_signature, signature)
    if changes:
        warnings.warn("optimizer and LR schedule start fresh (model weights were loaded) because the "
                      "optimizer settings changed: " + "; ".join(changes), stacklevel=2)
        return changes
    load_optimizer_state(optimizer, optimizer_state)
    if scheduler is not None and scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
    return []

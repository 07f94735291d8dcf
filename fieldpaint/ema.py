"""Exponential moving average of a model's weights, with a linear warmup of the decay.

Without warmup, decay 0.9999 keeps 0.9999^n of the random initialisation in the shadow after n
updates: ~83 % after 13 epochs of 143 batches (the notes' "Run 1"), and evaluation, which uses the
shadow, scored a mostly random network. With warmup the decay ramps from 0, so the shadow first
copies the weights and only later starts to smooth them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from fieldpaint.checkpoint import unwrap_model
from fieldpaint.errors import CheckpointError


def ema_decay_at(step: int, decay: float, warmup_steps: int) -> float:
    """decay · min(1, step / warmup_steps); a constant `decay` when warmup_steps is 0.

    `step` is the 0-based index of the optimizer step just taken, so the first update (step 0)
    uses decay 0 and copies the weights.
    """
    if warmup_steps <= 0:
        return decay
    return decay * min(1.0, step / warmup_steps)


def _split(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The unwrapped model's state-dict entries, split into parameters and (persistent) buffers.

    Keyed like `model.state_dict()`, so an EMA state dict loads straight into the model."""
    state = unwrap_model(model).state_dict(keep_vars=True)
    params = {k: v for k, v in state.items() if isinstance(v, nn.Parameter)}
    return params, {k: v for k, v in state.items() if k not in params}


class EMA:
    """A float32 shadow of a module's parameters, plus copies of its buffers.

    Parameters are averaged: shadow ← d · shadow + (1 - d) · param. Buffers (BatchNorm statistics,
    counters) are copied, not averaged, so the EMA model stays consistent with the raw one. Keys are
    those of the unwrapped module's state dict (no DDP `module.` or `_orig_mod.` prefixes).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup_steps: int = 2000) -> None:
        self.decay = decay
        self.warmup_steps = warmup_steps
        with torch.no_grad():
            params, buffers = _split(model)
            self.shadow = {k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype, copy=True)
                           for k, v in params.items()}
            self.buffers = {k: v.detach().clone() for k, v in buffers.items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Fold the current weights into the shadow; returns the decay used."""
        d = ema_decay_at(step, self.decay, self.warmup_steps)
        params, buffers = _split(model)
        floats = [name for name, s in self.shadow.items() if s.is_floating_point()]
        if floats:  # one multi-tensor op: s = d·s + (1-d)·p, exactly p at d = 0 (as s.lerp_ per tensor)
            torch._foreach_lerp_([self.shadow[n] for n in floats], [params[n].detach().float() for n in floats], 1.0 - d)
        for name in self.shadow.keys() - set(floats):
            self.shadow[name].copy_(params[name].detach())
        if buffers:
            torch._foreach_copy_([self.buffers[n] for n in buffers], [b.detach() for b in buffers.values()])
        return d

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters and buffers with the EMA ones (cast to their dtype)."""
        params, buffers = _split(model)
        for name, p in params.items():
            p.copy_(self.shadow[name])
        for name, b in buffers.items():
            b.copy_(self.buffers[name])

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Evaluate with EMA weights inside the block; the raw weights come back afterwards,
        also when the block raises."""
        model = unwrap_model(model)
        with torch.no_grad():
            raw = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in model.state_dict(keep_vars=True).items():
                    v.copy_(raw[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameter and buffer names -> tensors, like a module's state dict."""
        return {**self.shadow, **self.buffers}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        for name, mine in own.items():
            if name not in state:
                raise CheckpointError(f"EMA state has no entry {name!r}")
            if tuple(state[name].shape) != tuple(mine.shape):
                raise CheckpointError(f"EMA entry {name!r} has shape {tuple(state[name].shape)}, "
                                      f"the model needs {tuple(mine.shape)}")
        extra = sorted(set(state) - set(own))
        if extra:
            raise CheckpointError(f"EMA state has an entry the model lacks: {extra[0]!r}")
        with torch.no_grad():
            for name, mine in own.items():
                mine.copy_(state[name])

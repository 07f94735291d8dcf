"""The training loss: noise a clean field, ask the network for ε or v, score valid pixels only.

The backbone never knows about ε/v conventions (as in NVlabs/edm, where networks and losses are
separate); this module is the only place the training target is chosen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fieldpaint.diffusion.schedule import Prediction, Schedule, q_sample, v_target

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]  # model(x_t, t, cond)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of (pred - target)² over valid pixel-channels of the whole batch.

    `valid` is (B, 1, H, W) or (B, C, H, W), 1 = valid. Invalid pixels contribute exactly nothing,
    even when they hold NaN or inf (`where`, not a product: NaN · 0 is NaN). A batch without a
    single valid pixel gives 0.
    """
    keep = (valid > 0).expand_as(pred)
    sq = torch.where(keep, pred - target, torch.zeros_like(pred)).square()
    return sq.sum() / keep.sum().clamp(min=1)


def diffusion_loss(model: Denoiser, x0: torch.Tensor, valid: torch.Tensor, schedule: Schedule,
                   prediction: Prediction, *, cond: torch.Tensor | None = None, t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ho et al. 2020 Algorithm 1 (ε target) or Salimans & Ho 2022 (v target), masked to valid pixels.

    t ~ U{0..T-1} and ε ~ N(0, I) are drawn from `generator` unless given. Never-valid pixels of x0
    are set to 0 (the normalised mean) before noising, so whatever fill value the data carries
    there (NaN included) cannot reach the network's input or the loss.
    """
    B = x0.shape[0]
    x0 = torch.where((valid > 0).expand_as(x0), x0, torch.zeros_like(x0))
    if t is None:
        t = torch.randint(0, schedule.T, (B,), device=x0.device, generator=generator)
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    ac = schedule.alphas_cumprod
    xt = q_sample(x0, t, noise, ac)
    if prediction == "eps":
        target = noise
    elif prediction == "v":
        target = v_target(x0, noise, t, ac)
    else:
        raise ValueError(f"unknown prediction target {prediction!r}; choose 'eps' or 'v'")
    return masked_mse(model(xt, t, cond), target, valid)

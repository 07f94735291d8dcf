"""The training loss: noise a clean field, ask the network for ε or v, score valid pixels only.

The backbone never knows about ε/v conventions (as in NVlabs/edm, where networks and losses are
separate); this module is the only place the training target is chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from fieldpaint.diffusion.schedule import Prediction, Schedule, q_sample, v_target

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]  # model(x_t, t, cond)
Weighting = Literal["none", "min_snr"]
MIN_SNR_GAMMA = 5.0  # gamma of Hang et al. (2023), their recommended value


def min_snr_weights(alphas_cumprod_t: torch.Tensor, prediction: Prediction, gamma: float = MIN_SNR_GAMMA) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via
    Min-SNR Weighting Strategy", eq. 8 and Sec. 3.4), SNR = ᾱ_t / (1 - ᾱ_t).

    The paper clamps the weight of the x0 loss at gamma: w_x0 = min(SNR, gamma). Since
    ||ε - ε̂||² = SNR ||x0 - x̂0||² and ||v - v̂||² = (SNR + 1) ||x0 - x̂0||², the same weighting of
    an ε or v loss is  w_eps = min(SNR, gamma) / SNR  and  w_v = min(SNR, gamma) / (SNR + 1)."""
    ac = alphas_cumprod_t.double()
    snr = ac / (1 - ac)
    clamped = torch.clamp(snr, max=gamma)
    if prediction == "eps":
        return (clamped / snr).float()
    if prediction == "v":
        return (clamped / (snr + 1)).float()
    raise ValueError(f"unknown prediction target {prediction!r}; choose 'eps' or 'v'")


def draw_timesteps(n: int, T: int, terminal_fraction: float = 0.0, *, device: torch.device | str | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """n training timesteps: t ~ U{0..T-1} (Ho et al. 2020), except that each is T-1 with
    probability `terminal_fraction` (so P(t = T-1) = f + (1-f)/T).

    At T-1 the cosine schedule leaves ᾱ ≈ 0: x_t is pure noise and the loss trains x̂0 as a direct
    regression on the conditioning, the estimate of E[x0 | y] a conditional model's first sampling
    step returns. Uniform t gives that regression 1/T of the samples, and the noise levels where
    x̂0 ≈ E[x0 | y] (ᾱ below ~1e-3, t ≥ 975 of 1000) about 2.5 %. With f = 0 the draws are
    exactly the uniform ones (the same generator calls)."""
    t = torch.randint(0, T, (n,), device=device, generator=generator)
    if terminal_fraction > 0:
        terminal = torch.rand(n, device=device, generator=generator) < terminal_fraction
        t = torch.where(terminal, torch.full_like(t, T - 1), t)
    return t


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of (pred - target)² over valid pixel-channels of the whole batch, each sample's
    squares multiplied by `weights` (B,) when given.

    `valid` is (B, 1, H, W) or (B, C, H, W), 1 = valid. Invalid pixels contribute exactly nothing,
    even when they hold NaN or inf (`where`, not a product: NaN · 0 is NaN). A batch without a
    single valid pixel gives 0.
    """
    keep = (valid > 0).expand_as(pred)
    sq = torch.where(keep, pred - target, torch.zeros_like(pred)).square()
    if weights is not None:
        sq = sq * weights.to(sq.dtype).view(-1, *([1] * (sq.ndim - 1)))
    return sq.sum() / keep.sum().clamp(min=1)


def diffusion_loss(model: Denoiser, x0: torch.Tensor, valid: torch.Tensor, schedule: Schedule,
                   prediction: Prediction, *, cond: torch.Tensor | None = None, t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   weighting: Weighting = "none") -> torch.Tensor:
    """Ho et al. 2020 Algorithm 1 (ε target) or Salimans & Ho 2022 (v target), masked to valid pixels.

    t ~ U{0..T-1} and ε ~ N(0, I) are drawn from `generator` unless given. Never-valid pixels of x0
    are set to 0 (the normalised mean) before noising, so whatever fill value the data carries
    there (NaN included) cannot reach the network's input or the loss. weighting 'min_snr' weights
    each sample by `min_snr_weights` (diffusion.loss_weighting); 'none' is the plain mean.
    """
    B = x0.shape[0]
    x0 = torch.where((valid > 0).expand_as(x0), x0, torch.zeros_like(x0))
    if t is None:
        t = draw_timesteps(B, schedule.T, device=x0.device, generator=generator)
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
    if weighting not in ("none", "min_snr"):
        raise ValueError(f"unknown loss weighting {weighting!r}; choose 'none' or 'min_snr'")
    weights = min_snr_weights(ac[t], prediction) if weighting == "min_snr" else None
    return masked_mse(model(xt, t, cond), target, valid, weights)

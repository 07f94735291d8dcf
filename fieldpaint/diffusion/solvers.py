"""A second-order solver for conditional models: DPM-Solver++(2M).

Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Algorithm 2 (multistep, data prediction). In their notation α_t = √ᾱ_t,
σ_t = √(1-ᾱ_t), λ_t = log(α_t / σ_t) (half the log-SNR) and x_θ = the denoiser's x̂_0. Between
consecutive levels s → t (h = λ_t - λ_s > 0):

    first order (= deterministic DDIM):  x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x̂_0(s)
    second order (2M):                   D = (1 + 1/(2r)) x̂_0(s) - 1/(2r) x̂_0(s'),  r = h_prev / h
                                         x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) D

with s' the level before s and h_prev = λ_s - λ_{s'}. The first step is first order (no history)
and so is the last, to the clean field (λ = ∞: x_0 = x̂_0, the "lower_order_final" of the reference
code): `steps` levels cost `steps` network evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from fieldpaint.diffusion.schedule import Schedule
from fieldpaint.diffusion.steps import (Denoiser, Generators, SigmaY, apply_fixed, fixed_pixels, paste_known,
                                        respaced_timesteps, sigma_like, start_noise, timestep)

Spacing = Literal["time", "logsnr"]


def logsnr_timesteps(schedule: Schedule, steps: int) -> torch.Tensor:
    """`steps` distinct training timesteps, ASCENDING, from 0 to T-1, near-uniform in λ = ½ log(ᾱ/(1-ᾱ))
    (the spacing DPM-Solver recommends, Lu et al. 2022, sec. 3.3): level k aims at λ_0 + k/(S-1) ·
    (λ_{T-1} - λ_0) and takes the nearest training timestep not yet taken."""
    if not 1 <= steps <= schedule.T:
        raise ValueError(f"steps must be in 1..T = 1..{schedule.T}, got {steps}")
    if steps == 1:
        return torch.tensor([schedule.T - 1], dtype=torch.long)
    ac = schedule.alphas_cumprod
    lam = 0.5 * torch.log(ac / (1 - ac))  # decreasing in t
    targets = torch.linspace(float(lam[0]), float(lam[-1]), steps, dtype=torch.float64)
    taken: list[int] = []
    for k, target in enumerate(targets.tolist()):
        low = taken[-1] + 1 if taken else 0
        high = schedule.T - (steps - k)  # leave room for the levels still to come
        t = int(torch.argmin((lam[low:high + 1] - target).abs())) + low
        taken.append(t)
    return torch.tensor(taken, dtype=torch.long)


def sampling_timesteps(schedule: Schedule, steps: int, spacing: Spacing) -> torch.Tensor:
    if spacing == "time":
        return respaced_timesteps(schedule.T, steps)
    if spacing == "logsnr":
        return logsnr_timesteps(schedule, steps)
    raise ValueError(f"unknown spacing {spacing!r}; choose 'time' or 'logsnr'")


@torch.no_grad()
def dpm_solver_2m(denoiser: Denoiser, shape: Sequence[int], schedule: Schedule, *, generator: Generators,
                  steps: int = 20, obs: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                  sigma_y: SigmaY = 0.0, fixed: torch.Tensor | None = None, spacing: Spacing = "logsnr",
                  device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2; see the module docstring) for a CONDITIONAL
    denoiser, with the call shape of `ddim` (deterministic given x_{S-1} ~ N(0, I), like DDIM η = 0).

    Names: lam = λ, a = α_t = √ᾱ, s = σ_t = √(1-ᾱ), x0 = x̂_0(s), x0_prev = x̂_0(s'), h, r as above.
    `spacing`: "logsnr" (levels uniform in λ, the default) or "time" (`respaced_timesteps`, DDIM's).
    When obs and mask are given (and σ_y = 0) the observed values are pasted into the final x_0;
    x̂_0 = 0 at `fixed` pixels.
    """
    timesteps = sampling_timesteps(schedule, steps, spacing).tolist()
    ac = schedule.alphas_cumprod[timesteps].tolist()
    x = start_noise(shape, generator, obs, device, dtype)  # x_{S-1} ~ N(0, I)
    sigma_y = sigma_like(sigma_y, x)
    fixed = fixed_pixels(fixed, x)
    lam = [0.5 * math.log(a / (1 - a)) for a in ac]
    x0_prev, h_prev = None, None
    for i in reversed(range(steps)):
        x0 = apply_fixed(denoiser(x, timestep(timesteps[i], x)), fixed)
        if i == 0:  # to the clean field: λ = ∞, x_0 = x̂_0 (first order)
            x = x0
            break
        h = lam[i - 1] - lam[i]
        a_t, s_t, s_s = ac[i - 1] ** 0.5, (1 - ac[i - 1]) ** 0.5, (1 - ac[i]) ** 0.5
        d = x0 if x0_prev is None else (1 + 1 / (2 * h_prev / h)) * x0 - 1 / (2 * h_prev / h) * x0_prev
        x = (s_t / s_s) * x - a_t * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return apply_fixed(paste_known(x, obs, mask, sigma_y), fixed), steps

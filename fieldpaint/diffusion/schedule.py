"""Noise schedules and the closed-form conversions between x_0, ε and v.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"), with t = 0..T-1:

    β_t                 betas[t], the variance added at forward step t
    α_t = 1 - β_t
    ᾱ_t = Π_{s<=t} α_s  alphas_cumprod[t]   (ᾱ_0 = α_0 < 1: step 0 already adds a little noise)
    x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε                                   (eq. 4)
    q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I)                          (eqs. 6-7)
        μ̃_t = √ᾱ_{t-1} β_t / (1-ᾱ_t) · x_0 + √α_t (1-ᾱ_{t-1}) / (1-ᾱ_t) · x_t
        β̃_t = (1-ᾱ_{t-1}) / (1-ᾱ_t) · β_t,      with ᾱ_{-1} = 1
    v = √ᾱ_t ε - √(1-ᾱ_t) x_0        (Salimans & Ho 2022, "Progressive Distillation", sec. 4)

Schedules are float64 tensors; each conversion gathers ᾱ_t in float64, takes the square roots
there and only then casts to the dtype of x, so fp32/bf16 inputs lose nothing to the schedule.
Timesteps `t` are integer tensors of shape (B,), broadcast to (B, 1, 1, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

ScheduleKind = Literal["cosine", "linear"]
Prediction = Literal["eps", "v"]


def linear_betas(T: int = 1000) -> torch.Tensor:
    """Ho et al. 2020: β rises linearly from 1e-4 to 0.02 over T = 1000 steps.

    For T != 1000 both ends are scaled by 1000/T (Nichol & Dhariwal 2021, the `linear` schedule of
    improved-diffusion), so that ᾱ_{T-1} stays ≈ 4e-5 and a short test schedule still ends in
    pure noise. β is capped at 0.999 for tiny T.
    """
    scale = 1000.0 / T
    betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    return betas.clamp(max=0.999)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: β_t = min(1 - f(t+1)/f(t), 0.999),
    f(t) = cos(((t/T) + s)/(1 + s) · π/2)²."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def cosine_alphas_cumprod(T: int = 1000, s: float = 0.008) -> torch.Tensor:
    """ᾱ_t for t = 0..T-1 from the clipped cosine betas (= f(t+1)/f(0) wherever β is not clipped,
    which for T = 1000 is every step but the last)."""
    return torch.cumprod(1 - cosine_betas(T, s), dim=0)


@dataclass(frozen=True)
class Schedule:
    """A noise schedule: float64 β_t and ᾱ_t, t = 0..T-1."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        """ᾱ_{t-1}, with ᾱ_{-1} = 1."""
        return torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> torch.Tensor:
        """β̃_t = (1-ᾱ_{t-1}) / (1-ᾱ_t) · β_t  (Ho et al. eq. 7); β̃_0 = 0."""
        return (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod) * self.betas

    def to(self, device: torch.device | str) -> Schedule:
        return Schedule(self.betas.to(device), self.alphas_cumprod.to(device))


def make_schedule(kind: ScheduleKind = "cosine", T: int = 1000) -> Schedule:
    if kind == "cosine":
        betas = cosine_betas(T)
    elif kind == "linear":
        betas = linear_betas(T)
    else:
        raise ValueError(f"unknown noise schedule {kind!r}; choose 'cosine' or 'linear'")
    return Schedule(betas, torch.cumprod(1 - betas, dim=0))


def _at(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a[t] as (B, 1, 1, 1) (one trailing 1 per dimension of x after the first), in x's dtype."""
    out = a.to(x.device)[t.to(x.device).long()]
    return out.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _coefs(ac: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ_t, √(1-ᾱ_t)) broadcastable against x; the roots are taken in float64."""
    return _at(ac.sqrt(), t, x), _at((1 - ac).sqrt(), t, x)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε  (Ho et al. eq. 4)."""
    a, b = _coefs(alphas_cumprod, t, x0)
    return a * x0 + b * noise


def x0_from_eps(xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, ac: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t."""
    a, b = _coefs(ac, t, xt)
    return (xt - b * eps) / a


def eps_from_x0(xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, ac: torch.Tensor) -> torch.Tensor:
    """ε = (x_t - √ᾱ_t x_0) / √(1-ᾱ_t)."""
    a, b = _coefs(ac, t, xt)
    return (xt - a * x0) / b


def v_target(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, ac: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ_t ε - √(1-ᾱ_t) x_0  (Salimans & Ho 2022)."""
    a, b = _coefs(ac, t, x0)
    return a * eps - b * x0


def x0_from_v(xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor, ac: torch.Tensor) -> torch.Tensor:
    """x_0 = √ᾱ_t x_t - √(1-ᾱ_t) v."""
    a, b = _coefs(ac, t, xt)
    return a * xt - b * v


def eps_from_v(xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor, ac: torch.Tensor) -> torch.Tensor:
    """ε = √(1-ᾱ_t) x_t + √ᾱ_t v."""
    a, b = _coefs(ac, t, xt)
    return b * xt + a * v


def posterior_mean_variance(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                            schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """μ̃_t, β̃_t and log β̃_t of q(x_{t-1} | x_t, x_0)  (Ho et al. eqs. 6-7).

    β̃_0 = 0, so its log is clipped to log β̃_1 (as in Ho et al.'s and Nichol & Dhariwal's code);
    the variance itself is returned unclipped. Variances come back as (B, 1, 1, 1). A one-step
    chain (T = 1, e.g. a sampler respaced to steps = 1) has no β̃_1: its log variance is log 0 = -inf.
    """
    ac, ac_prev, betas = schedule.alphas_cumprod, schedule.alphas_cumprod_prev, schedule.betas
    coef_x0 = ac_prev.sqrt() * betas / (1 - ac)
    coef_xt = (1 - betas).sqrt() * (1 - ac_prev) / (1 - ac)
    mean = _at(coef_x0, t, xt) * x0 + _at(coef_xt, t, xt) * xt
    var = schedule.posterior_variance
    log_var = torch.log(torch.cat([var[1:2], var[1:]]) if var.numel() > 1 else var)
    return mean, _at(var, t, xt), _at(log_var, t, xt)


def predict_x0_eps(model_output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, ac: torch.Tensor,
                   prediction: Prediction) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output (ε̂ or v̂) into the pair (x̂_0, ε̂) that samplers work with."""
    if prediction == "eps":
        return x0_from_eps(xt, t, model_output, ac), model_output
    if prediction == "v":
        return x0_from_v(xt, t, model_output, ac), eps_from_v(xt, t, model_output, ac)
    raise ValueError(f"unknown prediction target {prediction!r}; choose 'eps' or 'v'")

"""Samplers: pure functions of a denoiser that turn noise, observations and a mask into fields.

One convention for every sampler (as k-diffusion's `sample_<name>(model, x, sigmas, ...)`):

    denoiser(x_t, t) -> x̂_0 = E[x_0 | x_t]      x_t: (B, C, H, W); t: (B,) long, a TRAINING timestep

ε̂ follows from the schedule, ε̂ = (x_t - √ᾱ_t x̂_0) / √(1-ᾱ_t). A conditional network carries its
conditioning (mask, known values) inside the denoiser (`model_denoiser(..., cond=...)`).

Respacing (Nichol & Dhariwal 2021, sec. 4; improved-diffusion's `space_timesteps`): a sampler with
`steps` < T walks the kept timesteps τ_0 = 0 < τ_1 < ... < τ_{S-1} = T-1 of `respaced_timesteps`,
a Markov chain with ᾱ'_i = ᾱ_{τ_i} and β'_i = 1 - ᾱ'_i / ᾱ'_{i-1} (ᾱ'_{-1} = 1). Index i = -1 is
the clean field. The denoiser always sees the training timestep τ_i.

Every sampler returns (x_0 (B, C, H, W), nfe): nfe counts denoiser calls, i.e. network
evaluations per member. Randomness comes only from `generator`: one torch.Generator for the whole
batch, or one per batch row (EDM's per-sample generators), so that a member's result does not
depend on the batch it was drawn in. Noise is drawn on the generator's device (the CPU) and moved
to the data's.

Observations: obs (B, C, H, W), mask (B, 1 or C, H, W) with 1 = observed, 0 = hidden; values of obs
at hidden pixels are ignored (NaN allowed). With sigma_y = 0 every sampler returns the observed
values exactly; with sigma_y > 0 the observations are y = x_0 + σ_y n, n ~ N(0, I), and the output
is only pulled towards them (calibrated by `mmps` and by the conditional samplers given a
calibrated denoiser; heuristic in `repaint` and `ddnm`). σ_y is a float or a tensor broadcastable
to (B, C, H, W) (per channel: (1, C, 1, 1); per pixel: (B, C, H, W)), in normalised units; where a
tensor σ_y is 0 the observation is exact and is kept exactly.

Never-valid pixels: `fixed` (B, 1 or C, H, W), bool or float, marks pixels whose x_0 is known to be
exactly 0 (land: training sets x_0 = 0 there and never scores it). Every sampler sets x̂_0 = 0 there
at every step (`steps.apply_fixed`), as in training, and returns exactly 0 there.

Modules: `steps` (time lists and single steps), this one (RePaint, DDNM, DDIM, ancestral), `mmps`
(moment-matching posterior sampling), `solvers` (DPM-Solver++(2M)). Everything is re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fieldpaint.diffusion.mmps import conjugate_gradient, mmps, tweedie_covariance_scale
from fieldpaint.diffusion.schedule import Prediction, Schedule, predict_x0_eps
from fieldpaint.diffusion.solvers import dpm_solver_2m
from fieldpaint.diffusion.steps import (X0_CLIP, Denoiser, Generators, SigmaY, ancestral_step, apply_fixed,
                                        check_eps_deterministic, ddim_sigma, ddim_step, fixed_pixels, is_noisy,
                                        jump_schedule, jump_schedule_nfe, merge_known, null_space_correction,
                                        observed, paste_known, randn, renoise_step, respace, respaced_timesteps,
                                        sigma_like, start_noise, timestep)

__all__ = [
    "X0_CLIP", "Denoiser", "Generators", "ModelDenoiser", "SigmaY", "ancestral", "ancestral_step", "apply_fixed",
    "check_eps_deterministic", "conjugate_gradient", "ddim", "ddim_sigma", "ddim_step", "ddnm",
    "dpm_solver_2m", "jump_schedule", "jump_schedule_nfe", "merge_known", "mmps", "model_denoiser",
    "null_space_correction", "randn", "renoise_step", "repaint", "respace", "respaced_timesteps",
    "tweedie_covariance_scale",
]


# ----------------------------------------------------------------------------------------------
# the denoiser of a network




class ModelDenoiser:
    """x̂_0 from a network trained for ε or v: x̂_0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t (Ho et al. 2020,
    eq. 4 solved for x_0) or x̂_0 = √ᾱ_t x_t - √(1-ᾱ_t) v̂ (Salimans & Ho 2022, sec. 4).

    `cond` (B, 1 + C, H, W) is passed to the network at every call, so a conditional model sees the
    mask and the known values at every step. `calls` counts network evaluations.

    `clip` bounds x̂_0 to [-clip, clip] (normalised units), as DDPM/DDIM implementations clip to the
    data range: at the first steps of an ε-model √ᾱ_t is ~4e-5 (cosine, t = T-1), so ε̂'s error is
    amplified ~20,000-fold and, with no bound, DDNM's corrections never recover from it. z-scored
    fields seldom pass ±10, so the bound does not touch a sensible x̂_0. None disables it.
    The call is differentiable in x_t (what `mmps` needs) wherever the clip is not active.
    """

    def __init__(self, model: nn.Module, schedule: Schedule, prediction: Prediction,
                 cond: torch.Tensor | None = None, clip: float | None = X0_CLIP) -> None:
        self.model, self.schedule, self.prediction, self.cond = model, schedule, prediction, cond
        self.clip = clip
        self.calls = 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.model(x_t, t, self.cond).to(x_t.dtype)  # ε̂ or v̂, (B, C, H, W); x_t's dtype under autocast too
        self.calls += 1
        x0, _ = predict_x0_eps(out, x_t, t, self.schedule.alphas_cumprod, self.prediction)
        return x0 if self.clip is None else x0.clamp(-self.clip, self.clip)


def model_denoiser(model: nn.Module, schedule: Schedule, prediction: Prediction,
                   cond: torch.Tensor | None = None, clip: float | None = X0_CLIP) -> ModelDenoiser:
    """Wrap `model(x_t, t, cond) -> ε̂ | v̂` as a denoiser `(x_t, t) -> x̂_0` that counts its calls."""
    return ModelDenoiser(model, schedule, prediction, cond, clip)


# ----------------------------------------------------------------------------------------------
# samplers for unconditional models


@torch.no_grad()
def repaint(denoiser: Denoiser, obs: torch.Tensor, mask: torch.Tensor, schedule: Schedule, *,
            generator: Generators, steps: int = 250, jump_length: int = 10, jump_n_sample: int = 10,
            sigma_y: SigmaY = 0.0, fixed: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
    Models", Algorithm 1) on the respaced chain, with the jump schedule of its reference code.

    Symbols: i = t (respaced level), x = x_t, x0 = x̂_0, obs = x_0 of the known region (y), mask = m.
    Start x_{S-1} ~ N(0, I). For each pair (i, j) of `jump_schedule`:
      j = i - 1: x^unknown_{i-1} ~ N(μ̃_i(x_i, x̂_0), β̃'_i I)       (Ho et al. eqs. 6-7)
                 x_{i-1} = m ⊙ q_sample(y, τ_{i-1}) + (1 - m) ⊙ x^unknown_{i-1}   (`merge_known`;
                 the merge follows the step, as in Algorithm 1; at i-1 = -1, ᾱ = 1, so it is y)
      j = i + 1: x_{i+1} ~ N(√(1-β'_{i+1}) x_i, β'_{i+1} I)          (the "undo" re-noising)
    (The reference code instead merges just before each network call, with fresh noise; the known
    pixels of x_i have the same distribution either way.) σ_y > 0 is a heuristic (`merge_known`):
    over-confident at observed pixels. x̂_0 = 0 at `fixed` pixels (see the module docstring).
    """
    obs, known = observed(obs, mask)
    sigma_y = sigma_like(sigma_y, obs)
    fixed = fixed_pixels(fixed, obs)
    timesteps = respaced_timesteps(schedule.T, steps).tolist()
    spaced = respace(schedule, torch.tensor(timesteps))
    ac, betas = spaced.alphas_cumprod.tolist(), spaced.betas.tolist()
    x = randn(obs.shape, generator, obs)  # x_{S-1}, (B, C, H, W)
    nfe = 0
    times = jump_schedule(steps, jump_length, jump_n_sample)
    for i, j in zip(times[:-1], times[1:]):
        if j < i:
            x0 = apply_fixed(denoiser(x, timestep(timesteps[i], x)), fixed)
            nfe += 1
            x = ancestral_step(x0, x, i, spaced, randn(x.shape, generator, x))  # unknown part of x_{i-1}
            ac_prev = ac[i - 1] if i > 0 else 1.0
            x = merge_known(x, obs, known, ac_prev, randn(x.shape, generator, x), sigma_y)
        else:
            x = renoise_step(x, betas[j], randn(x.shape, generator, x))
    return apply_fixed(x, fixed), nfe


@torch.no_grad()
def ddnm(denoiser: Denoiser, obs: torch.Tensor, mask: torch.Tensor, schedule: Schedule, *,
         generator: Generators, steps: int = 100, eta: float = 1.0,
         sigma_y: SigmaY = 0.0, fixed: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """DDNM (Wang et al. 2023, "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space
    Model", Algorithm 1) with A = masking and a DDIM step (Song et al. 2021 eq. 12) of
    stochasticity η in place of the DDPM step; η = 1 is exactly Algorithm 1. No resampling loop:
    `steps` network evaluations.

    Symbols: x = x_t, x0 = x_{0|t} (then x̂_{0|t}), obs = y, mask = m (A = diag(m), A⁺ = Aᵀ).
    Per level: x_{0|t} = D(x_t);  x̂_{0|t} = x_{0|t} + λ_t m ⊙ (y - x_{0|t});  DDIM step to x_{t-1}.

    σ_y > 0 follows DDNM+ (eqs. 17-19), a HEURISTIC, not a posterior: writing the step as
    x_{t-1} = a_t x̂_{0|t} + b_t x_t + σ_t z, the correction puts noise a_t λ_t σ_y on the observed
    pixels, so λ_t = min(1, σ_t / (a_t σ_y)) and the fresh noise there shrinks to
    √(σ_t² - (a_t λ_t σ_y)²). On the Gaussian oracle the members are ~4x over-confident at observed
    pixels (spread 0.023 against the exact 0.092 at σ_y = 0.1); use `mmps` for σ_y > 0. DDNM+
    needs η > 0: with η = 0 (σ_t = 0) it never uses noisy observations. A tensor σ_y gives λ_t and
    the shrunk noise pixel by pixel (λ_t = 1 and no noise where σ_y = 0). x̂_0 = 0 at `fixed` pixels.
    """
    obs, known = observed(obs, mask)
    sigma_y = sigma_like(sigma_y, obs)
    noisy = is_noisy(sigma_y)
    fixed = fixed_pixels(fixed, obs)
    timesteps = respaced_timesteps(schedule.T, steps).tolist()
    ac = schedule.alphas_cumprod[timesteps].tolist()
    x = randn(obs.shape, generator, obs)  # x_{S-1}
    for i in reversed(range(steps)):
        ac_t, ac_prev = ac[i], (ac[i - 1] if i > 0 else 1.0)
        x0 = apply_fixed(denoiser(x, timestep(timesteps[i], x)), fixed)
        noise = randn(x.shape, generator, x)
        if not noisy:
            x0 = null_space_correction(x0, obs, known)
            x = ddim_step(x0, x, ac_t, ac_prev, eta, noise)
            continue
        sigma = ddim_sigma(ac_t, ac_prev, eta)
        a = ac_prev ** 0.5 - max(1 - ac_prev - sigma ** 2, 0.0) ** 0.5 * (ac_t / (1 - ac_t)) ** 0.5  # a_t
        if isinstance(sigma_y, torch.Tensor):
            lam = torch.where(sigma >= a * sigma_y, torch.ones_like(sigma_y), sigma / (a * sigma_y))
            shrink = ((sigma ** 2 - (a * lam * sigma_y) ** 2).clamp(min=0.0).sqrt() / sigma if sigma > 0
                      else torch.zeros_like(sigma_y))
        else:
            lam = 1.0 if sigma >= a * sigma_y else sigma / (a * sigma_y)
            shrink = max(sigma ** 2 - (a * lam * sigma_y) ** 2, 0.0) ** 0.5 / sigma if sigma > 0 else 0.0
        x0 = null_space_correction(x0, obs, known, lam)
        x = ddim_step(x0, x, ac_t, ac_prev, eta, torch.where(known, shrink * noise, noise))
    return apply_fixed(x, fixed), steps


# ----------------------------------------------------------------------------------------------
# samplers for conditional models (the conditioning lives in the denoiser)


@torch.no_grad()
def ddim(denoiser: Denoiser, shape: Sequence[int], schedule: Schedule, *, generator: Generators,
         steps: int = 50, eta: float = 0.0, obs: torch.Tensor | None = None, mask: torch.Tensor | None = None,
         sigma_y: SigmaY = 0.0, fixed: torch.Tensor | None = None, device: torch.device | str | None = None,
         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """DDIM sampling (Song et al. 2021, eq. 12, σ of eq. 16) over `respaced_timesteps(T, steps)`.

    Symbols: see `ddim_step`. η = 0 is deterministic given x_{S-1}; η = 1 draws from the DDPM
    posterior at every step and equals `ancestral`. When obs and mask are given (and σ_y = 0), the
    observed values are pasted into the final x_0; the conditioning itself is the denoiser's.
    x̂_0 = 0 at `fixed` pixels. The output takes obs's device and dtype, or else `device` and `dtype`.
    """
    timesteps = respaced_timesteps(schedule.T, steps).tolist()
    ac = schedule.alphas_cumprod[timesteps].tolist()
    x = start_noise(shape, generator, obs, device, dtype)  # x_{S-1} ~ N(0, I)
    sigma_y = sigma_like(sigma_y, x)
    fixed = fixed_pixels(fixed, x)
    for i in reversed(range(steps)):
        x0 = apply_fixed(denoiser(x, timestep(timesteps[i], x)), fixed)
        x = ddim_step(x0, x, ac[i], ac[i - 1] if i > 0 else 1.0, eta, randn(x.shape, generator, x))
    return apply_fixed(paste_known(x, obs, mask, sigma_y), fixed), steps


@torch.no_grad()
def ancestral(denoiser: Denoiser, shape: Sequence[int], schedule: Schedule, *, generator: Generators,
              steps: int = 50, obs: torch.Tensor | None = None, mask: torch.Tensor | None = None,
              sigma_y: SigmaY = 0.0, fixed: torch.Tensor | None = None, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2; eqs. 6-7) on the respaced chain:
    x_{i-1} ~ N(μ̃_i(x_i, x̂_0), β̃'_i I) with the respaced β'_i of `respace`. Observed values are
    pasted into the final x_0 and `fixed` pixels handled as in `ddim`."""
    timesteps = respaced_timesteps(schedule.T, steps).tolist()
    spaced = respace(schedule, torch.tensor(timesteps))
    x = start_noise(shape, generator, obs, device, dtype)  # x_{S-1} ~ N(0, I)
    sigma_y = sigma_like(sigma_y, x)
    fixed = fixed_pixels(fixed, x)
    for i in reversed(range(steps)):
        x0 = apply_fixed(denoiser(x, timestep(timesteps[i], x)), fixed)
        x = ancestral_step(x0, x, i, spaced, randn(x.shape, generator, x))
    return apply_fixed(paste_known(x, obs, mask, sigma_y), fixed), steps

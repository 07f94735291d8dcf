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
is only pulled towards them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from fieldpaint.diffusion.schedule import Prediction, Schedule, posterior_mean_variance, predict_x0_eps

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> x̂_0
Generators = torch.Generator | Sequence[torch.Generator]


# ----------------------------------------------------------------------------------------------
# the denoiser of a network


X0_CLIP = 10.0  # bound on x̂_0 in normalised (z-score) units


class ModelDenoiser:
    """x̂_0 from a network trained for ε or v: x̂_0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t (Ho et al. 2020,
    eq. 4 solved for x_0) or x̂_0 = √ᾱ_t x_t - √(1-ᾱ_t) v̂ (Salimans & Ho 2022, sec. 4).

    `cond` (B, 1 + C, H, W) is passed to the network at every call, so a conditional model sees the
    mask and the known values at every step. `calls` counts network evaluations.

    `clip` bounds x̂_0 to [-clip, clip] (normalised units), as DDPM/DDIM implementations clip to the
    data range: at the first steps of an ε-model √ᾱ_t is ~4e-5 (cosine, t = T-1), so ε̂'s error is
    amplified ~20,000-fold and, with no bound, DDNM's corrections never recover from it. z-scored
    fields seldom pass ±10, so the bound does not touch a sensible x̂_0. None disables it.
    """

    def __init__(self, model: nn.Module, schedule: Schedule, prediction: Prediction,
                 cond: torch.Tensor | None = None, clip: float | None = X0_CLIP) -> None:
        self.model, self.schedule, self.prediction, self.cond = model, schedule, prediction, cond
        self.clip = clip
        self.calls = 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.model(x_t, t, self.cond)  # ε̂ or v̂, (B, C, H, W)
        self.calls += 1
        x0, _ = predict_x0_eps(out, x_t, t, self.schedule.alphas_cumprod, self.prediction)
        return x0 if self.clip is None else x0.clamp(-self.clip, self.clip)


def model_denoiser(model: nn.Module, schedule: Schedule, prediction: Prediction,
                   cond: torch.Tensor | None = None, clip: float | None = X0_CLIP) -> ModelDenoiser:
    """Wrap `model(x_t, t, cond) -> ε̂ | v̂` as a denoiser `(x_t, t) -> x̂_0` that counts its calls."""
    return ModelDenoiser(model, schedule, prediction, cond, clip)


# ----------------------------------------------------------------------------------------------
# schedules


def respaced_timesteps(T: int, steps: int) -> torch.Tensor:
    """The `steps` training timesteps a sampler visits, ASCENDING: τ_i = round(i (T-1) / (steps-1)).

    Both ends are included, τ_0 = 0 and τ_{steps-1} = T-1 (improved-diffusion's `space_timesteps`
    convention, not DDIM's `range(0, T, T // steps)`, which never starts from pure noise at T-1).
    steps = 1 gives [T-1]. Samplers walk the list from the end.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..T = 1..{T}, got {steps}")
    if steps == 1:
        return torch.tensor([T - 1], dtype=torch.long)
    return torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long()  # spacing >= 1: distinct


def respace(schedule: Schedule, timesteps: torch.Tensor) -> Schedule:
    """The Markov chain on the kept timesteps: ᾱ'_i = ᾱ_{τ_i}, β'_i = 1 - ᾱ'_i / ᾱ'_{i-1}, ᾱ'_{-1} = 1
    (Nichol & Dhariwal 2021, sec. 4). Its posterior_variance is β̃'_i of Ho et al. eq. 7."""
    ac = schedule.alphas_cumprod[timesteps.to(schedule.alphas_cumprod.device)]
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    return Schedule(1 - ac / ac_prev, ac)


def jump_schedule(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """RePaint's time list (Lugmayr et al. 2022, sec. 4.2; reference code `get_schedule_jump` with
    n_sample = 1 and no second or third jump level).

    Times run from steps-1 down to -1 (-1 = the clean field). A pair (a, b) of consecutive entries
    with b = a - 1 is one denoising step (one network evaluation), b = a + 1 is one re-noising
    ("undo") step. Every time the walk reaches a multiple j of jump_length with
    j < steps - jump_length, it climbs back jump_length levels, one entry per level, until it has
    done so jump_n_sample - 1 times at that j. So consecutive entries always differ by exactly 1,
    and the number of denoising steps is

        steps + jump_length · (jump_n_sample - 1) · len(range(0, steps - jump_length, jump_length))

    which is 250 + 10 · 9 · 24 = 2,410 for RePaint's (250, 10, 10).
    """
    if steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"steps, jump_length and jump_n_sample must be >= 1, got "
                         f"{steps}, {jump_length}, {jump_n_sample}")
    jumps_left = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    t, times = steps, []
    while t >= 1:
        t -= 1
        times.append(t)
        if jumps_left.get(t, 0) > 0:
            jumps_left[t] -= 1
            for _ in range(jump_length):
                t += 1
                times.append(t)
    times.append(-1)
    return times


def jump_schedule_nfe(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> int:
    """Denoising steps (network evaluations) of `jump_schedule`, by the closed form in its docstring."""
    jump_points = len(range(0, steps - jump_length, jump_length))
    return steps + jump_length * (jump_n_sample - 1) * jump_points


# ----------------------------------------------------------------------------------------------
# small pieces


def randn(shape: Sequence[int], generator: Generators, like: torch.Tensor) -> torch.Tensor:
    """N(0, I) noise of `shape` in like's dtype and on like's device, drawn from `generator`.

    A sequence of generators draws row b of the batch from generator[b] (EDM's
    StackedRandomGenerator), so each member's noise is the same in any batch.
    """
    draw_dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    if isinstance(generator, torch.Generator):
        z = torch.randn(tuple(shape), generator=generator, dtype=draw_dtype, device=generator.device)
    else:
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        z = torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=draw_dtype, device=g.device)
                         for g in generator])
    return z.to(device=like.device, dtype=like.dtype)


def _timestep(tau: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(tau), dtype=torch.long, device=x.device)  # (B,)


def _observed(obs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(obs with 0 at hidden pixels, boolean mask broadcast to obs's shape)."""
    known = (mask > 0.5).expand_as(obs)
    return torch.where(known, obs, torch.zeros_like(obs)), known


def _check_sigma_y(sigma_y: float) -> None:
    if not sigma_y >= 0.0:
        raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")


def ddim_sigma(ac_t: float, ac_prev: float, eta: float) -> float:
    """σ_t(η) = η √((1-ᾱ_{t-1}) / (1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t-1})  (Song et al. 2021, eq. 16)."""
    return eta * ((1 - ac_prev) / (1 - ac_t) * (1 - ac_t / ac_prev)) ** 0.5


def ddim_step(x0: torch.Tensor, x_t: torch.Tensor, ac_t: float, ac_prev: float, eta: float,
              noise: torch.Tensor) -> torch.Tensor:
    """One DDIM step (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12):

        x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1-ᾱ_{t-1}-σ_t²) ε̂ + σ_t z,   ε̂ = (x_t - √ᾱ_t x̂_0) / √(1-ᾱ_t)

    Names: x0 = x̂_0, x_t = x_t, ac_t = ᾱ_t, ac_prev = ᾱ_{t-1}, eta = η (σ_t of `ddim_sigma`),
    noise = z. η = 0 is deterministic; η = 1 is the DDPM posterior q(x_{t-1} | x_t, x̂_0).
    """
    sigma = ddim_sigma(ac_t, ac_prev, eta)
    eps = (x_t - ac_t ** 0.5 * x0) / (1 - ac_t) ** 0.5
    direction = max(1 - ac_prev - sigma ** 2, 0.0) ** 0.5
    return ac_prev ** 0.5 * x0 + direction * eps + sigma * noise


def ancestral_step(x0: torch.Tensor, x_t: torch.Tensor, i: int, spaced: Schedule,
                   noise: torch.Tensor) -> torch.Tensor:
    """x_{i-1} ~ q(x_{i-1} | x_i, x̂_0) = N(μ̃_i, β̃'_i I) on the respaced chain (Ho et al. 2020,
    eqs. 6-7, with the respaced β'_i); β̃'_0 = 0, so the last step returns μ̃_0 = x̂_0."""
    mean, var, _ = posterior_mean_variance(x0, x_t, _timestep(i, x_t), spaced)
    return mean + var.sqrt() * noise


def renoise_step(x_prev: torch.Tensor, beta: float, noise: torch.Tensor) -> torch.Tensor:
    """RePaint's "undo" (Lugmayr et al. 2022, Algorithm 1 line 10): x_t ~ q(x_t | x_{t-1}) =
    N(√(1-β_t) x_{t-1}, β_t I), with β_t the respaced β'_t."""
    return (1 - beta) ** 0.5 * x_prev + beta ** 0.5 * noise


def merge_known(x_unknown: torch.Tensor, obs: torch.Tensor, known: torch.Tensor, ac: float,
                noise: torch.Tensor, sigma_y: float = 0.0) -> torch.Tensor:
    """RePaint's merge (Lugmayr et al. 2022, Algorithm 1 lines 5-8) at noise level ᾱ = ac:

        x^known = √ᾱ y + √(1-ᾱ) ε,    x = m ⊙ x^known + (1 - m) ⊙ x^unknown

    so at ᾱ = 1 (the clean end) the observed pixels are exactly y. With σ_y > 0 the observation
    already holds noise of variance ᾱσ_y² at this level, so x^known adds only √(max(1-ᾱ-ᾱσ_y², 0)) ε,
    and x^known replaces x^unknown only in part, by the weight w = min(1, √(1-ᾱ) / (√ᾱ σ_y)) (the
    λ_t of DDNM+, Wang et al. 2023 eq. 19): full replacement while the diffusion noise dominates,
    none at the clean end. Names: y = obs, m = known.
    """
    if sigma_y == 0.0:
        x_known = ac ** 0.5 * obs + (1 - ac) ** 0.5 * noise
        return torch.where(known, x_known, x_unknown)
    x_known = ac ** 0.5 * obs + max(1 - ac - ac * sigma_y ** 2, 0.0) ** 0.5 * noise
    weight = min(1.0, ((1 - ac) / ac) ** 0.5 / sigma_y)
    return torch.where(known, x_unknown + weight * (x_known - x_unknown), x_unknown)


def _paste_known(x: torch.Tensor, obs: torch.Tensor | None, mask: torch.Tensor | None,
                 sigma_y: float) -> torch.Tensor:
    """The observed values where mask == 1 (σ_y = 0 only: noisy observations are not pasted)."""
    if obs is None or mask is None or sigma_y > 0:
        return x
    obs, known = _observed(obs, mask)
    return torch.where(known, obs, x)


# ----------------------------------------------------------------------------------------------
# samplers for unconditional models


@torch.no_grad()
def repaint(denoiser: Denoiser, obs: torch.Tensor, mask: torch.Tensor, schedule: Schedule, *,
            generator: Generators, steps: int = 250, jump_length: int = 10, jump_n_sample: int = 10,
            sigma_y: float = 0.0) -> tuple[torch.Tensor, int]:
    """RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
    Models", Algorithm 1) on the respaced chain, with the jump schedule of its reference code.

    Symbols: i = t (respaced level), x = x_t, x0 = x̂_0, obs = x_0 of the known region (y), mask = m.
    Start x_{S-1} ~ N(0, I). For each pair (i, j) of `jump_schedule`:
      j = i - 1: x^unknown_{i-1} ~ N(μ̃_i(x_i, x̂_0), β̃'_i I)       (Ho et al. eqs. 6-7)
                 x_{i-1} = m ⊙ q_sample(y, τ_{i-1}) + (1 - m) ⊙ x^unknown_{i-1}   (`merge_known`;
                 the merge follows the step, as in Algorithm 1; at i-1 = -1, ᾱ = 1, so it is y)
      j = i + 1: x_{i+1} ~ N(√(1-β'_{i+1}) x_i, β'_{i+1} I)          (the "undo" re-noising)
    (The reference code instead merges just before each network call, with fresh noise; the known
    pixels of x_i have the same distribution either way.) σ_y > 0: see `merge_known`.
    """
    _check_sigma_y(sigma_y)
    obs, known = _observed(obs, mask)
    timesteps = respaced_timesteps(schedule.T, steps).tolist()
    spaced = respace(schedule, torch.tensor(timesteps))
    ac, betas = spaced.alphas_cumprod.tolist(), spaced.betas.tolist()
    x = randn(obs.shape, generator, obs)  # x_{S-1}, (B, C, H, W)
    nfe = 0
    times = jump_schedule(steps, jump_length, jump_n_sample)
    for i, j in zip(times[:-1], times[1:]):
        if j < i:
            x0 = denoiser(x, _timestep(timesteps[i], x))
            nfe += 1
            x = ancestral_step(x0, x, i, spaced, randn(x.shape, generator, x))  # unknown part of x_{i-1}
            ac_prev = ac[i - 1] if i > 0 else 1.0
            x = merge_known(x, obs, known, ac_prev, randn(x.shape, generator, x), sigma_y)
        else:
            x = renoise_step(x, betas[j], randn(x.shape, generator, x))
    return x, nfe


def null_space_correction(x0: torch.Tensor, obs: torch.Tensor, known: torch.Tensor,
                          weight: float = 1.0) -> torch.Tensor:
    """DDNM's range-null-space step for A = masking, A⁺ = Aᵀ (Wang et al. 2023, eq. 13 / eq. 17):

        x̂_{0|t} = x_{0|t} - λ A⁺(A x_{0|t} - y) = x_{0|t} + λ m ⊙ (y - x_{0|t})

    λ = weight = 1 replaces the observed pixels by y exactly (the noise-free DDNM)."""
    if weight == 1.0:
        return torch.where(known, obs, x0)
    return torch.where(known, x0 + weight * (obs - x0), x0)


@torch.no_grad()
def ddnm(denoiser: Denoiser, obs: torch.Tensor, mask: torch.Tensor, schedule: Schedule, *,
         generator: Generators, steps: int = 100, eta: float = 1.0,
         sigma_y: float = 0.0) -> tuple[torch.Tensor, int]:
    """DDNM (Wang et al. 2023, "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space
    Model", Algorithm 1) with A = masking and a DDIM step (Song et al. 2021 eq. 12) of
    stochasticity η in place of the DDPM step; η = 1 is exactly Algorithm 1. No resampling loop:
    `steps` network evaluations.

    Symbols: x = x_t, x0 = x_{0|t} (then x̂_{0|t}), obs = y, mask = m (A = diag(m), A⁺ = Aᵀ).
    Per level: x_{0|t} = D(x_t);  x̂_{0|t} = x_{0|t} + λ_t m ⊙ (y - x_{0|t});  DDIM step to x_{t-1}.

    σ_y > 0 follows DDNM+ (eqs. 17-19): writing the step as x_{t-1} = a_t x̂_{0|t} + b_t x_t + σ_t z,
    the correction puts noise a_t λ_t σ_y on the observed pixels, so λ_t = min(1, σ_t / (a_t σ_y)) and
    the fresh noise there shrinks to √(σ_t² - (a_t λ_t σ_y)²). DDNM+ therefore needs η > 0: with
    η = 0 (σ_t = 0) it never uses noisy observations.
    """
    _check_sigma_y(sigma_y)
    obs, known = _observed(obs, mask)
    timesteps = respaced_timesteps(schedule.T, steps).tolist()
    ac = schedule.alphas_cumprod[timesteps].tolist()
    x = randn(obs.shape, generator, obs)  # x_{S-1}
    for i in reversed(range(steps)):
        ac_t, ac_prev = ac[i], (ac[i - 1] if i > 0 else 1.0)
        x0 = denoiser(x, _timestep(timesteps[i], x))
        noise = randn(x.shape, generator, x)
        if sigma_y == 0.0:
            x0 = null_space_correction(x0, obs, known)
            x = ddim_step(x0, x, ac_t, ac_prev, eta, noise)
            continue
        sigma = ddim_sigma(ac_t, ac_prev, eta)
        a = ac_prev ** 0.5 - max(1 - ac_prev - sigma ** 2, 0.0) ** 0.5 * (ac_t / (1 - ac_t)) ** 0.5  # a_t
        lam = 1.0 if sigma >= a * sigma_y else sigma / (a * sigma_y)
        x0 = null_space_correction(x0, obs, known, lam)
        shrink = max(sigma ** 2 - (a * lam * sigma_y) ** 2, 0.0) ** 0.5 / sigma if sigma > 0 else 0.0
        x = ddim_step(x0, x, ac_t, ac_prev, eta, torch.where(known, shrink * noise, noise))
    return x, steps


# ----------------------------------------------------------------------------------------------
# samplers for conditional models (the conditioning lives in the denoiser)


def _start(shape: Sequence[int], generator: Generators, obs: torch.Tensor | None,
           device: torch.device | str | None, dtype: torch.dtype) -> torch.Tensor:
    like = obs if obs is not None else torch.empty(0, device=device, dtype=dtype)
    return randn(shape, generator, like)


@torch.no_grad()
def ddim(denoiser: Denoiser, shape: Sequence[int], schedule: Schedule, *, generator: Generators,
         steps: int = 50, eta: float = 0.0, obs: torch.Tensor | None = None, mask: torch.Tensor | None = None,
         sigma_y: float = 0.0, device: torch.device | str | None = None,
         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """DDIM sampling (Song et al. 2021, eq. 12, σ of eq. 16) over `respaced_timesteps(T, steps)`.

    Symbols: see `ddim_step`. η = 0 is deterministic given x_{S-1}; η = 1 draws from the DDPM
    posterior at every step and equals `ancestral`. When obs and mask are given (and σ_y = 0), the
    observed values are pasted into the final x_0; the conditioning itself is the denoiser's.
    The output takes obs's device and dtype, or else `device` and `dtype`.
    """
    _check_sigma_y(sigma_y)
    timesteps = respaced_timesteps(schedule.T, steps).tolist()
    ac = schedule.alphas_cumprod[timesteps].tolist()
    x = _start(shape, generator, obs, device, dtype)  # x_{S-1} ~ N(0, I)
    for i in reversed(range(steps)):
        x0 = denoiser(x, _timestep(timesteps[i], x))
        x = ddim_step(x0, x, ac[i], ac[i - 1] if i > 0 else 1.0, eta, randn(x.shape, generator, x))
    return _paste_known(x, obs, mask, sigma_y), steps


@torch.no_grad()
def ancestral(denoiser: Denoiser, shape: Sequence[int], schedule: Schedule, *, generator: Generators,
              steps: int = 50, obs: torch.Tensor | None = None, mask: torch.Tensor | None = None,
              sigma_y: float = 0.0, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2; eqs. 6-7) on the respaced chain:
    x_{i-1} ~ N(μ̃_i(x_i, x̂_0), β̃'_i I) with the respaced β'_i of `respace`. Observed values are
    pasted into the final x_0 as in `ddim`."""
    _check_sigma_y(sigma_y)
    timesteps = respaced_timesteps(schedule.T, steps).tolist()
    spaced = respace(schedule, torch.tensor(timesteps))
    x = _start(shape, generator, obs, device, dtype)  # x_{S-1} ~ N(0, I)
    for i in reversed(range(steps)):
        x0 = denoiser(x, _timestep(timesteps[i], x))
        x = ancestral_step(x0, x, i, spaced, randn(x.shape, generator, x))
    return _paste_known(x, obs, mask, sigma_y), steps

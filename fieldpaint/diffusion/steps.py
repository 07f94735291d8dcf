"""The pieces every sampler is built from: time lists, noise, and single steps of the chains.

Conventions (shared by `samplers`, `mmps` and `solvers`; see `samplers` for the full statement):
a denoiser maps (x_t (B, C, H, W), t (B,) long training timestep) to x̂_0 = E[x_0 | x_t]; x_t =
√ᾱ_t x_0 + √(1-ᾱ_t) ε (Ho et al. 2020, eq. 4); index i = -1 of a respaced chain is the clean field,
ᾱ'_{-1} = 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fieldpaint.diffusion.schedule import Prediction, Schedule, posterior_mean_variance

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> x̂_0
Generators = torch.Generator | Sequence[torch.Generator]
# σ_y, the observation-noise std in normalised units: one float for every pixel, or a tensor
# broadcastable to (B, C, H, W): per channel (1, C, 1, 1), per pixel (B, C, H, W). 0 = exact.
SigmaY = float | torch.Tensor

X0_CLIP = 10.0  # bound on x̂_0 in normalised (z-score) units, for every sampler


# ----------------------------------------------------------------------------------------------
# time lists


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
# noise, observations, never-valid pixels


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


def timestep(tau: int, x: torch.Tensor) -> torch.Tensor:
    """The training timestep τ as the denoiser's (B,) long t."""
    return torch.full((x.shape[0],), int(tau), dtype=torch.long, device=x.device)


def observed(obs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(obs with 0 at hidden pixels, boolean mask broadcast to obs's shape)."""
    known = (mask > 0.5).expand_as(obs)
    return torch.where(known, obs, torch.zeros_like(obs)), known


def check_sigma_y(sigma_y: SigmaY) -> None:
    """σ_y >= 0: a float, or a tensor with no NaN and no negative entry."""
    if isinstance(sigma_y, torch.Tensor):
        if sigma_y.numel() and not bool((sigma_y >= 0).all()):
            raise ValueError(f"sigma_y must be >= 0 everywhere, got min {float(sigma_y.min())}"
                             f"{' and NaN' if bool(sigma_y.isnan().any()) else ''}")
        return
    if not sigma_y >= 0.0:
        raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")


def sigma_like(sigma_y: SigmaY, like: torch.Tensor) -> SigmaY:
    """σ_y checked, a float as it is, a tensor on like's device and dtype, broadcastable to like's shape."""
    check_sigma_y(sigma_y)
    if not isinstance(sigma_y, torch.Tensor):
        return float(sigma_y)
    if sigma_y.ndim > like.ndim or torch.broadcast_shapes(sigma_y.shape, like.shape) != like.shape:
        raise ValueError(f"sigma_y of shape {tuple(sigma_y.shape)} does not broadcast to {tuple(like.shape)}")
    return sigma_y.to(device=like.device, dtype=like.dtype)


def is_noisy(sigma_y: SigmaY) -> bool:
    """Whether any observation is noisy (σ_y > 0 somewhere)."""
    return bool((sigma_y > 0).any()) if isinstance(sigma_y, torch.Tensor) else sigma_y > 0


def fixed_pixels(fixed: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """`fixed` (B, 1 or C, H, W), bool or float (> 0.5 = fixed), as a boolean mask of like's shape."""
    return None if fixed is None else (fixed.to(like.device) > 0.5).expand_as(like)


def apply_fixed(x0: torch.Tensor, fixed: torch.Tensor | None) -> torch.Tensor:
    """x̂_0 with 0 at pixels whose x_0 is known to be exactly 0 (never-valid pixels, e.g. land).

    Training sets x_0 = 0 there and never scores the network's output (`diffusion_loss`), so the
    network's x̂_0 there is unconstrained; the samplers put the training value back at every step.
    The chain then carries x_t = √(1-ᾱ_t) ε there, as in training, and ends at exactly 0."""
    return x0 if fixed is None else torch.where(fixed, torch.zeros_like(x0), x0)


def paste_known(x: torch.Tensor, obs: torch.Tensor | None, mask: torch.Tensor | None,
                sigma_y: SigmaY) -> torch.Tensor:
    """The observed values where mask == 1 and σ_y = 0: noisy observations are not pasted (with a
    per-channel or per-pixel σ_y, the exact ones still are)."""
    if obs is None or mask is None:
        return x
    if not isinstance(sigma_y, torch.Tensor) and sigma_y > 0:
        return x
    obs, known = observed(obs, mask)
    if isinstance(sigma_y, torch.Tensor):
        known = known & (sigma_y.to(known.device) == 0)
    return torch.where(known, obs, x)


def start_noise(shape: Sequence[int], generator: Generators, obs: torch.Tensor | None,
                device: torch.device | str | None, dtype: torch.dtype) -> torch.Tensor:
    """x_{S-1} ~ N(0, I) on obs's device and dtype, or else on `device` in `dtype`."""
    like = obs if obs is not None else torch.empty(0, device=device, dtype=dtype)
    return randn(shape, generator, like)


def check_eps_deterministic(prediction: Prediction, eta: float) -> str | None:
    """A warning (or None) for deterministic sampling (η = 0) of an ε-predicting model.

    x̂_0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t multiplies ε̂'s error by √(1-ᾱ_t)/√ᾱ_t, ≈ 2e4 at t = T-1 of
    the cosine schedule (√ᾱ = 4.9e-5), where a v-model's x̂_0 = √ᾱ x_t - √(1-ᾱ) v̂ carries v̂'s error
    at most once. With η = 0 nothing re-randomises the chain afterwards, so that error reaches the
    output: on the Gaussian oracle, an error of 1e-3 in ε̂ moves the 20-step output by 1.86 (RMS),
    the same error in v̂ by 0.001, and in ε̂ with η = 1 by 0.84 (fresh noise removes only part of it;
    tests/test_samplers.py::test_eps_deterministic_amplifies_eps_errors). The caller decides whether
    to warn or refuse."""
    if prediction == "eps" and eta == 0.0:
        return ("deterministic sampling (eta = 0) of an eps-predicting model amplifies the network's "
                "eps error by 1/sqrt(alpha_bar) (~2e4 at the first step of the cosine schedule); "
                "use eta > 0 or a v-predicting model")
    return None


# ----------------------------------------------------------------------------------------------
# single steps


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
    mean, var, _ = posterior_mean_variance(x0, x_t, timestep(i, x_t), spaced)
    return mean + var.sqrt() * noise


def renoise_step(x_prev: torch.Tensor, beta: float, noise: torch.Tensor) -> torch.Tensor:
    """RePaint's "undo" (Lugmayr et al. 2022, Algorithm 1 line 10): x_t ~ q(x_t | x_{t-1}) =
    N(√(1-β_t) x_{t-1}, β_t I), with β_t the respaced β'_t."""
    return (1 - beta) ** 0.5 * x_prev + beta ** 0.5 * noise


def merge_known(x_unknown: torch.Tensor, obs: torch.Tensor, known: torch.Tensor, ac: float,
                noise: torch.Tensor, sigma_y: SigmaY = 0.0) -> torch.Tensor:
    """RePaint's merge (Lugmayr et al. 2022, Algorithm 1 lines 5-8) at noise level ᾱ = ac:

        x^known = √ᾱ y + √(1-ᾱ) ε,    x = m ⊙ x^known + (1 - m) ⊙ x^unknown

    so at ᾱ = 1 (the clean end) the observed pixels are exactly y. Names: y = obs, m = known.

    σ_y > 0 is a HEURISTIC, not a posterior: the observation already holds noise of variance ᾱσ_y²
    at this level, so x^known adds only √(max(1-ᾱ-ᾱσ_y², 0)) ε, and x^known replaces x^unknown only
    in part, by the weight w = min(1, √(1-ᾱ) / (√ᾱ σ_y)) (the λ_t of DDNM+, Wang et al. 2023
    eq. 19). Once w < 1 the merged pixel (1-w) x^unknown + w x^known has diffusion-noise variance
    ((1-w)² + w²)(1-ᾱ) + ..., not 1-ᾱ, and the pull towards y is not the likelihood's: on the
    Gaussian oracle the members are ~4x over-confident at observed pixels (spread 0.024 against
    the exact posterior's 0.092 at σ_y = 0.1; tests/test_samplers.py). Use `mmps` for σ_y > 0.
    A tensor σ_y (per channel or pixel) applies the same rule pixel by pixel; where it is 0 the
    merge is the exact one.
    """
    if not isinstance(sigma_y, torch.Tensor):
        if sigma_y == 0.0:
            x_known = ac ** 0.5 * obs + (1 - ac) ** 0.5 * noise
            return torch.where(known, x_known, x_unknown)
        x_known = ac ** 0.5 * obs + max(1 - ac - ac * sigma_y ** 2, 0.0) ** 0.5 * noise
        weight = min(1.0, ((1 - ac) / ac) ** 0.5 / sigma_y)
        return torch.where(known, x_unknown + weight * (x_known - x_unknown), x_unknown)
    x_known = ac ** 0.5 * obs + (1 - ac - ac * sigma_y ** 2).clamp(min=0.0).sqrt() * noise
    ratio = ((1 - ac) / ac) ** 0.5
    weight = torch.where(sigma_y > 0, (ratio / sigma_y.clamp(min=1e-30)).clamp(max=1.0), torch.ones_like(sigma_y))
    merged = torch.where(weight == 1.0, x_known, x_unknown + weight * (x_known - x_unknown))
    return torch.where(known, merged, x_unknown)


def null_space_correction(x0: torch.Tensor, obs: torch.Tensor, known: torch.Tensor,
                          weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """DDNM's range-null-space step for A = masking, A⁺ = Aᵀ (Wang et al. 2023, eq. 13 / eq. 17):

        x̂_{0|t} = x_{0|t} - λ A⁺(A x_{0|t} - y) = x_{0|t} + λ m ⊙ (y - x_{0|t})

    λ = weight = 1 replaces the observed pixels by y exactly (the noise-free DDNM); a tensor λ
    (per channel or pixel) does so wherever it is 1."""
    if isinstance(weight, torch.Tensor):
        corrected = torch.where(weight == 1.0, obs, x0 + weight * (obs - x0))
        return torch.where(known, corrected, x0)
    if weight == 1.0:
        return torch.where(known, obs, x0)
    return torch.where(known, x0 + weight * (obs - x0), x0)

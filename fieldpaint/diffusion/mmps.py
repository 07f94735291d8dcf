"""Moment-matching posterior sampling (MMPS): an unconditional model, observations, and the Tweedie
covariance of the denoiser, solved for by conjugate gradients at every step.

Rozet, Andry, Lanusse & Louppe 2024, "Learning Diffusion Priors from Observations by Expectation
Maximization" (NeurIPS), section "Moment matching posterior sampling". With y = A x_0 + σ_y n, the
likelihood of a noisy state is approximated by matching the first two moments of p(x_0 | x_t):

    q(y | x_t) = N(y | A E[x_0 | x_t], Σ_y + A V[x_0 | x_t] Aᵀ),   Σ_y = diag(σ_y²)

and the posterior denoiser is E[x_0 | x_t, y] = E[x_0 | x_t] + V Aᵀ (Σ_y + A V Aᵀ)⁻¹ (y - A E[x_0 | x_t]),
exact when p(x_0 | x_t) is Gaussian (the Gaussian oracle). Tweedie's second-order formula for this
VP parameterisation (x_t = √ᾱ x_0 + √(1-ᾱ) ε, so E[x_0|x_t] = (x_t + (1-ᾱ) ∇ log p(x_t)) / √ᾱ and
V[x_0|x_t] = (1-ᾱ)/ᾱ · (I + (1-ᾱ) ∇² log p(x_t))) gives the covariance from the denoiser's Jacobian:

    V[x_0 | x_t] = (1-ᾱ)/√ᾱ · ∂E[x_0 | x_t]/∂x_t

applied to a vector as a vector-Jacobian product through the denoiser (the Jacobian of a true
posterior mean is symmetric, ∝ a Hessian, so Jᵀv = Jv; for a network Jᵀ is the cheap one).
A = masking, so A Aᵀ = I on the observed pixels and Aᵀ pads with zeros. The noise may differ by
channel and pixel (heteroscedastic): Σ_y = diag(σ_y²) with σ_y a float (Σ_y = σ_y² I, the paper's
case) or a tensor broadcastable to (B, C, H, W); σ_y = 0 at a pixel makes it an exact observation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fieldpaint.diffusion.schedule import Schedule
from fieldpaint.diffusion.steps import X0_CLIP
from fieldpaint.diffusion.steps import (Denoiser, Generators, SigmaY, apply_fixed, ddim_step, fixed_pixels,
                                        observed, paste_known, randn, respaced_timesteps, sigma_like, timestep)

Operator = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # p -> (G p, H p)


def tweedie_covariance_scale(ac: float) -> float:
    """(1-ᾱ)/√ᾱ: V[x_0 | x_t] = (1-ᾱ)/√ᾱ · ∂E[x_0 | x_t]/∂x_t for x_t = √ᾱ x_0 + √(1-ᾱ) ε."""
    return (1 - ac) / ac ** 0.5


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))  # per batch row, (B, 1, 1, 1)


def conjugate_gradient(operator: Operator, b: torch.Tensor, iterations: int,
                       tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve G u = b for each batch row by conjugate gradients (Hestenes & Stiefel 1952; Nocedal &
    Wright, "Numerical Optimization", Algorithm 5.2), G symmetric positive definite.

    `operator(p)` returns (G p, H p) for some linear H; the result is (u, H u), H u accumulated from
    the H p_k of the iterations (u = Σ α_k p_k), so H costs no extra application. A row stops
    (α = 0) once its residual is at most tol·|b|, so a row's result does not depend on its batch.
    Names: r = residual b - G u, p = search direction, rho = rᵀr, alpha = α_k, beta = β_k.
    """
    if iterations < 1:
        raise ValueError(f"cg iterations must be >= 1, got {iterations}")
    u, r = torch.zeros_like(b), b.clone()
    p, rho = r.clone(), _dot(r, r)
    threshold = tol ** 2 * rho
    hu = None
    for _ in range(iterations):
        active = rho > threshold
        if not bool(active.any()):
            break
        gp, hp = operator(p)
        hu = torch.zeros_like(hp) if hu is None else hu
        pgp = _dot(p, gp)
        active = active & (pgp > 0)
        alpha = torch.where(active, rho / torch.where(active, pgp, torch.ones_like(pgp)), torch.zeros_like(rho))
        u, hu, r = u + alpha * p, hu + alpha * hp, r - alpha * gp
        rho_new = _dot(r, r)
        beta = torch.where(active, rho_new / torch.where(active, rho, torch.ones_like(rho)), torch.zeros_like(rho))
        p, rho = r + beta * p, torch.where(active, rho_new, rho)
    return u, (operator(u)[1] if hu is None else hu)


def moment_matching_denoise(denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor, ac: float, obs: torch.Tensor,
                            known: torch.Tensor, sigma_y: SigmaY, cg_iterations: int, cg_tol: float = 1e-6,
                            fixed: torch.Tensor | None = None) -> torch.Tensor:
    """E[x_0 | x_t, y] ≈ x̂_0 + V Aᵀ u, (diag(σ_y²) + A V Aᵀ) u = y - A x̂_0 (see the module docstring).

    Names: x0 = x̂_0 = E[x_0 | x_t], ac = ᾱ_t, obs = y (0 off `known` = A's pixels), V = the Tweedie
    covariance (1-ᾱ)/√ᾱ · Jᵀ (vector-Jacobian product, one backward pass per CG iteration). The
    denoiser is called once, under enable_grad; it must be differentiable in x_t. `fixed` pixels
    get x̂_0 = 0 before and after the correction (and so no covariance: V is that of P x̂_0).
    sigma_y: a float or a tensor broadcastable to x_t's shape (diag(σ_y²) acts elementwise).
    """
    noise_var = sigma_like(sigma_y, x_t) ** 2  # the diagonal of Σ_y
    scale = tweedie_covariance_scale(ac)
    with torch.enable_grad():
        x_in = x_t.detach().requires_grad_(True)
        x0 = apply_fixed(denoiser(x_in, t), fixed)

        def covariance(v: torch.Tensor) -> torch.Tensor:  # V v = (1-ᾱ)/√ᾱ · Jᵀ v
            (g,) = torch.autograd.grad(x0, x_in, v, retain_graph=True, allow_unused=True)
            return scale * g if g is not None else torch.zeros_like(v)

        def operator(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # v on A's pixels
            cv = covariance(v)
            return noise_var * v + torch.where(known, cv, torch.zeros_like(cv)), cv

        residual = torch.where(known, obs - x0.detach(), torch.zeros_like(obs))  # y - A x̂_0
        _, correction = conjugate_gradient(operator, residual, cg_iterations, cg_tol)  # V Aᵀ u
    return apply_fixed(x0.detach() + correction.detach(), fixed)


@torch.no_grad()
def mmps(denoiser: Denoiser, obs: torch.Tensor, mask: torch.Tensor, schedule: Schedule, *,
         generator: Generators, steps: int = 50, eta: float = 1.0, sigma_y: SigmaY = 0.0,
         cg_iterations: int = 10, cg_tol: float = 1e-6,
         fixed: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """MMPS (Rozet et al. 2024; see the module docstring) with a DDIM step (Song et al. 2021 eq. 12)
    of stochasticity η over `respaced_timesteps(T, steps)`, for an UNCONDITIONAL denoiser.

    Per level: x̂_0 = E[x_0 | x_t] (one network call, with grad), the moment-matched correction
    x̂_0 ← x̂_0 + V Aᵀ u by ≤ cg_iterations CG iterations (one vector-Jacobian product each; stops
    once |residual| ≤ cg_tol |y - A x̂_0|), then the DDIM step to x_{t-1}. Symbols: x = x_t, obs = y,
    mask = the observed pixels (A), sigma_y = σ_y (y = A x_0 + σ_y ⊙ n; a float or a tensor
    broadcastable to (B, C, H, W), e.g. per channel (1, C, 1, 1)), eta = η.
    With the Gaussian oracle and converged CG the corrected x̂_0 IS E[x_0 | x_t, y], so MMPS equals
    conditional DDIM with the exact conditional denoiser (tests/test_mmps.py). σ_y = 0: the observed
    values (those with σ_y = 0) are pasted into the final x_0. x̂_0 = 0 at `fixed` pixels.

    Returns (x_0, nfe), nfe = `steps` forward passes; each step also runs up to cg_iterations
    backward passes (each costing ≈ 2 forward passes).
    """
    obs_known, known = observed(obs, mask)
    sigma_y = sigma_like(sigma_y, obs_known)
    fixed = fixed_pixels(fixed, obs_known)
    timesteps = respaced_timesteps(schedule.T, steps).tolist()
    ac = schedule.alphas_cumprod[timesteps].tolist()
    x = randn(obs_known.shape, generator, obs_known)  # x_{S-1} ~ N(0, I)
    for i in reversed(range(steps)):
        x0 = moment_matching_denoise(denoiser, x, timestep(timesteps[i], x), ac[i], obs_known, known, sigma_y,
                                     cg_iterations, cg_tol, fixed)
        # The same bound as the denoiser's own x̂_0 (samplers.X0_CLIP): a trained network's
        # Jacobian is not an exact covariance, and on the demo's 2-minute model a few unclipped
        # corrections grew without bound (MSE 1e12 at 99 % hidden on tracks).
        x0 = x0.clamp(-X0_CLIP, X0_CLIP)
        x = ddim_step(x0, x, ac[i], ac[i - 1] if i > 0 else 1.0, eta, randn(x.shape, generator, x))
    return apply_fixed(paste_known(x, obs_known, mask, sigma_y), fixed), steps

"""Every sampler's chain, propagated in closed form, against the sampler's own ensemble.

With a linear denoiser x̂_0 = M_τ x_t + c_τ (the exact E[x_0 | x_t] of a Gaussian prior N(m_0, Σ_0):
M_τ = √ᾱ Σ_0 (ᾱ Σ_0 + (1-ᾱ) I)⁻¹, c_τ = m_0 - √ᾱ M_τ m_0), every step of every sampler is affine in
its state plus independent Gaussian noise, x' = F x + g + L z, so the mean and covariance of the
state propagate exactly: m' = F m + g, C' = F C Fᵀ + L Lᵀ. The propagators below are written from
the papers' equations (each names its own), not from fieldpaint's step functions, and the
ensemble of the sampler under test (N_MEMBERS members) is compared with the exact law N(m, C) of
its output by statistics whose sampling distributions are known exactly:

- mean: N_MEMBERS · dᵀ C⁻¹ d ~ χ²_n, d = ensemble mean - m, n = free pixels;
- total Mahalanobis: Σ_k (x_k - m)ᵀ C⁻¹ (x_k - m) ~ χ²_{N_MEMBERS · n};
- variance per pixel and per whitened coordinate w = L⁻¹(x - m), L Lᵀ = C: N_MEMBERS · var_k ~ χ²_{N_MEMBERS}
  about the true mean (each coordinate; Bonferroni over the 2n of them).

Each test is two-sided at total level P_FALSE_ALARM (so with fixed seeds a pass is a pass; a wrong
noise level anywhere in a chain moves at least one statistic far outside). Observed pixels with
σ_y = 0 and fixed (never-valid) pixels have zero variance: they are checked to be exact instead.
"""

import math

import pytest
import torch
from scipy import stats

from fieldpaint.diffusion.samplers import (ancestral, ddim, ddnm, dpm_solver_2m, jump_schedule, mmps, repaint,
                                           respaced_timesteps)
from fieldpaint.diffusion.schedule import make_schedule
from fieldpaint.diffusion.solvers import sampling_timesteps

T = 100
SCHEDULE = make_schedule("cosine", T)
AC = SCHEDULE.alphas_cumprod
H = W = 4
N = H * W
N_MEMBERS = 3000
P_FALSE_ALARM = 1e-4  # per statistic family


def prior_covariance() -> torch.Tensor:
    """Σ_0: squared-exponential, ℓ = 1.5 px on the 4x4 grid, plus a nugget of 0.01. The small nugget
    couples neighbours strongly, so that a wrong noise level at the observed pixels of a state moves
    the hidden pixels' law visibly: with 0.05 instead, RePaint with half the known-pixel noise shifts
    the total Mahalanobis statistic by only -4.4 standard deviations, with 0.01 by -13.5 (computed
    with these propagators). m_0 is a fixed non-zero field."""
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    p = torch.stack([ys.reshape(-1), xs.reshape(-1)], 1).double()
    d2 = (p[:, None] - p[None]).pow(2).sum(-1)
    return torch.exp(-d2 / (2 * 1.5 ** 2)) + 0.01 * torch.eye(N, dtype=torch.float64)


SIGMA0 = prior_covariance()
M0 = torch.linspace(-0.5, 0.8, N, dtype=torch.float64)
TRUTH = M0 + torch.linalg.cholesky(SIGMA0) @ torch.randn(N, generator=torch.Generator().manual_seed(0),
                                                         dtype=torch.float64)
KNOWN = torch.zeros(N, dtype=torch.bool)
KNOWN[[0, 3, 5, 10, 12, 15]] = True
FIXED = torch.zeros(N, dtype=torch.bool)
FIXED[[6, 9]] = True  # never-valid pixels (x_0 = 0 exactly, as land in training)


def gaussian_denoiser_mats(mean: torch.Tensor, cov: torch.Tensor):
    """(M_τ, c_τ) of E[x_0 | x_t] for x_0 ~ N(mean, cov), x_t = √ᾱ x_0 + √(1-ᾱ) ε."""
    def mats(tau: int):
        a = AC[tau].item()
        gain = math.sqrt(a) * cov @ torch.linalg.inv(a * cov + (1 - a) * torch.eye(N, dtype=torch.float64))
        return gain, mean - math.sqrt(a) * gain @ mean
    return mats


def as_denoiser(mats):
    """The sampler-facing denoiser (x_t (B, 1, H, W), t (B,)) -> x̂_0 of the linear map (differentiable)."""
    def denoise(x, t):
        m, c = mats(int(t[0]))
        return (x.reshape(x.shape[0], N) @ m.T + c).reshape(x.shape)
    return denoise


def posterior(sigma_y: float):
    """N(μ_y, Σ_y) of x_0 | y for the prior and TRUTH (+ σ_y noise) observed at KNOWN."""
    y = TRUTH.clone()
    if sigma_y > 0:
        y[KNOWN] += sigma_y * torch.randn(int(KNOWN.sum()), generator=torch.Generator().manual_seed(1),
                                          dtype=torch.float64)
    o = KNOWN
    s = SIGMA0[o][:, o] + sigma_y ** 2 * torch.eye(int(o.sum()), dtype=torch.float64)
    gain = torch.linalg.solve(s, SIGMA0[o]).T
    return y, M0 + gain @ (y[o] - M0[o]), SIGMA0 - gain @ SIGMA0[o]


# ----------------------------------------------------------------------------------------------
# exact propagation


class Law:
    """N(m, C) of the state; `step` applies x' = F x + g + noise of covariance Q."""

    def __init__(self, m, c):
        self.m, self.c = m, c

    def step(self, f, g, q):
        self.m = f @ self.m + g
        self.c = f @ self.c @ f.T + q
        return self


EYE = torch.eye(N, dtype=torch.float64)


def _start() -> Law:
    return Law(torch.zeros(N, dtype=torch.float64), EYE.clone())


def _x0_map(mats, tau, fixed):
    m, c = mats(tau)
    p = torch.diag((~fixed).double()) if fixed is not None else EYE
    return p @ m, p @ c  # x̂_0 = P (M x + c)


def _ddim_affine(mx, cx, a, a_prev, eta):
    """Song et al. 2021 eq. 12 with σ of eq. 16, x̂_0 = mx x + cx: (F, g, Q)."""
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    d = math.sqrt(max(1 - a_prev - sigma ** 2, 0.0))
    f = math.sqrt(a_prev) * mx + d / math.sqrt(1 - a) * (EYE - math.sqrt(a) * mx)
    g = (math.sqrt(a_prev) - d * math.sqrt(a) / math.sqrt(1 - a)) * cx
    return f, g, sigma ** 2 * EYE


def _levels(steps):
    taus = respaced_timesteps(T, steps).tolist()
    ac = [AC[t].item() for t in taus]
    return taus, ac, (lambda i: ac[i - 1] if i > 0 else 1.0)


def exact_ddim(mats, steps, eta, fixed=None) -> Law:
    taus, ac, prev = _levels(steps)
    law = _start()
    for i in reversed(range(steps)):
        mx, cx = _x0_map(mats, taus[i], fixed)
        law.step(*_ddim_affine(mx, cx, ac[i], prev(i), eta))
    return law


def exact_ancestral(mats, steps, fixed=None) -> Law:
    """Ho et al. 2020 eqs. 6-7 on the respaced chain (β'_i = 1 - ᾱ'_i/ᾱ'_{i-1})."""
    taus, ac, prev = _levels(steps)
    law = _start()
    for i in reversed(range(steps)):
        mx, cx = _x0_map(mats, taus[i], fixed)
        a, ap = ac[i], prev(i)
        beta = 1 - a / ap
        k0, kt = math.sqrt(ap) * beta / (1 - a), math.sqrt(1 - beta) * (1 - ap) / (1 - a)
        law.step(k0 * mx + kt * EYE, k0 * cx, (1 - ap) / (1 - a) * beta * EYE)
    return law


def exact_repaint(mats, y, steps, jump_length, jump_n_sample, sigma_y, fixed=None) -> Law:
    """Lugmayr et al. 2022 Algorithm 1: ancestral step, merge at ᾱ'_{i-1} (x^known = √ᾱ y + √(1-ᾱ) ε,
    or with σ_y > 0 the weighted merge of `merge_known`: w = min(1, √((1-ᾱ)/ᾱ)/σ_y), noise
    √max(1-ᾱ-ᾱσ_y², 0)), undo x_{i+1} = √(1-β'_{i+1}) x_i + √β'_{i+1} z."""
    taus, ac, prev = _levels(steps)
    law = _start()
    k = torch.diag(KNOWN.double())
    times = jump_schedule(steps, jump_length, jump_n_sample)
    for i, j in zip(times[:-1], times[1:]):
        if j < i:
            mx, cx = _x0_map(mats, taus[i], fixed)
            a, ap = ac[i], prev(i)
            beta = 1 - a / ap
            k0, kt = math.sqrt(ap) * beta / (1 - a), math.sqrt(1 - beta) * (1 - ap) / (1 - a)
            law.step(k0 * mx + kt * EYE, k0 * cx, (1 - ap) / (1 - a) * beta * EYE)
            if sigma_y == 0:
                w, s2 = 1.0, 1 - ap
            else:
                w, s2 = min(1.0, math.sqrt((1 - ap) / ap) / sigma_y), max(1 - ap - ap * sigma_y ** 2, 0.0)
            law.step(EYE - w * k, w * math.sqrt(ap) * (k @ y), w ** 2 * s2 * k)
        else:
            beta = 1 - ac[j] / ac[j - 1] if j > 0 else 1 - ac[0]
            law.step(math.sqrt(1 - beta) * EYE, torch.zeros(N, dtype=torch.float64), beta * EYE)
    return law


def exact_ddnm(mats, y, steps, eta, sigma_y, fixed=None) -> Law:
    """Wang et al. 2023 eqs. 13 and 17-19: x̂_0 ← x̂_0 + λ m ⊙ (y - x̂_0), then the DDIM step, with
    the fresh noise at observed pixels shrunk to √(σ_t² - (a_t λ σ_y)²)."""
    taus, ac, prev = _levels(steps)
    law = _start()
    k = torch.diag(KNOWN.double())
    for i in reversed(range(steps)):
        mx, cx = _x0_map(mats, taus[i], fixed)
        a, ap = ac[i], prev(i)
        sigma = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        d = math.sqrt(max(1 - ap - sigma ** 2, 0.0))
        a_t = math.sqrt(ap) - d * math.sqrt(a / (1 - a))
        lam = 1.0 if sigma_y == 0 or sigma >= a_t * sigma_y else sigma / (a_t * sigma_y)
        mx, cx = (EYE - lam * k) @ mx, (EYE - lam * k) @ cx + lam * (k @ y)
        f, g, _ = _ddim_affine(mx, cx, a, ap, eta)
        shrink2 = 1.0 if sigma_y == 0 else (max(sigma ** 2 - (a_t * lam * sigma_y) ** 2, 0) / sigma ** 2
                                            if sigma > 0 else 0.0)
        q = sigma ** 2 * torch.diag(torch.where(KNOWN, shrink2, 1.0).double())
        law.step(f, g, q)
    return law


def exact_mmps(mats, y, steps, eta, sigma_y, fixed=None) -> Law:
    """Rozet et al. 2024: x̂_0 ← P[x̂_0 + V Aᵀ (σ_y² I + A V Aᵀ)⁻¹ (y - A x̂_0)], V = (1-ᾱ)/√ᾱ Jᵀ,
    J = P M (a direct solve: the sampler's CG is run to convergence), then the DDIM step."""
    taus, ac, prev = _levels(steps)
    law = _start()
    a_rows = EYE[KNOWN]  # A
    p = torch.diag((~fixed).double()) if fixed is not None else EYE
    for i in reversed(range(steps)):
        mx, cx = _x0_map(mats, taus[i], fixed)
        a, ap = ac[i], prev(i)
        v = (1 - a) / math.sqrt(a) * mx.T
        gain = v @ a_rows.T @ torch.linalg.inv(sigma_y ** 2 * torch.eye(a_rows.shape[0], dtype=torch.float64)
                                               + a_rows @ v @ a_rows.T)
        mx, cx = p @ (mx - gain @ a_rows @ mx), p @ (cx + gain @ (a_rows @ y - a_rows @ cx))
        law.step(*_ddim_affine(mx, cx, a, ap, eta))
    return law


def exact_dpm_solver(mats, steps, spacing, fixed=None) -> Law:
    """Lu et al. 2022 (DPM-Solver++), Algorithm 2, on the augmented state (x_t, x̂_0 of the previous
    level): first order at the first and the last (to λ = ∞) step."""
    taus = sampling_timesteps(SCHEDULE, steps, spacing).tolist()
    ac = [AC[t].item() for t in taus]
    lam = [0.5 * math.log(a / (1 - a)) for a in ac]
    z = torch.zeros(N, N, dtype=torch.float64)
    law = Law(torch.zeros(2 * N, dtype=torch.float64), torch.block_diag(EYE, z))
    h_prev = None
    for i in reversed(range(steps)):
        mx, cx = _x0_map(mats, taus[i], fixed)
        x0_f = torch.cat([mx, z], 1)  # x̂_0 as a map of the augmented state
        if i == 0:
            f = torch.cat([x0_f, x0_f], 0)
            law.step(f, torch.cat([cx, cx]), torch.zeros(2 * N, 2 * N, dtype=torch.float64))
            break
        h = lam[i - 1] - lam[i]
        coef = -math.sqrt(ac[i - 1]) * math.expm1(-h)
        ratio = math.sqrt(1 - ac[i - 1]) / math.sqrt(1 - ac[i])
        if h_prev is None:
            d_f, d_g = x0_f, cx
        else:
            r = h_prev / h
            d_f = (1 + 1 / (2 * r)) * x0_f - 1 / (2 * r) * torch.cat([z, EYE], 1)
            d_g = (1 + 1 / (2 * r)) * cx
        f = torch.cat([torch.cat([ratio * EYE, z], 1) + coef * d_f, x0_f], 0)
        law.step(f, torch.cat([coef * d_g, cx]), torch.zeros(2 * N, 2 * N, dtype=torch.float64))
        h_prev = h
    return Law(law.m[:N], law.c[:N, :N])


def finish(law: Law, y, sigma_y, fixed=None, paste=True) -> Law:
    """Observed values pasted (σ_y = 0) and fixed pixels at 0: those pixels become exact."""
    exact = torch.zeros(N, dtype=torch.bool)
    if paste and sigma_y == 0:
        exact |= KNOWN
    if fixed is not None:
        exact |= fixed
    value = torch.where(KNOWN, y, 0.0)
    m = torch.where(exact, value, law.m)
    c = law.c.clone()
    c[exact], c[:, exact] = 0.0, 0.0
    return Law(m, c)


# ----------------------------------------------------------------------------------------------
# the comparison


def check_ensemble(x: torch.Tensor, law: Law, exact: torch.Tensor) -> dict:
    """Assert the members x (K, N) follow N(law.m, law.c); pixels in `exact` must equal law.m."""
    x = x.reshape(x.shape[0], N).double()
    torch.testing.assert_close(x[:, exact], law.m[exact].expand(x.shape[0], -1), rtol=0, atol=1e-9)
    free = ~exact
    n, k = int(free.sum()), x.shape[0]
    m, c = law.m[free], law.c[free][:, free]
    chol = torch.linalg.cholesky(c)
    w = torch.linalg.solve_triangular(chol, (x[:, free] - m).T, upper=False).T  # (K, n) whitened, N(0, I)
    out = {"mean_chi2": float(k * w.mean(0).pow(2).sum()), "total_chi2": float(w.pow(2).sum())}
    lo, hi = stats.chi2.ppf(P_FALSE_ALARM / 2, n), stats.chi2.ppf(1 - P_FALSE_ALARM / 2, n)
    assert out["mean_chi2"] < hi, out  # one-sided: a shifted mean only makes it larger
    lo, hi = stats.chi2.ppf(P_FALSE_ALARM / 2, k * n), stats.chi2.ppf(1 - P_FALSE_ALARM / 2, k * n)
    assert lo < out["total_chi2"] < hi, out
    per = torch.cat([w.pow(2).sum(0), ((x[:, free] - m).pow(2).sum(0) / c.diagonal())])  # each ~ χ²_K
    q = P_FALSE_ALARM / (2 * per.numel())
    out["var_ratio_range"] = (float(per.min()) / k, float(per.max()) / k)
    assert stats.chi2.ppf(q, k) < per.min() and per.max() < stats.chi2.ppf(1 - q, k), out
    return out


def _gens(seed):
    return torch.Generator().manual_seed(seed)


PRIOR_MATS = gaussian_denoiser_mats(M0, SIGMA0)
CASES = [  # (sampler, sigma_y, fixed)
    ("repaint", 0.0, False), ("repaint", 0.0, True), ("repaint", 0.3, False),
    ("ddnm", 0.0, False), ("ddnm", 0.0, True), ("ddnm", 0.3, False),
    ("mmps", 0.0, False), ("mmps", 0.0, True), ("mmps", 0.3, False),
    ("ddim", 0.0, False), ("ddim_eta05", 0.0, True), ("ancestral", 0.0, True),
    ("dpm_solver", 0.0, False), ("dpm_solver", 0.0, True),
]
STEPS = 8
REPAINT = (6, 2, 5)  # steps, jump_length, jump_n_sample: 6 + 2·4·2 = 22 network evaluations, 16 undo steps


def run_case(name, sigma_y, use_fixed, seed=5):
    """(members (K, N), exact law of the output) for one sampler on the 4x4 linear-Gaussian oracle."""
    y, mu_y, cov_y = posterior(sigma_y)
    fixed = FIXED if use_fixed else None
    fixed_t = fixed.reshape(1, 1, H, W).expand(N_MEMBERS, -1, -1, -1) if use_fixed else None
    obs = y.reshape(1, 1, H, W).expand(N_MEMBERS, -1, -1, -1)
    mask = KNOWN.double().reshape(1, 1, H, W).expand(N_MEMBERS, -1, -1, -1)
    gen, prior = _gens(seed), as_denoiser(PRIOR_MATS)
    cond_mats = gaussian_denoiser_mats(mu_y, cov_y)
    cond = as_denoiser(cond_mats)
    shape = (N_MEMBERS, 1, H, W)
    common = dict(obs=obs, mask=mask, sigma_y=sigma_y, fixed=fixed_t)
    if name == "repaint":
        x, _ = repaint(prior, obs, mask, SCHEDULE, generator=gen, steps=REPAINT[0], jump_length=REPAINT[1],
                       jump_n_sample=REPAINT[2], sigma_y=sigma_y, fixed=fixed_t)
        law = exact_repaint(PRIOR_MATS, y, *REPAINT, sigma_y, fixed)
    elif name == "ddnm":
        x, _ = ddnm(prior, obs, mask, SCHEDULE, generator=gen, steps=STEPS, eta=1.0, sigma_y=sigma_y, fixed=fixed_t)
        law = exact_ddnm(PRIOR_MATS, y, STEPS, 1.0, sigma_y, fixed)
    elif name == "mmps":
        x, _ = mmps(prior, obs, mask, SCHEDULE, generator=gen, steps=STEPS, eta=1.0, sigma_y=sigma_y,
                    cg_iterations=N, cg_tol=1e-12, fixed=fixed_t)
        law = exact_mmps(PRIOR_MATS, y, STEPS, 1.0, sigma_y, fixed)
    elif name in ("ddim", "ddim_eta05"):
        eta = 0.0 if name == "ddim" else 0.5
        x, _ = ddim(cond, shape, SCHEDULE, generator=gen, steps=STEPS, eta=eta, dtype=torch.float64, **common)
        law = exact_ddim(cond_mats, STEPS, eta, fixed)
    elif name == "ancestral":
        x, _ = ancestral(cond, shape, SCHEDULE, generator=gen, steps=STEPS, dtype=torch.float64, **common)
        law = exact_ancestral(cond_mats, STEPS, fixed)
    else:
        x, _ = dpm_solver_2m(cond, shape, SCHEDULE, generator=gen, steps=STEPS, dtype=torch.float64, **common)
        law = exact_dpm_solver(cond_mats, STEPS, "logsnr", fixed)
    law = finish(law, y, sigma_y, fixed)
    exact = (KNOWN if sigma_y == 0 else torch.zeros(N, dtype=torch.bool)) | (FIXED if use_fixed else False)
    return x, law, exact


@pytest.mark.parametrize("name, sigma_y, use_fixed", CASES)
def test_ensemble_follows_the_exact_law_of_its_chain(name, sigma_y, use_fixed):
    x, law, exact = run_case(name, sigma_y, use_fixed)
    check_ensemble(x, law, exact)

"""MMPS (Rozet et al. 2024) on the analytic Gaussian oracle: exact identities and the exact posterior.

With a Gaussian prior, p(x_0 | x_t) is Gaussian, the Tweedie covariance (1-ᾱ)/√ᾱ ∂x̂_0/∂x_t is exact
and so is MMPS's moment-matched likelihood: with converged CG its corrected x̂_0 IS E[x_0 | x_t, y]
(checked here against `conditional_denoiser`), and MMPS equals conditional DDIM driven by that exact
conditional denoiser, member by member. With η = 0 the output is an affine map of the start noise,
x = G x_T + b, so K > H·W + 1 members determine it exactly (least squares, residual ~1e-12) and with
it the exact law N(b, G Gᵀ) of the output: the comparison with the kriging posterior below carries no
Monte-Carlo error at all. Reference values: `GaussianDenoiser.posterior` (tests/test_gaussian.py);
the chain-law values 0.949 / 0.961 are the closed-form propagation of tests/test_sampler_chains.py on
this grid (the same numbers tests/test_samplers.py's BOUNDS table quotes for DDIM-50).
"""

import pytest
import torch

from fieldpaint.diffusion.mmps import conjugate_gradient, moment_matching_denoise
from fieldpaint.diffusion.samplers import ddim, mmps, model_denoiser
from fieldpaint.diffusion.schedule import make_schedule
from fieldpaint.models.gaussian import GaussianDenoiser, conditional_denoiser

SCHEDULE = make_schedule("cosine", 1000)
H, W = 8, 16
PRIOR = GaussianDenoiser.matern(H, W, nu=1.5, length_scale=3.0, schedule=SCHEDULE, prediction="v")
K = 160  # > H·W + 1 = 129: enough members to identify the affine map of a deterministic sampler


def prior_denoiser(x, t):
    return PRIOR.denoise(x, t, SCHEDULE)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def case(coverage, seed, sigma_y=0.0):
    truth = PRIOR.sample(1, 1, gen(seed))
    mask = torch.zeros(H * W, dtype=torch.float64)
    mask[torch.randperm(H * W, generator=gen(seed + 1))[:round((1 - coverage) * H * W)]] = 1.0
    y = truth + sigma_y * torch.randn(truth.shape, generator=gen(seed + 2), dtype=torch.float64)
    return y, mask.reshape(1, 1, H, W)


def exact_law(x, seed):
    """(b, G Gᵀ) of x = G x_T + b, x_T the sampler's first draw from gen(seed): (N,), (N, N)."""
    x_T = torch.randn((K, 1, H, W), generator=gen(seed), dtype=torch.float64).reshape(K, -1)
    design = torch.cat([x_T, torch.ones(K, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, x.reshape(K, -1)).solution  # (N + 1, N)
    assert (design @ coef - x.reshape(K, -1)).abs().max() < 1e-8  # the sampler is affine in x_T
    g, b = coef[:-1].T, coef[-1]
    return b, g @ g.T


def test_conjugate_gradient_solves_per_row_and_accumulates_the_side_product():
    a = torch.randn(3, 6, 6, generator=gen(0), dtype=torch.float64)
    spd = a @ a.transpose(1, 2) + 0.1 * torch.eye(6, dtype=torch.float64)
    h = torch.randn(3, 6, 6, generator=gen(1), dtype=torch.float64)
    b = torch.randn(3, 1, 1, 6, generator=gen(2), dtype=torch.float64)
    b[2] = 0  # a row with nothing to solve stays at 0
    op = lambda p: ((spd @ p.reshape(3, 6, 1)).reshape(p.shape), (h @ p.reshape(3, 6, 1)).reshape(p.shape))  # noqa: E731
    u, hu = conjugate_gradient(op, b, iterations=6)
    expected = torch.linalg.solve(spd, b.reshape(3, 6, 1))
    torch.testing.assert_close(u.reshape(3, 6, 1), expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(hu.reshape(3, 6, 1), h @ expected, rtol=1e-8, atol=1e-10)
    assert bool((u[2] == 0).all())


@pytest.mark.parametrize("sigma_y", [0.0, 0.1])
@pytest.mark.parametrize("t", [10, 500, 990])
def test_moment_matched_x0_is_the_exact_conditional_denoiser(sigma_y, t):
    y, mask = case(0.5, seed=3, sigma_y=sigma_y)
    y, mask = y.expand(2, -1, -1, -1), mask.expand(2, -1, -1, -1)
    x_t = torch.randn(2, 1, H, W, generator=gen(4), dtype=torch.float64)
    tt = torch.full((2,), t)
    ac = SCHEDULE.alphas_cumprod[t].item()
    known = (mask > 0.5).expand_as(y)
    got = moment_matching_denoise(prior_denoiser, x_t, tt, ac, torch.where(known, y, 0.0), known, sigma_y,
                                  cg_iterations=H * W, cg_tol=1e-13)
    expected = conditional_denoiser(PRIOR, y, mask, SCHEDULE, sigma_y)(x_t, tt)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-7)  # CG converged to 1e-13


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("coverage, sigma_y", [(0.5, 0.0), (0.95, 0.0), (0.5, 0.1), (0.95, 0.1)])
def test_mmps_equals_ddim_with_the_exact_conditional_denoiser(coverage, sigma_y, eta):
    y, mask = case(coverage, seed=5, sigma_y=sigma_y)
    y, mask = y.expand(4, -1, -1, -1), mask.expand(4, -1, -1, -1)
    gens = lambda: [gen(10 + k) for k in range(4)]  # noqa: E731
    a, nfe = mmps(prior_denoiser, y, mask, SCHEDULE, generator=gens(), steps=10, eta=eta, sigma_y=sigma_y,
                  cg_iterations=H * W, cg_tol=1e-13)
    cond = conditional_denoiser(PRIOR, y, mask, SCHEDULE, sigma_y)
    b, _ = ddim(cond, y.shape, SCHEDULE, generator=gens(), steps=10, eta=eta, obs=y, mask=mask, sigma_y=sigma_y)
    assert nfe == 10
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# The exact law of MMPS-50 (η = 0, converged CG) against the kriging posterior on hidden pixels.
# Chain values (K → ∞, from the closed-form propagation): relative mean error < 1e-4, spread ratio
# 0.949 at 50 % and 0.961 at 95 % hidden (σ_y = 0): DDIM-50's discretisation, which MMPS inherits.
# Tolerances: mean error 1e-3 (CG tolerance 1e-10 and the start's √ᾱ_{T-1} μ ≈ 5e-5 μ offset);
# spread within 0.01 of the chain value for σ_y = 0, and within [0.93, 0.98] for σ_y = 0.1 (the
# σ_y = 0 values ± 0.015, as σ_y = 0.1 barely changes the hidden pixels' posterior). RePaint, for
# comparison, is asserted at < 0.2 / < 0.8 mean error (tests/test_samplers.py).
CHAIN_SPREAD = {0.5: 0.949, 0.95: 0.961}


@pytest.mark.parametrize("coverage", [0.5, 0.95])
@pytest.mark.parametrize("sigma_y", [0.0, 0.1])
def test_mmps_reproduces_the_kriging_posterior(coverage, sigma_y):
    y, mask = case(coverage, seed=40, sigma_y=sigma_y)
    x, _ = mmps(prior_denoiser, y.expand(K, -1, -1, -1), mask.expand(K, -1, -1, -1), SCHEDULE, generator=gen(41),
                steps=50, eta=0.0, sigma_y=sigma_y, cg_iterations=H * W, cg_tol=1e-10)
    mean, cov = exact_law(x, 41)
    mu, sd = PRIOR.posterior(y, mask, sigma_y)
    hidden = mask.reshape(-1) < 0.5
    mu, sd = mu.reshape(-1)[hidden], sd.reshape(-1)[hidden]
    rel_err = ((mean[hidden] - mu).pow(2).mean() / mu.pow(2).mean()).sqrt().item()
    ratio = (cov.diagonal()[hidden].mean() / sd.pow(2).mean()).sqrt().item()
    print(f"mmps-50 {coverage} σ_y={sigma_y}: relative mean error {rel_err:.2e}, spread ratio {ratio:.4f}")
    assert rel_err < 1e-3
    if sigma_y == 0.0:
        assert ratio == pytest.approx(CHAIN_SPREAD[coverage], abs=0.01)
    else:
        assert 0.93 < ratio < 0.98


def test_mmps_through_a_network_wrapper_counts_forward_passes():
    """MMPS differentiates through `model_denoiser` (a v-model here) and calls the network once per step."""
    y, mask = case(0.7, seed=7)
    net = model_denoiser(PRIOR, SCHEDULE, "v")
    x, nfe = mmps(net, y.float().expand(2, -1, -1, -1), mask.float().expand(2, -1, -1, -1), SCHEDULE,
                  generator=gen(8), steps=6, cg_iterations=3)
    known = (mask > 0.5).expand(2, -1, -1, -1)
    assert nfe == 6 == net.calls and bool(torch.isfinite(x).all())
    assert torch.equal(x[known], y.float().expand(2, -1, -1, -1)[known])


def test_a_denoiser_with_a_wild_jacobian_cannot_blow_mmps_up():
    """A trained network's Jacobian is no exact covariance: on the demo's briefly trained model a
    few MMPS corrections grew without bound. The corrected x̂0 is bounded like every sampler's
    (X0_CLIP z-scores), so the output is too."""
    from fieldpaint.diffusion.samplers import X0_CLIP

    def wild(x_t, t):  # x̂0 = 1e4 x_t: its "covariance" is huge and the CG correction with it
        return 1e4 * x_t

    obs = torch.randn(2, 1, 8, 8, generator=gen(0))
    mask = (torch.rand(2, 1, 8, 8, generator=gen(1)) < 0.05).float()
    x, _ = mmps(wild, obs, mask, SCHEDULE, generator=gen(2), steps=10, cg_iterations=5)
    hidden = mask.expand_as(x) < 0.5
    assert bool(torch.isfinite(x).all()) and float(x[hidden].abs().max()) <= X0_CLIP + 1e-4

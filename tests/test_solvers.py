"""DPM-Solver++(2M) (Lu et al. 2022) with the conditional Gaussian oracle, against DDIM-50.

Both samplers are deterministic given x_T, and with the exact (linear) E[x_0 | x_t, y] of
`conditional_denoiser` each is an affine map x = G x_T + b of the start noise: K > H·W + 1 members
identify it exactly (least squares), hence the exact law N(b, G Gᵀ) of the output, with no
Monte-Carlo error. Compared with the kriging posterior (`GaussianDenoiser.posterior`) on hidden
pixels: relative mean error |b - μ| / |μ| and spread ratio rms(√diag G Gᵀ) / rms(σ_post).
Chain values on this grid (the same as the closed-form propagation of tests/test_sampler_chains.py):
    DDIM-50 (η = 0):         spread 0.949 (50 % hidden), 0.961 (95 % hidden)
    DPM-Solver++ 10/15/20:   spread 0.978 / 1.032 / 1.028 (50 %), 1.013 / 1.040 / 1.030 (95 %)
    (with DDIM's uniform-in-t levels instead of uniform-in-λ: 1.30 / - / 1.18 at 50 %, hence the default)
"""

import pytest
import torch

from fieldpaint.diffusion.samplers import ddim, dpm_solver_2m
from fieldpaint.diffusion.schedule import make_schedule
from fieldpaint.diffusion.solvers import logsnr_timesteps
from fieldpaint.models.gaussian import GaussianDenoiser, conditional_denoiser

SCHEDULE = make_schedule("cosine", 1000)
H, W = 8, 16
PRIOR = GaussianDenoiser.matern(H, W, nu=1.5, length_scale=3.0, schedule=SCHEDULE, prediction="v")
K = 160


def gen(seed):
    return torch.Generator().manual_seed(seed)


def case(coverage, seed):
    truth = PRIOR.sample(1, 1, gen(seed))
    mask = torch.zeros(H * W, dtype=torch.float64)
    mask[torch.randperm(H * W, generator=gen(seed + 1))[:round((1 - coverage) * H * W)]] = 1.0
    return truth, mask.reshape(1, 1, H, W)


def law_errors(sampler, coverage, **kwargs):
    """(relative mean error, spread ratio) of the exact law of a deterministic sampler's output."""
    truth, mask = case(coverage, seed=40)
    obs, m = truth.expand(K, -1, -1, -1), mask.expand(K, -1, -1, -1)
    x, nfe = sampler(conditional_denoiser(PRIOR, obs, m, SCHEDULE), obs.shape, SCHEDULE, generator=gen(41),
                     obs=obs, mask=m, **kwargs)
    x_T = torch.randn((K, 1, H, W), generator=gen(41), dtype=torch.float64).reshape(K, -1)
    design = torch.cat([x_T, torch.ones(K, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, x.reshape(K, -1)).solution
    assert (design @ coef - x.reshape(K, -1)).abs().max() < 1e-8  # affine in x_T
    g, b = coef[:-1].T, coef[-1]
    mu, sd = PRIOR.posterior(truth, mask)
    hidden = mask.reshape(-1) < 0.5
    mu, sd = mu.reshape(-1)[hidden], sd.reshape(-1)[hidden]
    rel_err = ((b[hidden] - mu).pow(2).mean() / mu.pow(2).mean()).sqrt().item()
    ratio = ((g @ g.T).diagonal()[hidden].mean() / sd.pow(2).mean()).sqrt().item()
    return rel_err, ratio, nfe


@pytest.mark.parametrize("coverage", [0.5, 0.95])
def test_dpm_solver_at_10_to_20_nfe_matches_ddim_50(coverage):
    """Tolerance: the mean is exact for both (< 1e-3: only the start's √ᾱ_{T-1} μ offset and float64
    round-off); the spread of DPM-Solver++ at 10, 15 and 20 NFE must be within 0.01 of its chain
    value above and its distance from 1 at most DDIM-50's + 0.005 (15 NFE at 95 % hidden: 0.040
    against DDIM-50's 0.039; everywhere else DPM-Solver++ is closer)."""
    _, ddim_ratio, ddim_nfe = law_errors(ddim, coverage, steps=50, eta=0.0, dtype=torch.float64)
    assert ddim_nfe == 50 and ddim_ratio == pytest.approx({0.5: 0.949, 0.95: 0.961}[coverage], abs=0.01)
    chain = {0.5: {10: 0.978, 15: 1.032, 20: 1.028}, 0.95: {10: 1.013, 15: 1.040, 20: 1.030}}[coverage]
    for steps in (10, 15, 20):
        rel_err, ratio, nfe = law_errors(dpm_solver_2m, coverage, steps=steps, dtype=torch.float64)
        print(f"dpm-solver++(2M) {steps} NFE, {coverage}: error {rel_err:.1e}, spread {ratio:.4f} "
              f"(DDIM-50 {ddim_ratio:.4f})")
        assert nfe == steps and rel_err < 1e-3
        assert ratio == pytest.approx(chain[steps], abs=0.01)
        assert abs(ratio - 1) <= abs(ddim_ratio - 1) + 0.005


def test_first_order_dpm_solver_is_deterministic_ddim():
    """With two levels, DPM-Solver++ takes only first-order steps, which are DDIM η = 0 (Lu et al.
    2022, sec. 4.1: DDIM is DPM-Solver++(1)); same levels, same start."""
    truth, mask = case(0.5, seed=50)
    obs, m = truth.expand(2, -1, -1, -1), mask.expand(2, -1, -1, -1)
    cond = conditional_denoiser(PRIOR, obs, m, SCHEDULE)
    a, _ = dpm_solver_2m(cond, obs.shape, SCHEDULE, generator=gen(51), steps=2, spacing="time", obs=obs, mask=m)
    b, _ = ddim(cond, obs.shape, SCHEDULE, generator=gen(51), steps=2, eta=0.0, obs=obs, mask=m)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_logsnr_timesteps_are_distinct_ascending_and_span_the_schedule():
    for steps in (1, 2, 10, 20, 1000):
        taus = logsnr_timesteps(SCHEDULE, steps)
        assert len(taus) == steps and taus[-1] == 999 and (steps == 1 or taus[0] == 0)
        assert bool((taus.diff() > 0).all())
    with pytest.raises(ValueError):
        logsnr_timesteps(SCHEDULE, 1001)
    with pytest.raises(ValueError, match="spacing"):
        dpm_solver_2m(lambda x, t: x, (1, 1, 2, 2), SCHEDULE, generator=gen(0), steps=3, spacing="karras")

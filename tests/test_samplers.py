"""Samplers: schedules by hand and by reference code, exact observed values, and ensembles driven by
the analytic Gaussian denoiser against the exact Gaussian-process posterior (dense linear algebra).

Sources of the reference values:
- jump schedule: traced by hand from RePaint's `get_schedule_jump` (Lugmayr et al. 2022, reference
  code, n_sample = 1); 2,410 network evaluations for (250, 10, 10) = 250 + 10 * 9 * 24;
- respaced timesteps: improved-diffusion's `space_timesteps` (one section), re-implemented below;
- posterior mean and std: `GaussianDenoiser.posterior`, itself checked in tests/test_gaussian.py.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldpaint.config import from_dict
from fieldpaint.diffusion.reconstructor import DiffusionReconstructor
from fieldpaint.diffusion.samplers import (ancestral, check_eps_deterministic, ddim, ddim_step, ddnm,
                                           dpm_solver_2m, jump_schedule, jump_schedule_nfe, mmps, model_denoiser,
                                           repaint, respace, respaced_timesteps)
from fieldpaint.diffusion.schedule import make_schedule, q_sample
from fieldpaint.errors import FieldpaintError
from fieldpaint.models.gaussian import GaussianDenoiser, conditional_denoiser
from fieldpaint.models.registry import build_model

SCHEDULE = make_schedule("cosine", 1000)
H, W = 8, 16  # the oracle's grid: a periodic Matérn GRF, ν = 1.5, ℓ = 3 px, unit variance
PRIOR = GaussianDenoiser.matern(H, W, nu=1.5, length_scale=3.0, schedule=SCHEDULE, prediction="v")


def prior_denoiser(x, t):
    return PRIOR.denoise(x, t, SCHEDULE)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# jump schedule


def test_jump_schedule_small_case_traced_by_hand():
    # get_schedule_jump(t_T=6, n_sample=1, jump_length=2, jump_n_sample=2): jumps at {0, 2}, once each.
    assert jump_schedule(6, 2, 2) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]


def test_jump_schedule_repaint_default_counts():
    times = jump_schedule(250, 10, 10)
    down = sum(b < a for a, b in zip(times[:-1], times[1:]))
    up = sum(b > a for a, b in zip(times[:-1], times[1:]))
    assert down == 2410 == jump_schedule_nfe(250, 10, 10)  # network evaluations (RePaint, 250/10/10)
    assert up == 10 * 9 * 24 == 2160  # re-noising steps: 24 jump points (0, 10, ..., 230), 9 jumps of 10
    # The walk reaches 230 after 20 steps down and climbs back to 240 one level per entry.
    assert times[:20] == list(range(249, 229, -1)) and times[20:31] == list(range(231, 241)) + [239]


def test_jump_schedule_without_jumps_is_a_countdown():
    assert jump_schedule(7, 3, 1) == [6, 5, 4, 3, 2, 1, 0, -1]
    assert jump_schedule(5, 10, 10) == [4, 3, 2, 1, 0, -1]  # no jump point below steps - jump_length


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 80), jump_length=st.integers(1, 12), jump_n_sample=st.integers(1, 6))
def test_jump_schedule_invariants(steps, jump_length, jump_n_sample):
    times = jump_schedule(steps, jump_length, jump_n_sample)
    assert times[0] == steps - 1 and times[-1] == -1 and times[-2] == 0
    assert all(abs(b - a) == 1 for a, b in zip(times[:-1], times[1:]))  # jumps climb one level per entry
    assert all(-1 <= t <= steps - 1 for t in times)
    assert times.count(-1) == 1
    down = sum(b < a for a, b in zip(times[:-1], times[1:]))
    jump_points = len(range(0, steps - jump_length, jump_length))
    assert down == steps + jump_length * (jump_n_sample - 1) * jump_points == jump_schedule_nfe(
        steps, jump_length, jump_n_sample)


def test_jump_schedule_rejects_nonsense():
    with pytest.raises(ValueError):
        jump_schedule(0, 10, 10)


# ----------------------------------------------------------------------------------------------
# respacing


def space_timesteps_reference(num_timesteps: int, count: int) -> list[int]:
    """improved-diffusion respace.py `space_timesteps(num_timesteps, [count])`, one section."""
    frac_stride = (num_timesteps - 1) / (count - 1)
    cur, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur))
        cur += frac_stride
    return sorted(taken)


@pytest.mark.parametrize("T, steps", [(1000, 250), (1000, 100), (1000, 50), (1000, 25), (1000, 1000), (10, 4)])
def test_respaced_timesteps_match_improved_diffusion(T, steps):
    taken = respaced_timesteps(T, steps)
    assert taken.dtype == torch.long and taken.tolist() == space_timesteps_reference(T, steps)
    assert taken[0] == 0 and taken[-1] == T - 1 and bool((taken.diff() > 0).all())


def test_respaced_timesteps_edge_cases():
    assert respaced_timesteps(1000, 1).tolist() == [999]
    with pytest.raises(ValueError):
        respaced_timesteps(100, 101)


def test_respaced_chain_keeps_alpha_bar():
    taken = respaced_timesteps(1000, 50)
    spaced = respace(SCHEDULE, taken)
    torch.testing.assert_close(torch.cumprod(1 - spaced.betas, 0), SCHEDULE.alphas_cumprod[taken], rtol=1e-10, atol=0)
    full = respace(SCHEDULE, respaced_timesteps(1000, 1000))
    torch.testing.assert_close(full.betas, SCHEDULE.betas, rtol=1e-10, atol=1e-15)


# ----------------------------------------------------------------------------------------------
# single steps and exact identities


def test_deterministic_ddim_step_keeps_the_noise_of_a_true_x0():
    """Song et al. 2021 eq. 12, η = 0: given the true x0, x_t = q(x0, ε) steps to q(x0, ε) at t-1."""
    x0, eps = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    t, s = torch.full((2,), 700), torch.full((2,), 300)
    ac = SCHEDULE.alphas_cumprod
    x_t = q_sample(x0, t, eps, ac)
    x_s = ddim_step(x0, x_t, ac[700].item(), ac[300].item(), 0.0, torch.randn_like(x0))
    torch.testing.assert_close(x_s, q_sample(x0, s, eps, ac), rtol=1e-12, atol=1e-12)


def test_ddim_eta_one_is_ancestral_sampling():
    shape = (3, 1, H, W)
    a, nfe_a = ddim(prior_denoiser, shape, SCHEDULE, generator=gen(5), steps=20, eta=1.0, dtype=torch.float64)
    b, nfe_b = ancestral(prior_denoiser, shape, SCHEDULE, generator=gen(5), steps=20, dtype=torch.float64)
    assert nfe_a == nfe_b == 20
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_deterministic_ddim_with_the_gaussian_denoiser_is_a_per_frequency_recursion():
    """With x̂0 = F⁻¹[g_i F x], each Fourier coefficient of x_T is multiplied by the scalar product
    Π_i (√ᾱ_{i-1} g_i + √(1-ᾱ_{i-1}) (1 - √ᾱ_i g_i) / √(1-ᾱ_i)), g_i = √ᾱ_i λ / (ᾱ_i λ + 1 - ᾱ_i)."""
    steps = 12
    x, _ = ddim(prior_denoiser, (2, 1, H, W), SCHEDULE, generator=gen(6), steps=steps, eta=0.0, dtype=torch.float64)
    x_T = torch.randn((2, 1, H, W), generator=gen(6), dtype=torch.float64)  # the sampler's first draw
    ac = SCHEDULE.alphas_cumprod[respaced_timesteps(1000, steps)].tolist()
    factor = torch.ones(H, W, dtype=torch.float64)
    for i in reversed(range(steps)):
        a, a_prev = ac[i], ac[i - 1] if i > 0 else 1.0
        g = math.sqrt(a) * PRIOR.spectrum / (a * PRIOR.spectrum + 1 - a)
        factor = factor * (math.sqrt(a_prev) * g + math.sqrt(1 - a_prev) * (1 - math.sqrt(a) * g) / math.sqrt(1 - a))
    torch.testing.assert_close(x, torch.fft.ifft2(factor * torch.fft.fft2(x_T)).real, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# every sampler: observed values, network evaluations, generators


def case(coverage: float, seed: int, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(truth (1, C, H, W), mask (1, 1, H, W) observing exactly round((1 - coverage) H W) pixels)."""
    truth = PRIOR.sample(1, channels, gen(seed)).float()
    mask = torch.zeros(H * W)
    mask[torch.randperm(H * W, generator=gen(seed + 1))[:round((1 - coverage) * H * W)]] = 1.0
    return truth, mask.reshape(1, 1, H, W)


def run_sampler(name: str, obs: torch.Tensor, mask: torch.Tensor, generator, sigma_y: float = 0.0,
                denoiser=None, steps: int | None = None, fixed=None):
    """The sampler `name` on the Gaussian oracle; conditional samplers get the exact E[x0 | x_t, y]."""
    uncond = denoiser or prior_denoiser
    common = dict(generator=generator, sigma_y=sigma_y, fixed=fixed)
    if name == "repaint":
        return repaint(uncond, obs, mask, SCHEDULE, steps=steps or 50, jump_length=5, jump_n_sample=5, **common)
    if name == "ddnm":
        return ddnm(uncond, obs, mask, SCHEDULE, steps=steps or 100, eta=1.0, **common)
    if name == "mmps":  # 20 CG iterations: converged to ~1 % of the posterior std at 50 % hidden (64 observed)
        return mmps(uncond, obs, mask, SCHEDULE, steps=steps or 50, eta=0.0, cg_iterations=20, **common)
    cond = denoiser or conditional_denoiser(PRIOR, obs, mask, SCHEDULE, sigma_y)
    common.update(obs=obs, mask=mask)
    if name == "ddim":
        return ddim(cond, obs.shape, SCHEDULE, steps=steps or 50, eta=0.0, **common)
    if name == "ddim_eta1":
        return ddim(cond, obs.shape, SCHEDULE, steps=steps or 50, eta=1.0, **common)
    if name == "dpm_solver":
        return dpm_solver_2m(cond, obs.shape, SCHEDULE, steps=steps or 15, **common)
    return ancestral(cond, obs.shape, SCHEDULE, steps=steps or 50, **common)


SAMPLERS = ["repaint", "ddnm", "mmps", "ddim", "ddim_eta1", "ancestral", "dpm_solver"]
EXPECTED_NFE = {"repaint": 50 + 5 * 4 * 9, "ddnm": 100, "mmps": 50, "ddim": 50, "ddim_eta1": 50, "ancestral": 50,
                "dpm_solver": 15}
UNCONDITIONAL = ("repaint", "ddnm", "mmps")


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("per_channel_mask", [False, True])
def test_observed_values_are_exact_and_nfe_counted(name, per_channel_mask):
    truth, mask = case(0.7, seed=10, channels=2)
    obs, mask = truth.expand(4, -1, -1, -1).clone(), mask.expand(4, -1, -1, -1)
    if per_channel_mask:  # channel 1 observed at other pixels than channel 0
        mask = torch.cat([mask, mask.roll(3, dims=-1)], dim=1)
    known = (mask > 0.5).expand_as(obs)
    obs[~known] = float("nan")  # values at hidden pixels must be ignored
    network = model_denoiser(PRIOR, SCHEDULE, "v")  # the oracle as a v-predicting network
    denoiser = network if name in UNCONDITIONAL else model_denoiser(
        _ConditionalNet(conditional_denoiser(PRIOR, torch.nan_to_num(obs), mask, SCHEDULE)), SCHEDULE, "v")
    x, nfe = run_sampler(name, obs, mask, gen(0), denoiser=denoiser)
    assert nfe == EXPECTED_NFE[name] == denoiser.calls
    assert x.shape == obs.shape and bool(torch.isfinite(x).all())
    assert torch.equal(x[known], obs[known])
    assert x[~known].std() > 0.1  # hidden pixels are sampled, not left at 0


class _ConditionalNet(torch.nn.Module):
    """A conditional "network" returning v̂ from the exact conditional x̂0 (cond already bound)."""

    def __init__(self, denoise):
        super().__init__()
        self.denoise = denoise

    def forward(self, x_t, t, cond=None):
        ac = SCHEDULE.alphas_cumprod.to(x_t.dtype)[t].reshape(-1, 1, 1, 1)
        x0 = self.denoise(x_t, t)
        eps = (x_t - ac.sqrt() * x0) / (1 - ac).sqrt()
        return ac.sqrt() * eps - (1 - ac).sqrt() * x0  # v (Salimans & Ho 2022)


# Misfit (RMS of x - y) and member spread at the observed pixels for σ_y = 0.1, 50 % hidden, against the
# exact posterior's (x ~ N(μ, Σ_post): misfit² = mean((μ - y)² + σ²)), 0.102 and 0.092 for this case.
# The calibrated samplers must match both within 25 %: Monte Carlo of 64 members x 64 pixels is
# ~3 % (the std error of a variance from K draws is √(2/K) of it, averaged over the pixels), the
# rest is the discretisation of 50 steps, largest at these low-variance pixels, whose spread is set
# in the last steps. Measured misfit / spread: mmps and ddim 0.089 / 0.078, η = 1 and ancestral
# 0.086 / 0.074 (0.80 of exact), dpm_solver (15 NFE) 0.100 / 0.091.
# RePaint's and DDNM+'s σ_y > 0 are heuristics (their docstrings): measured 0.034 / 0.024 and
# 0.027 / 0.023, about 4x over-confident; the test pins that they stay below half of the exact spread
# so that a fix is noticed (and their docstrings updated).
CALIBRATED_WITH_NOISE = ("mmps", "ddim", "ddim_eta1", "ancestral", "dpm_solver")


@pytest.mark.parametrize("name", SAMPLERS)
def test_noisy_observations_match_the_exact_posterior_at_observed_pixels(name):
    sigma_y = 0.1
    truth, mask = case(0.5, seed=20)
    y = truth + sigma_y * torch.randn(truth.shape, generator=gen(21))
    obs, mask = y.expand(64, -1, -1, -1), mask.expand(64, -1, -1, -1)
    known = (mask > 0.5).expand_as(obs)
    x, _ = run_sampler(name, obs, mask, gen(22), sigma_y=sigma_y)
    mu, sd = PRIOR.posterior(y, mask[:1], sigma_y)
    o = known[0]
    exact_misfit = ((mu[0] - y[0])[o].pow(2) + sd[0][o].pow(2)).mean().sqrt().item()
    exact_spread = sd[0][o].pow(2).mean().sqrt().item()
    misfit = (x - obs)[known].pow(2).mean().sqrt().item()
    spread = x.double().std(0)[o].pow(2).mean().sqrt().item()
    print(f"{name}: misfit {misfit:.3f} (exact {exact_misfit:.3f}), spread {spread:.3f} (exact {exact_spread:.3f})")
    assert exact_misfit == pytest.approx(0.102, abs=1e-3) and exact_spread == pytest.approx(0.092, abs=1e-3)
    assert (x[known] == obs[known]).float().mean() < 0.01  # not pasted
    if name in CALIBRATED_WITH_NOISE:
        assert misfit == pytest.approx(exact_misfit, rel=0.25)
        assert spread == pytest.approx(exact_spread, rel=0.25)
        assert (x.double().mean(0) - mu[0])[o].pow(2).mean().sqrt() < 0.5 * sigma_y
    else:
        assert 0 < spread < 0.5 * exact_spread and 0 < misfit < exact_misfit


@pytest.mark.parametrize("name", SAMPLERS)
def test_generators_make_runs_reproducible_and_batch_independent(name):
    truth, mask = case(0.8, seed=30)
    obs, mask4 = truth.expand(4, -1, -1, -1), mask.expand(4, -1, -1, -1)
    together, _ = run_sampler(name, obs, mask4, [gen(100 + k) for k in range(4)])
    again, _ = run_sampler(name, obs, mask4, [gen(100 + k) for k in range(4)])
    alone, _ = run_sampler(name, obs[2:3], mask4[2:3], [gen(102)])
    assert torch.equal(together, again)
    torch.testing.assert_close(together[2:3], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


# ----------------------------------------------------------------------------------------------
# ensembles against the exact posterior

K = 256  # members, one batch; Monte-Carlo error of the mean ≈ posterior std / 16

# Relative RMSE of the ensemble mean against the exact posterior mean on hidden pixels,
# ||mean_K - μ|| / ||μ|| (an ensemble that ignores the observations scores 1), and the spread ratio
# rms(std_K) / rms(σ_post), on the 8x16 periodic Matérn GRF (ν = 1.5, ℓ = 3 px), K = 256.
# "exact" is the K → ∞ value: the exact law of each sampler's output on this case, from the
# closed-form propagators of tests/test_sampler_chains.py run on this grid (relative error of the law's
# mean; spread of its covariance). "K=256" is this test's ensemble; in brackets the range over 8 other
# truth/mask/noise seeds (50-120), measured before the exact values were available.
#                          50 % hidden (64 observed pixels)              95 % hidden (6 observed pixels)
#   repaint 50 steps 5x5   exact 0.127 / 1.007; K=256 0.124 / 1.00       exact 0.471 / 1.109; K=256 0.45 / 1.12
#                          [0.045-0.093 / 0.97-1.02]                     [0.43-0.75 / 1.05-1.14]
#   ddnm 100 steps η=1     exact 0.256 / 1.587; K=256 0.27 / 1.61        exact 0.773 / 1.316; K=256 0.68 / 1.34
#   ddim 50 η=0 (= mmps)   exact 0.0000 / 0.949; K=256 0.019 / 0.95      exact 0.0001 / 0.961; K=256 0.047 / 0.99
#   ddim η=1 = ancestral   exact 0.0000 / 0.898; K=256 0.017 / 0.90      exact 0.0000 / 0.946; K=256 0.064 / 0.97
#   dpm_solver 15 NFE      exact 0.0000 / 1.032; K=256 0.020 / 1.04      exact 0.0001 / 1.040; K=256 0.050 / 1.07
# Where the bounds come from: the exact bias of the conditional samplers and of MMPS is < 1e-4, so
# their error is Monte Carlo: the std error of a mean of K draws is σ/√K = σ_post/16 per pixel, a
# relative RMS of ≈ 0.02 at 50 % and ≈ 0.05 at 95 % hidden here; the bounds 0.05 and 0.15 are
# ≈ 3 such RMS. For RePaint and DDNM (biased by construction) the error bound is the exact value plus
# the same Monte-Carlo allowance, rounded up. Spread bounds: the exact value ± ≈ 0.1, about 2 std
# errors of the spread ratio in the worst case of fully correlated pixels (√(1/(2K)) ≈ 0.044)
# and 6+ for independent ones; the chain test (tests/test_sampler_chains.py) checks the whole law
# with exact sampling distributions instead.
BOUNDS = {  # name: {coverage: (max relative error, (min spread, max spread))}
    "repaint": {0.5: (0.2, (0.9, 1.1)), 0.95: (0.6, (1.0, 1.22))},
    "ddnm": {0.5: (0.3, (1.48, 1.7)), 0.95: (0.85, (1.2, 1.43))},
    "mmps": {0.5: (0.05, (0.85, 1.05)), 0.95: (0.15, (0.86, 1.06))},
    "ddim": {0.5: (0.05, (0.85, 1.05)), 0.95: (0.15, (0.86, 1.06))},
    "ddim_eta1": {0.5: (0.05, (0.8, 1.0)), 0.95: (0.15, (0.85, 1.05))},
    "ancestral": {0.5: (0.05, (0.8, 1.0)), 0.95: (0.15, (0.85, 1.05))},
    "dpm_solver": {0.5: (0.05, (0.93, 1.13)), 0.95: (0.15, (0.94, 1.14))},
}


@pytest.mark.parametrize("coverage", [0.5, 0.95])
@pytest.mark.parametrize("name", SAMPLERS)
def test_ensemble_matches_exact_posterior(name, coverage):
    truth, mask = case(coverage, seed=40)
    mu, sd = PRIOR.posterior(truth, mask)
    x, _ = run_sampler(name, truth.expand(K, -1, -1, -1), mask.expand(K, -1, -1, -1), gen(41))
    hidden = (mask[0] < 0.5).expand_as(mu[0])
    mean, spread = x.double().mean(0), x.double().std(0)
    rel_err = ((mean - mu[0])[hidden].pow(2).mean() / mu[0][hidden].pow(2).mean()).sqrt().item()
    ratio = (spread[hidden].pow(2).mean() / sd[0][hidden].pow(2).mean()).sqrt().item()
    print(f"{name} {coverage}: relative error {rel_err:.3f}, spread ratio {ratio:.3f}")
    max_err, (low, high) = BOUNDS[name][coverage]
    assert rel_err < max_err
    assert low < ratio < high


# ----------------------------------------------------------------------------------------------
# DiffusionReconstructor over a tiny random-weight UNet

FAST = {"repaint": {"steps": 10, "jump_length": 2, "jump_n_sample": 2},  # 10 + 2 * 1 * 4 = 18 evaluations
        "ddnm": {"steps": 6}, "conditional": {"steps": 6}}
FAST_NFE = {"repaint": 18, "ddnm": 6, "conditional": 6}


def tiny_config(conditioning: str, prediction: str):
    return from_dict({"data": {"variables": ["u", "v"], "height": 16, "width": 16},
                      "model": {"channels": [8, 16], "norm_groups": 8, "attention_levels": [],
                                "num_res_blocks": 1, "time_embed_mult": 2, "film_channels": 8,
                                "conditioning": conditioning},
                      "diffusion": {"timesteps": 100, "prediction": prediction}})


def random_unet(config, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised layers included), so the output is not 0."""
    model = build_model(config)
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def field_inputs(b: int = 2):
    g = gen(7)
    obs = torch.randn(b, 2, 16, 16, generator=g)
    mask = (torch.rand(b, 1, 16, 16, generator=g) < 0.3).float()
    valid = torch.ones(b, 1, 16, 16)
    valid[:, :, :3, :4] = 0  # "land"
    obs[(mask * valid < 0.5).expand_as(obs)] = float("nan")  # hidden and never-valid pixels unknown
    return obs, mask, valid


@pytest.mark.parametrize("method, conditioning, prediction",
                         [("repaint", "none", "eps"), ("ddnm", "none", "v"), ("conditional", "concat", "v"),
                          ("conditional", "film", "eps")])
def test_reconstructor_runs_every_method(method, conditioning, prediction):
    config = tiny_config(conditioning, prediction)
    rec = DiffusionReconstructor(random_unet(config), config, method=method, batch_size=3, **FAST[method])
    obs, mask, valid = field_inputs()
    out = rec.reconstruct(obs, mask, valid, samples=3, seed=1)
    observed = ((mask * valid) > 0.5).expand_as(obs)
    assert out.members.shape == (2, 3, 2, 16, 16) and out.mean.shape == out.std.shape == obs.shape
    assert bool(torch.isfinite(out.members).all() and torch.isfinite(out.mean).all() and torch.isfinite(out.std).all())
    for k in range(3):
        assert torch.equal(out.members[:, k][observed], obs[observed])
    assert torch.equal(out.mean[observed], obs[observed]) and bool((out.std[observed] == 0).all())
    assert out.std[~observed].mean() > 0
    assert out.nfe == FAST_NFE[method] and out.seconds > 0
    # Members come from generators seeded by (seed, case, member): the batch size does not matter.
    # (Up to float32 round-off of the convolutions, which differ by batch size; an untrained ε-model's
    # x̂0 = x_t / √ᾱ amplifies round-off ~2e4-fold at ᾱ_{T-1} before the ±10 clip: ~1e-3 relative.)
    one_by_one = DiffusionReconstructor(rec.model, config, method=method, batch_size=1, **FAST[method])
    difference = one_by_one.reconstruct(obs, mask, valid, samples=3, seed=1).members - out.members
    assert difference.abs().max() <= 1e-3 * (1 + out.members.abs().max())


def test_reconstructor_rejects_method_model_mismatch():
    conditional, unconditional = tiny_config("concat", "v"), tiny_config("none", "eps")
    for method in ("repaint", "ddnm"):
        with pytest.raises(FieldpaintError, match="unconditional model"):
            DiffusionReconstructor(build_model(conditional), conditional, method=method)
    with pytest.raises(FieldpaintError, match="concat/FiLM model"):
        DiffusionReconstructor(build_model(unconditional), unconditional, method="conditional")
    with pytest.raises(FieldpaintError, match="unknown (sampling )?method"):
        DiffusionReconstructor(build_model(unconditional), unconditional, method="dps")
    with pytest.raises(FieldpaintError, match="steps must be at most"):
        DiffusionReconstructor(build_model(unconditional), unconditional, method="ddnm", steps=101)


def test_reconstructor_with_noisy_observations_does_not_paste_them():
    config = tiny_config("none", "v")
    model = random_unet(config)
    obs, mask, valid = field_inputs(1)
    observed = ((mask * valid) > 0.5).expand_as(obs)
    rec = DiffusionReconstructor(model, config, method="ddnm", steps=6, sigma_y=0.1)
    out = rec.reconstruct(obs, mask, valid, samples=2, seed=0)
    assert bool(torch.isfinite(out.members).all())
    assert (out.members[:, 0][observed] != obs[observed]).float().mean() > 0.99
    assert out.std[observed].min() > 0
    with pytest.raises(FieldpaintError, match="needs eta > 0"):
        DiffusionReconstructor(model, config, method="ddnm", sigma_y=0.1, eta=0.0)


def test_model_denoiser_bounds_x0_of_a_wild_eps_model():
    # An ε-model off by 1 at t = T-1 (√ᾱ ≈ 4e-5 for the cosine schedule) would give |x̂0| ~ 2e4.
    from fieldpaint.diffusion.samplers import X0_CLIP, model_denoiser
    from fieldpaint.diffusion.schedule import make_schedule

    schedule = make_schedule("cosine", 1000)
    wild = lambda x, t, cond: torch.ones_like(x)  # noqa: E731
    x = torch.zeros(1, 1, 4, 4)
    t = torch.tensor([999])
    assert float(model_denoiser(wild, schedule, "eps")(x, t).abs().max()) == X0_CLIP
    assert float(model_denoiser(wild, schedule, "eps", clip=None)(x, t).abs().max()) > 1e3


# ----------------------------------------------------------------------------------------------
# review defects: steps = 1, never-valid pixels, ε-models sampled deterministically


@pytest.mark.parametrize("name", SAMPLERS)
def test_one_step_runs_and_keeps_observed_values(name):
    """steps = 1 crashed RePaint and ancestral sampling (an empty slice in the log-variance clip)."""
    truth, mask = case(0.5, seed=60)
    obs, mask = truth.expand(2, -1, -1, -1), mask.expand(2, -1, -1, -1)
    x, nfe = run_sampler(name, obs, mask, gen(61), steps=1)
    known = (mask > 0.5).expand_as(obs)
    assert nfe == 1 and bool(torch.isfinite(x).all()) and torch.equal(x[known], obs[known])


@pytest.mark.parametrize("name", SAMPLERS)
def test_fixed_pixels_are_zero_and_x0_is_fixed_at_every_step(name):
    """Never-valid pixels (x_0 = 0 in training) come out exactly 0, and the network's x̂_0 there is
    replaced at every step: a denoiser that returns garbage (1e3) at those pixels changes nothing."""
    truth, mask = case(0.5, seed=70)
    fixed = torch.zeros(1, 1, H, W, dtype=torch.bool)
    fixed[..., :3, :4] = True
    mask = torch.where(fixed, 0.0, mask)  # never-valid pixels are never observed
    obs, mask, fixed = truth.expand(3, -1, -1, -1), mask.expand(3, -1, -1, -1), fixed.expand(3, -1, -1, -1)
    base = conditional_denoiser(PRIOR, obs, mask, SCHEDULE) if name not in UNCONDITIONAL else prior_denoiser

    def wild(x, t):
        return torch.where(fixed, torch.full_like(x, 1e3), base(x, t))

    clean, _ = run_sampler(name, obs, mask, gen(71), denoiser=lambda x, t: torch.where(fixed, 0.0, base(x, t)),
                           steps=10, fixed=fixed.float())
    x, _ = run_sampler(name, obs, mask, gen(71), denoiser=wild, steps=10, fixed=fixed)
    assert bool((x[fixed] == 0).all()) and bool(torch.isfinite(x).all())
    torch.testing.assert_close(x, clean, rtol=1e-6, atol=1e-6)
    unfixed, _ = run_sampler(name, obs, mask, gen(71), denoiser=wild, steps=10)
    assert unfixed[fixed].abs().min() > 1.0  # without `fixed` the garbage reaches the output


def test_eps_deterministic_amplifies_eps_errors():
    """The same small error (1e-3 x a fixed N(0, 1) field) in the network's ε̂ or v̂, on the Gaussian
    oracle, deterministic DDIM, 20 steps, no x̂_0 clip: the ε-model's output moves by ~1e-3 x the
    1/√ᾱ amplification of the first steps, the v-model's by ~1e-3. Measured (RMS over pixels): ε 1.86,
    v 0.0010; ε with η = 1 0.84 (fresh noise removes only part of it)."""
    error = 1e-3 * torch.randn(1, 1, H, W, generator=gen(81), dtype=torch.float64)

    def deviation(prediction, eta):
        oracle = GaussianDenoiser.matern(H, W, nu=1.5, length_scale=3.0, schedule=SCHEDULE, prediction=prediction)
        perturbed = lambda x, t, cond=None: oracle(x, t) + error  # noqa: E731
        runs = [ddim(model_denoiser(net, SCHEDULE, prediction, clip=None), (2, 1, H, W), SCHEDULE,
                     generator=gen(82), steps=20, eta=eta, dtype=torch.float64)[0] for net in (oracle, perturbed)]
        return (runs[1] - runs[0]).pow(2).mean().sqrt().item()

    eps0, v0, eps1 = deviation("eps", 0.0), deviation("v", 0.0), deviation("eps", 1.0)
    print(f"output deviation: eps η=0 {eps0:.4g}, v η=0 {v0:.4g}, eps η=1 {eps1:.4g}")
    assert eps0 > 1000 * v0 and v0 < 2e-3 and eps1 < eps0
    assert check_eps_deterministic("eps", 0.0) is not None
    assert check_eps_deterministic("eps", 0.5) is None and check_eps_deterministic("v", 0.0) is None

"""σ_y per channel and per pixel, and in the data's units.

The reference is the exact Gaussian posterior with HETEROSCEDASTIC noise, by dense linear algebra:
y_O = x_O + n, n ~ N(0, D), D = diag(σ_y²) at the observed pixels, so

    μ = Σ_{·O} (Σ_OO + D)⁻¹ y_O,    Cov = Σ - Σ_{·O} (Σ_OO + D)⁻¹ Σ_{O·}

per channel (the oracle's channels are independent). As in tests/test_mmps.py, MMPS with η = 0
and converged CG is an affine map of its start noise, so K > C·H·W + 1 members give its exact law
(no Monte-Carlo error): its mean must match μ to the CG tolerance, and its spread the posterior's
up to DDIM-50's discretisation (0.949 of it on hidden pixels at σ_y = 0, tests/test_mmps.py).
"""

import math

import numpy as np
import pytest
import torch
import xarray as xr

from fieldpaint.data.fields import FieldStats
from fieldpaint.diffusion.reconstructor import DiffusionReconstructor
from fieldpaint.diffusion.sigma_y import (parse_sigma_y, parse_sigma_y_variable, sigma_y_attribute,
                                          sigma_y_field_from_dataset, sigma_y_field_in_normalised_units,
                                          sigma_y_in_normalised_units)
from fieldpaint.diffusion.samplers import ddim, ddnm, mmps, repaint
from fieldpaint.diffusion.schedule import make_schedule
from fieldpaint.diffusion.solvers import dpm_solver_2m
from fieldpaint.errors import FieldpaintError
from fieldpaint.models.gaussian import GaussianDenoiser
from tests.test_samplers import random_unet, tiny_config

SCHEDULE = make_schedule("cosine", 1000)
H, W, C = 8, 8, 2
PRIOR = GaussianDenoiser.matern(H, W, nu=1.5, length_scale=3.0, schedule=SCHEDULE, prediction="v")
K = 160  # > C·H·W + 1 = 129


def gen(seed):
    return torch.Generator().manual_seed(seed)


def prior_denoiser(x, t):
    return PRIOR.denoise(x, t, SCHEDULE)


def heteroscedastic_posterior(y: torch.Tensor, mask: torch.Tensor, sigma: torch.Tensor):
    """Exact posterior mean and variance (C, H, W) given y (1, C, H, W) at mask (1, 1, H, W) with
    noise std sigma (C, H, W) per channel and pixel (closed form in the module docstring)."""
    cov = PRIOR.covariance_matrix()
    o = (mask.reshape(-1) > 0.5).nonzero().squeeze(1)
    means, variances = [], []
    for c in range(y.shape[1]):
        s_oo = cov[o][:, o] + torch.diag(sigma[c].reshape(-1)[o].double() ** 2)
        gain = torch.linalg.solve(s_oo, cov[o]).T  # Σ_{·O} S⁻¹
        means.append(gain @ y[0, c].reshape(-1)[o])
        variances.append((cov - gain @ cov[o]).diagonal())
    return torch.stack(means).reshape(C, H, W), torch.stack(variances).reshape(C, H, W)


def case(coverage: float, sigma: torch.Tensor, seed: int = 50):
    truth = PRIOR.sample(1, C, gen(seed))
    mask = torch.zeros(H * W, dtype=torch.float64)
    mask[torch.randperm(H * W, generator=gen(seed + 1))[:round((1 - coverage) * H * W)]] = 1.0
    y = truth + sigma * torch.randn(truth.shape, generator=gen(seed + 2), dtype=torch.float64)
    return y, mask.reshape(1, 1, H, W)


def exact_law(x: torch.Tensor, seed: int):
    """(mean, variance) of x = G x_T + b, x_T the sampler's first draw from gen(seed)."""
    x_T = torch.randn((K, C, H, W), generator=gen(seed), dtype=torch.float64).reshape(K, -1)
    design = torch.cat([x_T, torch.ones(K, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, x.reshape(K, -1)).solution
    assert (design @ coef - x.reshape(K, -1)).abs().max() < 1e-8  # affine in x_T
    g, b = coef[:-1].T, coef[-1]
    return b.reshape(C, H, W), (g * g).sum(1).reshape(C, H, W)


PER_CHANNEL = torch.tensor([0.05, 0.4], dtype=torch.float64).reshape(1, C, 1, 1)
PER_PIXEL = 0.02 + 0.4 * torch.rand((1, C, H, W), generator=gen(3), dtype=torch.float64)


@pytest.mark.parametrize("kind", ["per-channel", "per-pixel"])
def test_mmps_with_heteroscedastic_noise_is_the_exact_posterior(kind):
    sigma = PER_CHANNEL if kind == "per-channel" else PER_PIXEL
    y, mask = case(0.5, sigma)
    x, nfe = mmps(prior_denoiser, y.expand(K, -1, -1, -1), mask.expand(K, -1, -1, -1), SCHEDULE, generator=gen(41),
                  steps=50, eta=0.0, sigma_y=sigma, cg_iterations=C * H * W, cg_tol=1e-10)
    assert nfe == 50
    mean, var = exact_law(x, 41)
    mu, post_var = heteroscedastic_posterior(y, mask, sigma.expand(1, C, H, W)[0])
    rel_err = ((mean - mu).pow(2).mean() / mu.pow(2).mean()).sqrt().item()
    # the same data under the homoscedastic noise of the mean σ_y: what a float σ_y would give
    mu_flat, _ = heteroscedastic_posterior(y, mask, torch.full((C, H, W), float(sigma.mean())))
    flat_err = ((mu_flat - mu).pow(2).mean() / mu.pow(2).mean()).sqrt().item()
    known = (mask[0, 0] > 0.5).expand(C, H, W)
    ratio_hidden = (var[~known].mean() / post_var[~known].mean()).sqrt().item()
    ratio_observed = (var[known].mean() / post_var[known].mean()).sqrt().item()
    print(f"{kind}: relative mean error {rel_err:.2e} (homoscedastic posterior off by {flat_err:.2e}); "
          f"spread ratio hidden {ratio_hidden:.3f}, observed {ratio_observed:.3f}")
    assert rel_err < 1e-3 and flat_err > 20 * rel_err  # the noise model matters, and MMPS gets it right
    # measured: mean error 1.9e-5 / 1.5e-5, homoscedastic off by 0.18 / 0.14; spread 0.957 / 0.955 hidden,
    # 0.949 / 0.935 observed (per channel / per pixel)
    assert ratio_hidden == pytest.approx(0.949, abs=0.02)  # DDIM-50's discretisation (tests/test_mmps.py)
    assert 0.9 < ratio_observed < 1.0  # low-variance pixels, set in the last steps: looser


def test_zero_sigma_channels_stay_exact_and_a_constant_tensor_is_the_float():
    y, mask = case(0.7, torch.zeros(1))
    y, mask = y.float().expand(3, -1, -1, -1), mask.float().expand(3, -1, -1, -1)
    known = (mask > 0.5).expand_as(y)
    sigma = torch.tensor([0.0, 0.1]).reshape(1, C, 1, 1)
    cond = lambda x, t: prior_denoiser(x, t)  # noqa: E731  (stands in for a conditional denoiser)
    runs = {
        "repaint": lambda s: repaint(prior_denoiser, y, mask, SCHEDULE, generator=gen(0), steps=20, jump_length=5,
                                     jump_n_sample=2, sigma_y=s),
        "ddnm": lambda s: ddnm(prior_denoiser, y, mask, SCHEDULE, generator=gen(0), steps=20, sigma_y=s),
        # (converged CG: unconverged, float32 round-off of σ_y² moves the output by ~1e-4)
        "mmps": lambda s: mmps(prior_denoiser, y, mask, SCHEDULE, generator=gen(0), steps=10,
                               cg_iterations=C * H * W, sigma_y=s),
        "ddim": lambda s: ddim(cond, y.shape, SCHEDULE, generator=gen(0), steps=10, obs=y, mask=mask, sigma_y=s),
        "dpm": lambda s: dpm_solver_2m(cond, y.shape, SCHEDULE, generator=gen(0), steps=10, obs=y, mask=mask,
                                       sigma_y=s),
    }
    for name, run in runs.items():
        x, _ = run(sigma)
        assert torch.equal(x[:, 0][known[:, 0]], y[:, 0][known[:, 0]]), name  # σ_y = 0: exact
        if name != "ddim" and name != "dpm":  # (the conditional ones only paste; their x̂0 is the denoiser's)
            assert (x[:, 1][known[:, 1]] != y[:, 1][known[:, 1]]).float().mean() > 0.99, name  # noisy: not pasted
        a, _ = run(torch.full((1, C, 1, 1), 0.1))
        b, _ = run(0.1)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------------------------
# the data's units

STATS = FieldStats(("sst", "ssh"), (15.0, 0.0), (2.0, 0.5))


def test_parse_sigma_y():
    assert parse_sigma_y("0.3") == 0.3
    assert parse_sigma_y("sst=0.3") == {"sst": 0.3}
    assert parse_sigma_y(" u=0.1, v=0.2 ") == {"u": 0.1, "v": 0.2}
    for bad in ("-1", "nan", "x", "sst=", "=0.3", "sst=0.1,sst=0.2", "sst=inf"):
        with pytest.raises(FieldpaintError):
            parse_sigma_y(bad)


def test_sigma_y_in_normalised_units_divides_by_each_channels_std():
    names = ["sst", "ssh"]
    assert sigma_y_in_normalised_units(None, names, STATS) is None
    assert sigma_y_in_normalised_units(0.3, names, STATS) == pytest.approx((0.15, 0.6))  # 0.3/2, 0.3/0.5
    assert sigma_y_in_normalised_units({"sst": 0.3}, names, STATS) == pytest.approx((0.15, 0.0))
    assert sigma_y_in_normalised_units({"ssh": 0.05}, names, STATS) == pytest.approx((0.0, 0.1))
    one = FieldStats(("sst",), (15.0,), (2.0,))
    assert sigma_y_in_normalised_units(0.3, ["sst"], one) == pytest.approx(0.15)  # a float for one channel
    with pytest.raises(FieldpaintError, match="unknown variable.*sst, ssh"):
        sigma_y_in_normalised_units({"temp": 0.3}, names, STATS)
    with pytest.raises(FieldpaintError):
        sigma_y_in_normalised_units(-0.1, names, STATS)


def test_per_pixel_sigma_y_from_a_dataset():
    errors = np.stack([np.full((3, 4, 5), 0.4), np.full((3, 4, 5), 0.1)], axis=1)  # (N, C, H, W) physical
    errors[0, 0, 0, 0] = np.nan  # allowed: only observed pixels are read
    got = sigma_y_field_in_normalised_units(errors, STATS)
    assert got.shape == (3, 2, 4, 5) and math.isnan(got[0, 0, 0, 0])
    assert got[1, 0, 0, 0] == pytest.approx(0.2) and got[1, 1, 0, 0] == pytest.approx(0.2)
    assert parse_sigma_y_variable("err", ["sst", "ssh"]) == ("err", "err")
    assert parse_sigma_y_variable("ssh=ssh_err", ["sst", "ssh"]) == (None, "ssh_err")
    with pytest.raises(FieldpaintError, match="unknown variable"):
        parse_sigma_y_variable("temp=err", ["sst", "ssh"])
    dims = ("time", "lat", "lon")
    ds = xr.Dataset({"sst": (dims, np.zeros((3, 4, 5))), "ssh": (dims, np.zeros((3, 4, 5))),
                     "sst_err": (dims, errors[:, 0]), "ssh_err": (dims, errors[:, 1])})
    field = sigma_y_field_from_dataset(ds, "sst=sst_err", ["sst", "ssh"], STATS)
    assert field.shape == (3, 2, 4, 5) and float(field[1, 0, 2, 2]) == pytest.approx(0.2)
    assert bool((field[:, 1] == 0).all())  # ssh has no error variable: exact
    assert sigma_y_attribute(0.1) == 0.1 and sigma_y_attribute((0.1, 0.2)) == [0.1, 0.2]
    assert sigma_y_attribute(field) == "per-pixel"


# ----------------------------------------------------------------------------------------------
# DiffusionReconstructor


def test_reconstructor_takes_per_channel_and_per_pixel_sigma_y():
    config = tiny_config("none", "v")  # u, v on 16 x 16
    model = random_unet(config)
    g = gen(7)
    obs = torch.randn(2, 2, 16, 16, generator=g)
    mask = (torch.rand(2, 1, 16, 16, generator=g) < 0.3).float()
    valid = torch.ones(2, 1, 16, 16)
    observed = (mask > 0.5).expand_as(obs)
    rec = DiffusionReconstructor(model, config, method="mmps", steps=4, cg_iterations=2, sigma_y=(0.0, 0.2))
    out = rec.reconstruct(obs, mask, valid, samples=2, seed=0)
    assert torch.equal(out.members[:, :, 0][observed[:, None, 0].expand(-1, 2, -1, -1)],
                       obs[:, None, 0].expand(-1, 2, -1, -1)[observed[:, None, 0].expand(-1, 2, -1, -1)])
    assert bool((out.std[:, 0][observed[:, 0]] == 0).all()) and out.std[:, 1][observed[:, 1]].min() > 0
    per_pixel = torch.where(torch.arange(16).reshape(1, 1, 1, 16) < 8, 0.0, 0.3).expand(2, 2, 16, 16).clone()
    per_pixel[~observed] = float("nan")  # ignored where nothing is observed
    out = DiffusionReconstructor(model, config, method="ddnm", steps=4, sigma_y=per_pixel).reconstruct(
        obs, mask, valid, samples=2, seed=0)
    left = observed & (torch.arange(16).reshape(1, 1, 1, 16) < 8)
    assert torch.equal(out.members[:, 0][left], obs[left])
    assert (out.members[:, 0][observed & ~left] != obs[observed & ~left]).float().mean() > 0.99
    tile = DiffusionReconstructor(model, config, method="ddnm", steps=4).with_sigma_y(per_pixel)
    torch.testing.assert_close(tile.reconstruct(obs, mask, valid, samples=2, seed=0).members, out.members)
    bad = per_pixel.clone()
    bad[observed] = float("nan")
    with pytest.raises(FieldpaintError, match="NaN or inf at observed"):
        DiffusionReconstructor(model, config, method="ddnm", steps=4, sigma_y=bad).reconstruct(obs, mask, valid)
    with pytest.raises(FieldpaintError, match="one per channel"):
        DiffusionReconstructor(model, config, method="mmps", sigma_y=(0.1, 0.2, 0.3))
    with pytest.raises(FieldpaintError, match="does not fit"):
        DiffusionReconstructor(model, config, method="ddnm", steps=4, sigma_y=torch.zeros(3, 2, 16, 16)).reconstruct(
            obs, mask, valid)
    conditional = tiny_config("concat", "v")
    with pytest.raises(FieldpaintError, match="exact known values"):
        DiffusionReconstructor(build_model_of(conditional), conditional, method="conditional", sigma_y=(0.0, 0.1))
    DiffusionReconstructor(build_model_of(conditional), conditional, method="conditional", sigma_y=(0.0, 0.0))


def build_model_of(config):
    from fieldpaint.models.registry import build_model

    return build_model(config)


# ----------------------------------------------------------------------------------------------
# the CLI: --sigma-y and --sigma-y-variable reach the reconstructor in normalised units


def test_inpaint_cli_converts_sigma_y_with_the_runs_statistics(monkeypatch, tmp_path):
    import types

    import fieldpaint.inpaint
    import fieldpaint.runs
    from fieldpaint.cli import main

    seen = {}

    def fake_inpaint_file(checkpoint, input_path, out, **options):
        seen.update(options)
        return {"samples": 1, "nfe": 1, "seconds": 0.0}

    monkeypatch.setattr(fieldpaint.inpaint, "inpaint_file", fake_inpaint_file)
    monkeypatch.setattr(fieldpaint.runs, "load_run", lambda path: types.SimpleNamespace(stats=STATS))
    dims = ("time", "lat", "lon")
    errors = np.full((2, 4, 5), 0.4)
    xr.Dataset({"sst": (dims, np.zeros((2, 4, 5))), "ssh": (dims, np.zeros((2, 4, 5))),
                "sst_err": (dims, errors)}).to_netcdf(tmp_path / "obs.nc")
    base = ["inpaint", "--checkpoint", "run", "--input", str(tmp_path / "obs.nc"), "--out", str(tmp_path / "o.nc"),
            "--method", "mmps", "--no-progress"]
    assert main(base + ["--sigma-y", "ssh=0.05"]) == 0
    assert seen["sigma_y"] == pytest.approx((0.0, 0.1))  # 0.05 / 0.5
    assert main(base + ["--sigma-y", "0.3"]) == 0
    assert seen["sigma_y"] == pytest.approx((0.15, 0.6))
    assert main(base + ["--sigma-y-variable", "sst=sst_err"]) == 0
    assert seen["sigma_y"].shape == (2, 2, 4, 5) and float(seen["sigma_y"][0, 0, 0, 0]) == pytest.approx(0.2)
    seen.clear()
    assert main(base) == 0 and "sigma_y" not in seen  # exact observations by default
    assert main(base + ["--sigma-y", "temp=0.3"]) == 2  # an unknown variable: a one-line error
    assert main(base + ["--sigma-y", "0.3", "--sigma-y-variable", "sst_err"]) == 2

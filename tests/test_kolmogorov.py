"""Kolmogorov-flow generator: numerics (fieldpaint.data.spectral) against closed forms, physics
(fieldpaint.data.kolmogorov) against known statistics.

Expected values come from closed forms (a two-mode streamfunction, a linear ODE, Parseval) or
from the flow's known behaviour (Kolmogorov flow keeps a mean shear in phase with the forcing;
2-D turbulence has heavy-tailed vorticity; a resolved run's spectrum decays to the cutoff).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fieldpaint.data import kolmogorov as K
from fieldpaint.data import spectral as S
from fieldpaint.errors import ConfigError


@pytest.fixture(scope="module")
def default_run() -> dict[str, np.ndarray]:
    """The default physics on the default 64x128 grid: 4 trajectories x 8 snapshots."""
    return K.simulate_kolmogorov(4, 8, 64, 128, seed=0, spinup_time=20.0, snapshot_interval=1.5)


def excess_kurtosis(x: np.ndarray) -> float:
    x = x.astype(np.float64).ravel() - x.mean()
    return float((x**4).mean() / (x**2).mean() ** 2 - 3)


# --------------------------------------------------------------------------------------------
# Numerics against closed forms
# --------------------------------------------------------------------------------------------


def two_mode_flow(height: int, width: int, a=0.5, b=1.0, c=1.5, d=-2.0):
    """ψ = A cos(a x + b y) + B sin(c x + d y) and its u, v, ω and u·∇ω, written out by hand.

    kx on the 4π box are multiples of 1/2, ky integers.
    """
    A, B = 0.7, 0.4
    y = np.arange(height)[:, None] * (S.DOMAIN_Y / height)
    x = np.arange(width)[None, :] * (S.DOMAIN_X / width)
    s1, c1 = np.sin(a * x + b * y), np.cos(a * x + b * y)
    s2, c2 = np.sin(c * x + d * y), np.cos(c * x + d * y)
    k1, k2 = a * a + b * b, c * c + d * d
    u = -A * b * s1 + B * d * c2  # ∂ψ/∂y
    v = A * a * s1 - B * c * c2  # −∂ψ/∂x
    omega = A * k1 * c1 + B * k2 * s2  # −∇²ψ
    omega_x = -A * k1 * a * s1 + B * k2 * c * c2
    omega_y = -A * k1 * b * s1 + B * k2 * d * c2
    return u, v, omega, u * omega_x + v * omega_y


def test_nonlinear_term_and_velocity_match_closed_form():
    height, width = 32, 64
    u, v, omega, advection = two_mode_flow(height, width)
    grid = S.SpectralGrid(height, width)
    ops = S.KolmogorovOperators(grid, viscosity=0.0, drag=0.0, forcing_hat=torch.zeros(height, grid.n_kx))
    omega_hat = grid.to_spectral(torch.tensor(omega, dtype=torch.float32)[None]) * grid.keep
    minus_advection = grid.to_physical(ops.nonlinear(omega_hat))[0].numpy()
    scale = np.abs(advection).max()
    np.testing.assert_allclose(-minus_advection, advection, atol=2e-5 * scale)

    u_out, v_out, omega_out = S.output_fields(omega_hat, grid, height, width)
    np.testing.assert_allclose(u_out[0].numpy(), u, atol=2e-5 * np.abs(u).max())
    np.testing.assert_allclose(v_out[0].numpy(), v, atol=2e-5 * np.abs(v).max())
    np.testing.assert_allclose(omega_out[0].numpy(), omega, atol=2e-5 * np.abs(omega).max())


@pytest.mark.parametrize(
    "modes",
    [dict(a=0.5, b=5.0, c=1.0, d=4.0), dict(a=4.5, b=1.0, c=4.0, d=2.0)],
    ids=["aliased-in-y", "aliased-in-x"],
)
def test_nonlinear_term_is_dealiased(modes):
    # On 16x32 the 2/3 rule keeps |ky| <= 5 and kx <= 5 (column index <= 10). The two modes
    # interact into their difference, kept, and their sum, (1.5, 9) or (8.5, 3), which a grid
    # without the 2/3 rule would alias onto (1.5, -7) or (7.5, -3) and keep. Expected: the
    # exact u·∇ω, sampled on a 4x finer grid where nothing aliases, projected onto the 2/3 band.
    height, width, fine = 16, 32, 4
    _, _, omega, _ = two_mode_flow(height, width, **modes)
    advection_fine = two_mode_flow(height * fine, width * fine, **modes)[3]
    spectrum_fine = np.fft.rfft2(advection_fine) / fine**2
    projected = np.zeros((height, width // 2 + 1), dtype=complex)
    for my in range(-5, 6):
        projected[my % height, :11] = spectrum_fine[my % (height * fine), :11]
    expected = np.fft.irfft2(projected, s=(height, width))

    grid = S.SpectralGrid(height, width)
    ops = S.KolmogorovOperators(grid, viscosity=0.0, drag=0.0, forcing_hat=torch.zeros(height, grid.n_kx))
    omega_hat = grid.to_spectral(torch.tensor(omega, dtype=torch.float32)[None]) * grid.keep
    advection = -grid.to_physical(ops.nonlinear(omega_hat))[0].numpy()
    assert np.abs(expected).max() > 0.1 * np.abs(advection_fine).max()  # not trivially zero
    np.testing.assert_allclose(advection, expected, atol=2e-5 * np.abs(advection_fine).max())


def test_divergence_and_curl_match_closed_form():
    height, width = 16, 32
    y = torch.arange(height, dtype=torch.float64)[:, None] * (S.DOMAIN_Y / height)
    x = torch.arange(width, dtype=torch.float64)[None, :] * (S.DOMAIN_X / width)
    u = torch.sin(0.5 * x) * torch.cos(y)
    v = torch.cos(2 * x) * torch.sin(3 * y)
    expected_div = 0.5 * torch.cos(0.5 * x) * torch.cos(y) + 3 * torch.cos(2 * x) * torch.cos(3 * y)
    expected_curl = -2 * torch.sin(2 * x) * torch.sin(3 * y) + torch.sin(0.5 * x) * torch.sin(y)
    torch.testing.assert_close(S.divergence(u, v), expected_div, atol=1e-12, rtol=0)
    torch.testing.assert_close(S.curl(u, v), expected_curl, atol=1e-12, rtol=0)


def test_lawson_rk4_is_fourth_order_and_exact_on_the_linear_part():
    # dw/dt = L w + i c w has the solution w0 exp((L + i c) t): the error of the RK4 part must
    # fall 16x per halving of dt, and with c = 0 the integrating factor is exact.
    linear = torch.tensor([-0.3 + 0j, -5.0 + 0j, -40.0 + 0j], dtype=torch.complex128)
    w0 = torch.tensor([1.0 + 0.5j, -0.3 + 1j, 2.0 + 0j], dtype=torch.complex128)
    t_end = 2.0

    def error(n_steps: int, c: float) -> float:
        w = w0.clone()
        for _ in range(n_steps):
            w = S.lawson_rk4_step(w, t_end / n_steps, linear, lambda z: 1j * c * z)
        return float((w - w0 * torch.exp((linear + 1j * c) * t_end)).abs().max())

    errors = [error(n, c=3.0) for n in (20, 40, 80)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(3.8 < p < 4.2 for p in orders), orders
    assert error(3, c=0.0) < 1e-14


def test_spectra_obey_parseval_and_put_a_mode_in_its_shell():
    height, width = 32, 64
    y = np.arange(height)[:, None] * (S.DOMAIN_Y / height)
    single = np.repeat(2.0 * np.cos(3 * y), width, axis=1)  # |k| = 3, mean of ω²/2 = 1
    k, z = S.enstrophy_spectrum(single)
    assert z[3] == pytest.approx(1.0, rel=1e-12) and np.delete(z, 3).max() < 1e-20

    rng = np.random.default_rng(0)
    omega, u, v = rng.standard_normal((3, 2, height, width))
    assert S.enstrophy_spectrum(omega)[1].sum() == pytest.approx((omega**2).mean() / 2, rel=1e-10)
    assert S.energy_spectrum(u, v)[1].sum() == pytest.approx(((u**2 + v**2) / 2).mean(), rel=1e-10)


# --------------------------------------------------------------------------------------------
# The default flow: incompressible, forced shear, heavy tails, resolved
# --------------------------------------------------------------------------------------------


def test_shapes_and_dtypes(default_run):
    for name in ("u", "v", "vorticity"):
        assert default_run[name].shape == (32, 64, 128) and default_run[name].dtype == np.float32
    np.testing.assert_array_equal(default_run["trajectory"], np.repeat(np.arange(4), 8))
    assert all(np.isfinite(default_run[name]).all() for name in ("u", "v", "vorticity"))


def test_velocity_is_divergence_free_and_vorticity_is_its_curl(default_run):
    u = torch.tensor(default_run["u"], dtype=torch.float64)
    v = torch.tensor(default_run["v"], dtype=torch.float64)
    omega = torch.tensor(default_run["vorticity"], dtype=torch.float64)
    gradient_scale = float(omega.abs().max())  # |∂u/∂y| and |∂v/∂x| are of this size
    # float32 storage rounds u, v at ~6e-8 relative; the derivative multiplies that by |k| <= 32.
    assert float(S.divergence(u, v).abs().max()) < 1e-5 * gradient_scale
    assert float((S.curl(u, v) - omega).abs().max()) < 1e-5 * gradient_scale


def test_mean_flow_is_the_forced_shear_weakened_by_turbulence(default_run):
    # The laminar solution is u = sin(k_f y) / (ν k_f² + α) = 3.85 sin(4y). Turbulence keeps a
    # mean profile in phase with the forcing but carries momentum across it, so its amplitude
    # falls well below the laminar one (measured 0.53).
    y = np.arange(64) * (S.DOMAIN_Y / 64)
    profile = default_run["u"].astype(np.float64).mean(axis=(0, 2))
    forcing = np.sin(4 * y)
    correlation = profile @ forcing / np.linalg.norm(profile) / np.linalg.norm(forcing)
    assert correlation > 0.9  # measured 0.96-0.99 over seeds 0-3
    amplitude = 2 * np.mean(profile * forcing)
    assert 0.1 < amplitude < 0.5 * 1 / (0.01 * 16 + 0.1)
    assert np.abs(default_run["v"].mean()) < 0.05 * default_run["v"].std()


def test_vorticity_is_heavy_tailed(default_run):
    # A Gaussian field has excess kurtosis 0 and the pure sin(4y) shear -1.5; coherent vortices
    # give heavy tails. Measured 0.20-0.48 over seeds 0-3 (0.30 over 16 x 240 snapshots).
    assert excess_kurtosis(default_run["vorticity"]) > 0.1


def test_enstrophy_spectrum_has_no_pileup_at_the_cutoff(default_run):
    k, z = S.enstrophy_spectrum(default_run["vorticity"])
    assert int(np.argmax(z)) == 4  # the forcing wavenumber
    # Shells 5..20 lie below the 2/3 cutoff (|k| < 21.3): a resolved run decays through all of
    # them (measured step ratios <= 0.84), an under-resolved one flattens or turns up at the end.
    tail = z[5:21]
    assert np.all(tail[1:] < tail[:-1])
    assert tail[-3:].max() < 3e-3 * z.max()  # measured 1e-3: three orders of magnitude down
    band = [z[lo : lo + 4].mean() for lo in (9, 13, 17)]
    assert band[0] > 2 * band[1] > 4 * band[2]


def test_spectra_agree_with_a_twice_finer_twin():
    # Same physics on 16x32 and 32x64 (independent initial states), averaged over 6 trajectories
    # x 20 snapshots. Shells 1-4 are complete below the coarse 2/3 cutoff (|k| < 5.3); measured
    # ratios lie within 0.99-1.07 over seeds 0-3. A wrong dealiasing or nonlinear term breaks this.
    physics = dict(viscosity=0.05, forcing_wavenumber=1, spinup_time=20.0, snapshot_interval=1.0, seed=0, oversample=1)
    coarse = K.simulate_kolmogorov(6, 20, 16, 32, **physics)
    fine = K.simulate_kolmogorov(6, 20, 32, 64, **physics)
    z_coarse = S.enstrophy_spectrum(coarse["vorticity"])[1][1:5]
    z_fine = S.enstrophy_spectrum(fine["vorticity"])[1][1:5]
    np.testing.assert_allclose(z_coarse / z_fine, 1.0, atol=0.15)


# --------------------------------------------------------------------------------------------
# Determinism, the dataset layout, errors
# --------------------------------------------------------------------------------------------

SMALL = dict(height=16, width=32, spinup_time=3.0, snapshot_interval=1.0, oversample=1)


def test_same_seed_same_arrays_independent_of_batching_and_workers():
    first = K.simulate_kolmogorov(3, 2, seed=7, batch_size=3, **SMALL)
    rebatched = K.simulate_kolmogorov(3, 2, seed=7, batch_size=1, **SMALL)
    in_workers = K.simulate_kolmogorov(3, 2, seed=7, workers=2, **SMALL)
    prefix = K.simulate_kolmogorov(2, 2, seed=7, **SMALL)
    other = K.simulate_kolmogorov(3, 2, seed=8, **SMALL)
    for name in ("u", "v", "vorticity"):
        np.testing.assert_array_equal(first[name], rebatched[name])
        np.testing.assert_array_equal(first[name], in_workers[name])
        np.testing.assert_array_equal(first[name][:4], prefix[name])
        assert not np.allclose(first[name], other[name])


def test_generate_splits_disjoint_trajectories_in_the_documented_layout():
    physics = dict(spinup_time=3.0, snapshot_interval=1.0)
    channels, split, attrs = K.generate_kolmogorov(
        5, 3, 16, 32, seed=2, snapshots_per_trajectory=2, **physics
    )
    assert set(channels) == {"u", "v", "vorticity"}
    assert all(c.shape == (8, 16, 32) and c.dtype == np.float32 for c in channels.values())
    np.testing.assert_array_equal(split, ["train"] * 5 + ["test"] * 3)

    trajectory, snapshot = K.sample_layout(5, 3, 2)
    assert set(trajectory[split == "train"]).isdisjoint(trajectory[split == "test"])
    # The rows really are those snapshots of those trajectories (a second, direct simulation).
    sim = K.simulate_kolmogorov(int(trajectory.max()) + 1, 2, 16, 32, seed=2, **physics)
    np.testing.assert_array_equal(channels["vorticity"], sim["vorticity"][trajectory * 2 + snapshot])
    np.testing.assert_array_equal(sim["trajectory"][trajectory * 2 + snapshot], trajectory)

    assert attrs["generator"] == "kolmogorov" and attrs["n_test_trajectories"] == 2
    assert attrs["periodic"] == "xy"  # the box is doubly periodic; data.periodic = "auto" reads this
    # 16 rows cannot resolve the default viscosity: the flow runs on 64x128 and is truncated.
    assert (attrs["oversample"], attrs["internal_height"], attrs["internal_width"]) == (4, 64, 128)
    # dt = 1 / ceil(1.0 / dt_max), dt_max = dx / (1.7 U_lam), dx = 2π/64, U_lam = 1 / (0.1 + 0.01·4²)
    assert attrs["dt"] == pytest.approx(1 / 67)
    assert all(isinstance(value, (str, int, float)) for value in attrs.values())


def test_resolving_oversample_follows_the_dissipation_scale():
    # 64 rows resolve ν = 0.01 (measured); the dissipation wavenumber grows as ν^(-1/2).
    assert K.resolving_oversample(64, 0.01) == 1
    assert K.resolving_oversample(32, 0.01) == 2
    assert K.resolving_oversample(16, 0.01) == 4
    assert K.resolving_oversample(64, 0.005) == 2  # needs 64·√2 ≈ 91 rows
    assert K.resolving_oversample(64, 0.04) == 1


def test_oversampled_run_is_truncated_spectrally():
    out = K.simulate_kolmogorov(2, 2, 16, 32, oversample=2, seed=1, spinup_time=3.0, snapshot_interval=1.0)
    u, v, omega = (torch.tensor(out[n], dtype=torch.float64) for n in ("u", "v", "vorticity"))
    assert u.shape == (4, 16, 32)
    assert float(S.divergence(u, v).abs().max()) < 1e-5 * float(omega.abs().max())
    assert float((S.curl(u, v) - omega).abs().max()) < 1e-5 * float(omega.abs().max())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(viscosty=0.01), "unknown Kolmogorov parameter"),
        (dict(forcing_wavenumber=6), "forcing_wavenumber"),
        (dict(viscosity=-1.0), "viscosity"),
        (dict(viscosity="0.01"), "must be a number"),
        (dict(oversample=0), "oversample"),
        (dict(dt=2.0, spinup_time=20.0), "unstable"),
    ],
)
def test_bad_parameters_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        K.generate_kolmogorov(2, 1, 16, 32, snapshots_per_trajectory=1, **kwargs)


def test_workers_exit_when_the_generator_is_killed(tmp_path):
    """A demo or `data generate` killed mid-simulation leaves no worker simulating on."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("from fieldpaint.data.kolmogorov import generate_kolmogorov\n"
              "generate_kolmogorov(4000, 400, 32, 64, workers=2)\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        children: list[int] = []
        while time.time() < deadline and len(children) < 2:  # wait for the two spawned workers
            time.sleep(0.5)
            out = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout
            children = [int(p) for p in out.split()]
            children = [p for p in children if "spawn_main" in open(f"/proc/{p}/cmdline").read()]
        assert len(children) >= 2, "the workers did not start"
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 10  # the workers poll their parent every second
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") and
                                         open(f"/proc/{p}/stat").read().split()[2] != "Z" for p in children):
        time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"
                   for p in children)

"""Kolmogorov flow: forced, non-Gaussian 2-D turbulence, the built-in default dataset.

Incompressible Navier-Stokes in vorticity form on a doubly periodic box (Kochkov et al. 2021,
PNAS 118, e2101784118, "Kolmogorov flow" with linear drag; Chandler & Kerswell 2013, JFM 722):

    dω/dt + u·∇ω = ν∇²ω − αω + f,      f = curl(sin(k_f y) e_x) = −k_f cos(k_f y),
    ω = −∇²ψ,   u = ∂ψ/∂y,   v = −∂ψ/∂x.

Domain [0, 4π) in x × [0, 2π) in y, sampled as (H, W) = (y rows, x columns); at 64×128 the grid
spacing is the same in x and y. The solver's maths (pseudo-spectral, 2/3 rule, Lawson RK4, float32)
and the spectra are in `fieldpaint.data.spectral`; this module is the dataset job: physical
parameters, the run plan, batches of trajectories over worker processes, and the train/test layout.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from fieldpaint.data.symmetry import kolmogorov_symmetries
from fieldpaint.data.spectral import (DOMAIN_X, DOMAIN_Y, KolmogorovOperators, SpectralGrid, forcing_vorticity,
                                      lawson_rk4_step, output_fields)
# Re-exported: callers (benchmarks/generate_kolmogorov.py) measure datasets with these.
from fieldpaint.data.spectral import curl, divergence, energy_spectrum, enstrophy_spectrum  # noqa: F401
from fieldpaint.data.workers import map_in_workers
from fieldpaint.errors import ConfigError

# Defaults, measured at 64x128 (`benchmarks/generate_kolmogorov.py --statistics`: 16 trajectories
# x 60 time units after spin-up, sampled every 0.25):
# - viscosity 0.01: about the finest ν this grid resolves. The enstrophy spectrum peaks at k_f = 4
#   and falls monotonically to 6e-4 of the peak at |k| = 20, the last full shell below the 2/3
#   cutoff, but its step ratio there is already 0.81 against 0.71 mid-range: a lower ν would pile
#   up. Vorticity excess kurtosis is +0.36 (+0.18 for the fluctuation about the mean shear); at
#   ν = 0.02 it is -0.09, the sin(4y) shear dominating the distribution.
# - spin-up 30 = 3 drag times 1/α; from random starts the kinetic energy is stationary
#   (0.64-0.69) from t ≈ 10 on.
# - snapshot interval 3: the autocorrelation of the vorticity fluctuation about the mean shear is
#   0.56 / 0.26 / 0.15 / 0.11 at lags 1 / 2 / 3 / 4, its integral time ≈ 2; lag 3 keeps 15 %
#   correlation at a third of the cost of lag 10 (the default size is then 2.2 M trajectory-steps).
# - dt: max(|u| + |v|) was 5.7-6.5, i.e. 1.5-1.7 U_lam, U_lam = A / (α + ν k_f²) = 3.85 the laminar
#   amplitude. We budget 1.7 U_lam at Courant 1.0 (dt = 0.015); RK4's stability limit with the
#   2/3-rule k_max = (2/3)π/dx is Courant 2√2·3/(2π) ≈ 1.35; runs stop with an error past 1.25.
DEFAULT_VISCOSITY = 0.01
DEFAULT_SPINUP_TIME = 30.0
DEFAULT_SNAPSHOT_INTERVAL = 3.0
DEFAULT_SNAPSHOTS_PER_TRAJECTORY = 102  # 9,180 + 1,020 = 90 + 10 trajectories of 102 snapshots
COURANT = 1.0  # target dt · max(|u|/dx + |v|/dy) for the velocity budget below
VELOCITY_BUDGET = 1.7  # expected max(|u| + |v|) in units of the laminar amplitude U_lam
MAX_COURANT = 1.25  # stop before RK4 goes unstable (limit ≈ 1.35)
RESOLVED_HEIGHT = 64  # grid rows that resolve DEFAULT_VISCOSITY (the spectrum numbers above)
IC_MAX_WAVENUMBER = 8.0  # initial vorticity is white in 1 <= |k| <= 8 ...
IC_VORTICITY_RMS = 3.0  # ... scaled to the stationary rms vorticity (measured 3.7)


# ----------------------------------------------------------------------------------------------
# Initial conditions
# ----------------------------------------------------------------------------------------------


def random_initial_vorticity(
    grid: SpectralGrid, seeds: list[int], max_wavenumber: float = IC_MAX_WAVENUMBER, rms: float = IC_VORTICITY_RMS
) -> torch.Tensor:
    """Band-limited random vorticity (1 ≤ |k| ≤ max_wavenumber, flat in that band), one per seed.

    Each trajectory draws from its own CPU generator, so its start depends only on its seed,
    not on how many trajectories run beside it. Returns compact spectra (B, H, n_kx).
    """
    noise = torch.stack(
        [torch.randn(grid.height, grid.width, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    k = grid.k2.sqrt()
    omega_hat = grid.to_spectral(noise) * grid.keep * ((k >= 1) & (k <= max_wavenumber))
    omega = grid.to_physical(omega_hat)
    return omega_hat * (rms / omega.std(dim=(-2, -1), keepdim=True))


# ----------------------------------------------------------------------------------------------
# Parameters and the run plan
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KolmogorovPhysics:
    """The generator's parameters; impossible values raise ConfigError naming the parameter."""

    viscosity: float = DEFAULT_VISCOSITY  # ν
    drag: float = 0.1  # α, linear drag
    forcing_wavenumber: int = 4  # k_f: the forcing is A sin(k_f y) along x
    forcing_amplitude: float = 1.0  # A
    spinup_time: float = DEFAULT_SPINUP_TIME  # simulated, then discarded
    snapshot_interval: float = DEFAULT_SNAPSHOT_INTERVAL  # between snapshots of one trajectory
    dt: float | None = None  # None: the Courant-safe default of `plan`
    oversample: int | None = None  # solver grid / output grid; None: `resolving_oversample`

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            optional = value is None and f.name in ("dt", "oversample")
            if not optional and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))):
                raise ConfigError(f"Kolmogorov parameter {f.name} must be a number, got {value!r}")
        if not self.viscosity > 0 or not self.drag >= 0 or not self.forcing_amplitude > 0:
            raise ConfigError(f"viscosity and forcing_amplitude must be > 0 and drag >= 0, got {self.viscosity}, "
                              f"{self.forcing_amplitude} and {self.drag}")
        if not self.snapshot_interval > 0 or not self.spinup_time >= 0:
            raise ConfigError(f"snapshot_interval must be > 0 and spinup_time >= 0, got "
                              f"{self.snapshot_interval} and {self.spinup_time}")
        if self.dt is not None and not self.dt > 0:
            raise ConfigError(f"dt must be > 0, got {self.dt}")
        if self.oversample is not None and (self.oversample != int(self.oversample) or self.oversample < 1):
            raise ConfigError(f"oversample must be an integer >= 1, got {self.oversample!r}")
        if self.forcing_wavenumber != int(self.forcing_wavenumber) or self.forcing_wavenumber < 1:
            raise ConfigError(f"forcing_wavenumber must be an integer >= 1, got {self.forcing_wavenumber!r}")

    def plan(self, height: int, width: int, snapshots: int) -> SimulationPlan:
        """Resolve oversample and dt for an output grid: the largest dt ≤ the requested one (or
        the default: VELOCITY_BUDGET · A / (α + ν k_f²) at Courant COURANT) dividing the interval."""
        if height < 8 or width < 8 or height % 2 or width % 2:
            raise ConfigError(f"height and width must be even and >= 8, got {height}x{width}")
        if not self.forcing_wavenumber < height / 3:
            raise ConfigError(f"forcing_wavenumber must be < height/3 = {height / 3:.1f} to be resolved, "
                              f"got {self.forcing_wavenumber}")
        oversample = int(self.oversample or resolving_oversample(height, self.viscosity))
        dx = min(DOMAIN_X / (width * oversample), DOMAIN_Y / (height * oversample))
        laminar_amplitude = self.forcing_amplitude / (self.drag + self.viscosity * self.forcing_wavenumber**2)
        dt_max = self.dt or COURANT * dx / (VELOCITY_BUDGET * laminar_amplitude)
        dt = self.snapshot_interval / math.ceil(self.snapshot_interval / dt_max - 1e-9)
        return SimulationPlan(
            height, width, oversample, float(self.viscosity), float(self.drag), int(self.forcing_wavenumber),
            float(self.forcing_amplitude), dt, spinup_steps=math.ceil(self.spinup_time / dt - 1e-9),
            steps_per_snapshot=round(self.snapshot_interval / dt), snapshots=snapshots,
        )


def resolving_oversample(height: int, viscosity: float) -> int:
    """The smallest integer factor by which a grid of `height` rows must be refined to resolve ν.

    RESOLVED_HEIGHT rows resolve DEFAULT_VISCOSITY; the dissipation wavenumber of the enstrophy
    cascade grows as ν^(-1/2) (Kraichnan 1967, Phys. Fluids 10, 1417).
    """
    needed = RESOLVED_HEIGHT * math.sqrt(DEFAULT_VISCOSITY / viscosity)
    return max(1, math.ceil(needed / height - 1e-9))


@dataclass(frozen=True)
class SimulationPlan:
    """Everything a batch of trajectories needs, resolved; plain values, so it can go to a worker."""

    height: int  # output grid
    width: int
    oversample: int  # the solver's grid is (oversample·height, oversample·width)
    viscosity: float
    drag: float
    forcing_wavenumber: int
    forcing_amplitude: float
    dt: float
    spinup_steps: int
    steps_per_snapshot: int
    snapshots: int  # per trajectory

    @property
    def total_steps(self) -> int:
        return self.spinup_steps + (self.snapshots - 1) * self.steps_per_snapshot


# ----------------------------------------------------------------------------------------------
# Running: batches of trajectories, in this process or in worker processes
# ----------------------------------------------------------------------------------------------


def simulate_batch(plan: SimulationPlan, seeds: list[int], report: Callable[[int], object] | None = None) -> np.ndarray:
    """Run one batch of trajectories; returns float32 (3, B, snapshots, H, W) for u, v, ω.

    `report(n)` receives the number of trajectory-steps done since its last call.
    """
    grid = SpectralGrid(plan.height * plan.oversample, plan.width * plan.oversample)
    forcing = forcing_vorticity(grid, plan.forcing_wavenumber, plan.forcing_amplitude)
    ops = KolmogorovOperators(grid, plan.viscosity, plan.drag, forcing)
    out = np.empty((3, len(seeds), plan.snapshots, plan.height, plan.width), np.float32)
    omega_hat = random_initial_vorticity(grid, seeds)
    with torch.no_grad():
        for step in range(plan.total_steps + 1):
            after_spinup = step - plan.spinup_steps
            if after_spinup >= 0 and after_spinup % plan.steps_per_snapshot == 0:
                fields = output_fields(omega_hat, grid, plan.height, plan.width)
                _check_stable(fields, step * plan.dt, plan.dt, grid)
                out[:, :, after_spinup // plan.steps_per_snapshot] = torch.stack(fields).numpy()
            elif step % 100 == 0 and not bool(torch.isfinite(omega_hat).all()):
                _raise_blow_up(step * plan.dt, "NaN/inf vorticity")
            if step < plan.total_steps:
                omega_hat = lawson_rk4_step(omega_hat, plan.dt, ops.linear, ops.nonlinear)
                if report is not None and (step + 1) % 50 == 0:
                    report(50 * len(seeds))
    if report is not None:
        report(plan.total_steps % 50 * len(seeds))
    return out


def _check_stable(fields, time: float, dt: float, grid: SpectralGrid) -> None:
    """Raise before a blow-up: NaN/inf, or an advective Courant number past RK4's safe range."""
    u, v, _ = fields
    if not (bool(torch.isfinite(u).all()) and bool(torch.isfinite(v).all())):
        _raise_blow_up(time, "NaN/inf velocity")
    courant = dt * float((u.abs() / (grid.lx / grid.width) + v.abs() / (grid.ly / grid.height)).max())
    if courant > MAX_COURANT:
        _raise_blow_up(time, f"Courant number {courant:.2f} > {MAX_COURANT}")


def _raise_blow_up(time: float, what: str) -> None:
    raise ConfigError(f"Kolmogorov simulation unstable at t={time:.2f} ({what}): lower dt, or raise the "
                      "viscosity or the grid size (oversample)")


def trajectory_seeds(seed: int, n_trajectories: int) -> list[int]:
    """Independent 63-bit seeds for trajectories 0..n-1, derived from one user seed."""
    children = np.random.SeedSequence(seed).spawn(n_trajectories)
    return [int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for c in children]


def simulate_kolmogorov(
    n_trajectories: int,
    snapshots_per_trajectory: int,
    height: int = 64,
    width: int = 128,
    *,
    seed: int = 0,
    viscosity: float = DEFAULT_VISCOSITY,
    drag: float = 0.1,
    forcing_wavenumber: int = 4,
    forcing_amplitude: float = 1.0,
    spinup_time: float = DEFAULT_SPINUP_TIME,
    snapshot_interval: float = DEFAULT_SNAPSHOT_INTERVAL,
    dt: float | None = None,
    oversample: int | None = None,
    batch_size: int = 32,
    workers: int = 1,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Simulate independent Kolmogorov-flow trajectories and sample snapshots from each.

    Each trajectory starts from its own band-limited random vorticity, runs `spinup_time`
    (discarded), then records a snapshot every `snapshot_interval`. The solver's grid is
    `oversample` times finer than (H, W), truncated spectrally to it; None picks the smallest
    factor that resolves ν, so a 32x64 dataset is the 64x128 flow, truncated. Trajectories run
    in batches of <= `batch_size` (32 suits the CPUs' caches) on one torch thread, over `workers`
    processes. Results are bitwise the same for any batch_size, workers or torch thread
    setting: trajectory i depends only on (seed, i).

    Returns float32 'u', 'v', 'vorticity' of shape (N, H, W), N = n_trajectories ·
    snapshots_per_trajectory, trajectory-major (row i is snapshot i % S of trajectory i // S),
    and int64 'trajectory' (N,). Raises ConfigError for impossible parameters or a blow-up.
    """
    physics = KolmogorovPhysics(viscosity, drag, forcing_wavenumber, forcing_amplitude, spinup_time,
                                snapshot_interval, dt, oversample)
    if min(n_trajectories, snapshots_per_trajectory, batch_size, workers) < 1:
        raise ConfigError("n_trajectories, snapshots_per_trajectory, batch_size and workers must be >= 1")
    plan = physics.plan(height, width, snapshots_per_trajectory)
    seeds = np.array(trajectory_seeds(seed, n_trajectories), dtype=np.int64)
    # Equal batches, a multiple of the worker count, so that no worker idles at the end.
    n_batches = min(n_trajectories, workers * math.ceil(math.ceil(n_trajectories / batch_size) / workers))
    batches = [b.tolist() for b in np.array_split(seeds, n_batches)]
    with tqdm(total=plan.total_steps * n_trajectories, unit="traj-step", disable=not progress,
              desc="kolmogorov") as bar:
        parts = map_in_workers(simulate_batch, [(plan, batch) for batch in batches], workers, bar.update)
    fields = np.concatenate(parts, axis=1).reshape(3, -1, height, width)  # trajectory-major rows
    out = dict(zip(("u", "v", "vorticity"), fields))
    out["trajectory"] = np.repeat(np.arange(n_trajectories, dtype=np.int64), snapshots_per_trajectory)
    return out


# ----------------------------------------------------------------------------------------------
# The dataset: train and test from disjoint trajectories
# ----------------------------------------------------------------------------------------------


def sample_layout(n_train: int, n_test: int, snapshots_per_trajectory: int) -> tuple[np.ndarray, np.ndarray]:
    """Trajectory and snapshot index of each row of `generate_kolmogorov`'s output, shape (N,).

    Train rows fill trajectories 0, 1, ... in order, S snapshots each; test rows start on the
    next unused trajectory, so no trajectory contributes to both splits.
    """
    s = snapshots_per_trajectory
    train, test = np.arange(n_train), np.arange(n_test)
    trajectory = np.concatenate([train // s, -(-n_train // s) + test // s])
    return trajectory.astype(np.int64), np.concatenate([train % s, test % s]).astype(np.int64)


def generate_kolmogorov(
    n_train: int = 9180,
    n_test: int = 1020,
    height: int = 64,
    width: int = 128,
    *,
    seed: int = 0,
    snapshots_per_trajectory: int = DEFAULT_SNAPSHOTS_PER_TRAJECTORY,
    progress: bool = False,
    workers: int | None = None,
    batch_size: int = 32,
    **physics,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """The built-in Kolmogorov dataset: (channels, split, attrs).

    channels: 'u', 'v', 'vorticity', each float32 (n_train + n_test, H, W) in the model's units
    (box 4π × 2π, forcing amplitude 1). split: 'train' / 'test' per row, train rows first, from
    disjoint trajectories; `sample_layout` gives each row's trajectory and snapshot. attrs: every
    generator parameter as str/int/float, ready to be NetCDF attributes. `physics`: the fields of
    KolmogorovPhysics. workers=None runs one process per core when the job is long enough to
    repay starting them (~3 s each), else here; the arrays are the same either way.
    """
    names = [f.name for f in dataclasses.fields(KolmogorovPhysics)]
    unknown = sorted(set(physics) - set(names))
    if unknown:
        raise ConfigError(f"unknown Kolmogorov parameter(s) {unknown}; allowed: {names}")
    if n_train < 1 or n_test < 0 or snapshots_per_trajectory < 1:
        raise ConfigError(f"need n_train >= 1, n_test >= 0, snapshots_per_trajectory >= 1; got "
                          f"{n_train}, {n_test}, {snapshots_per_trajectory}")
    plan = KolmogorovPhysics(**physics).plan(height, width, snapshots_per_trajectory)
    trajectory, snapshot = sample_layout(n_train, n_test, snapshots_per_trajectory)
    n_trajectories = int(trajectory.max()) + 1
    if workers is None:  # one process per core for runs over ~1 minute (2e5 trajectory-steps)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        cost = n_trajectories * plan.total_steps * plan.oversample**2
        workers = min(cores, n_trajectories) if cost > 2e5 else 1
    sim = simulate_kolmogorov(n_trajectories, snapshots_per_trajectory, height, width, seed=seed,
                              batch_size=batch_size, workers=workers, progress=progress, **physics)
    rows = trajectory * snapshots_per_trajectory + snapshot
    whole = np.array_equal(rows, np.arange(len(sim["u"])))  # then skip a 1 GB copy
    channels = {name: sim[name] if whole else sim[name][rows] for name in ("u", "v", "vorticity")}
    split = np.array(["train"] * n_train + ["test"] * n_test)
    n_train_trajectories = -(-n_train // snapshots_per_trajectory)
    attrs = {
        "generator": "kolmogorov",
        "equation": "d(omega)/dt + u.grad(omega) = nu lap(omega) - drag omega - A k_f cos(k_f y)",
        "seed": int(seed),
        **{k: v for k, v in asdict(plan).items() if k not in ("height", "width", "snapshots")},
        "spinup_time": plan.spinup_steps * plan.dt,
        "snapshot_interval": plan.steps_per_snapshot * plan.dt,
        "domain_x": DOMAIN_X,
        "domain_y": DOMAIN_Y,
        "periodic": "xy",  # doubly periodic box: read by data.periodic = "auto"
        "symmetries": kolmogorov_symmetries(plan.forcing_wavenumber),  # read by data.symmetries = "auto"
        "default_variables": "u,v",  # the velocity; vorticity is derived from it (data.variables = () reads this)
        "height": height,
        "width": width,
        "internal_height": height * plan.oversample,
        "internal_width": width * plan.oversample,
        "snapshots_per_trajectory": snapshots_per_trajectory,
        "n_train": n_train,
        "n_test": n_test,
        "n_train_trajectories": n_train_trajectories,
        "n_test_trajectories": n_trajectories - n_train_trajectories,
        "layout": "trajectory-major; train trajectories first, test trajectories after, disjoint",
        "initial_condition": f"white vorticity in 1 <= |k| <= {IC_MAX_WAVENUMBER:g}, rms {IC_VORTICITY_RMS:g}",
        "numerics": "pseudo-spectral, 2/3-rule dealiasing, Lawson integrating-factor RK4, float32",
        "downsampling": "spectral truncation" if plan.oversample > 1 else "none",
    }
    return channels, split, attrs

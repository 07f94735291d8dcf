"""Throughput of the Kolmogorov generator, and the statistics its defaults were chosen from.

    python benchmarks/generate_kolmogorov.py                  # 10 % of the default size, projected
    python benchmarks/generate_kolmogorov.py --full           # the whole 9,180 + 1,020 at 64x128
    python benchmarks/generate_kolmogorov.py --statistics     # autocorrelation, spectrum, kurtosis

Prints figures; asserts nothing. The generator runs one torch thread per process and one
process per core (`--workers`); the arrays do not depend on either.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402  (also puts the repository on sys.path)
import numpy as np  # noqa: E402

from fieldpaint.data import kolmogorov as K  # noqa: E402

DEFAULT_TRAIN, DEFAULT_TEST = 9180, 1020


def throughput(fraction: float, height: int, width: int, workers: int | None, progress: bool) -> None:
    n_train = max(1, round(DEFAULT_TRAIN * fraction))
    n_test = round(DEFAULT_TEST * fraction)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    channels, split, attrs = K.generate_kolmogorov(n_train, n_test, height, width, workers=workers, progress=progress)
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    n = len(split)
    trajectories = attrs["n_train_trajectories"] + attrs["n_test_trajectories"]
    steps_per_trajectory = round(attrs["spinup_time"] / attrs["dt"]) + round(
        (attrs["snapshots_per_trajectory"] - 1) * attrs["snapshot_interval"] / attrs["dt"]
    )
    per_step = elapsed / (trajectories * steps_per_trajectory)
    print(f"generated {n} snapshots ({n_train} train + {n_test} test, {trajectories} trajectories) "
          f"at {height}x{width} in {elapsed:.1f} s")
    print(f"  {n / elapsed:.1f} snapshots/s, {per_step * 1e6:.0f} us per trajectory-step "
          f"(dt = {attrs['dt']:.4f}, {steps_per_trajectory} steps per trajectory)")
    print(f"  CPU time {cpu:.0f} s (workers included), {cpu / elapsed:.2f} cores busy on average; "
          f"load average now {os.getloadavg()[0]:.1f}")
    if fraction < 1:  # the default size is 100 trajectories of the same length
        full = K.sample_layout(DEFAULT_TRAIN, DEFAULT_TEST, attrs["snapshots_per_trajectory"])[0].max() + 1
        print(f"  projected for {DEFAULT_TRAIN} + {DEFAULT_TEST} ({full} trajectories) at this rate: "
              f"{per_step * full * steps_per_trajectory / 60:.1f} min")
    speed = float((np.abs(channels["u"]) + np.abs(channels["v"])).max())
    dx = K.DOMAIN_Y / attrs["internal_height"]
    print(f"  max(|u|+|v|) {speed:.2f}: Courant {speed * attrs['dt'] / dx:.2f} (error past {K.MAX_COURANT})")
    memory = sum(c.nbytes for c in channels.values()) / 2**20
    print(f"  arrays: {memory:.0f} MiB; vorticity rms {channels['vorticity'].std():.2f}, "
          f"u rms {channels['u'].std():.2f}")


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def autocorrelation(fluctuation: np.ndarray, lags: list[int]) -> np.ndarray:
    """C(lag) = <ω'(t) ω'(t + lag)> / <ω'²>, averaged over trajectories, times and pixels.

    fluctuation: (trajectories, times, H, W), with the mean flow already removed.
    """
    variance = (fluctuation**2).mean()
    n_times = fluctuation.shape[1]
    return np.array([(fluctuation[:, lag:] * fluctuation[:, : n_times - lag]).mean() / variance for lag in lags])


def statistics(n_trajectories: int, duration: float, sample_every: float, height: int, width: int,
               viscosity: float, workers: int) -> None:
    n_snapshots = int(duration / sample_every) + 1
    start = time.perf_counter()
    out = K.simulate_kolmogorov(n_trajectories, n_snapshots, height, width, viscosity=viscosity,
                                snapshot_interval=sample_every, workers=workers)
    print(f"nu = {viscosity:g}: {n_trajectories} trajectories x {duration:g} time units after a "
          f"{K.DEFAULT_SPINUP_TIME:g} spin-up, sampled every {sample_every:g}: {time.perf_counter() - start:.0f} s")
    shape = (n_trajectories, n_snapshots, height, width)
    omega = out["vorticity"].astype(np.float64).reshape(shape)
    u, v = (out[n].astype(np.float64).reshape(shape) for n in ("u", "v"))

    energy = 0.5 * (u**2 + v**2).mean(axis=(0, 2, 3))
    print("kinetic energy vs time:", " ".join(f"{e:.3f}" for e in energy[:: max(1, n_snapshots // 8)]))
    plan = K.KolmogorovPhysics(viscosity=viscosity).plan(height, width, 1)
    speed = (np.abs(u) + np.abs(v)).max()
    dx = K.DOMAIN_Y / (height * plan.oversample)
    print(f"max(|u|+|v|) = {speed:.2f}; Courant at the default dt {plan.dt:.4f}: {speed * plan.dt / dx:.2f}")

    fluctuation = omega - omega.mean(axis=(0, 1, 3), keepdims=True)  # minus the mean shear ω̄(y)
    x = omega.ravel() - omega.mean()
    print(f"vorticity excess kurtosis {(x**4).mean() / (x**2).mean() ** 2 - 3:+.3f} "
          f"(fluctuation {(fluctuation**4).mean() / (fluctuation**2).mean() ** 2 - 3:+.3f})")

    k, z = K.enstrophy_spectrum(omega.reshape(-1, height, width))
    cutoff = int(height / 3) - 1  # the last complete shell below the 2/3 cutoff
    print(f"enstrophy spectrum peak at |k| = {int(np.argmax(z))}; Z({cutoff}) / peak = {z[cutoff] / z.max():.1e}; "
          f"step ratios near the cutoff {np.round(z[cutoff - 3 : cutoff + 1] / z[cutoff - 4 : cutoff], 2)}")

    lags = list(range(0, n_snapshots // 2))
    c = autocorrelation(fluctuation, lags)
    integral_time = np.trapezoid(c, dx=sample_every) if hasattr(np, "trapezoid") else np.trapz(c, dx=sample_every)
    shown = [round(t / sample_every) for t in (0.5, 1, 2, 3, 4, 6, 8, 10) if t / sample_every < len(lags)]
    print("autocorrelation of the vorticity fluctuation:",
          ", ".join(f"C({lag * sample_every:g}) = {c[lag]:.2f}" for lag in shown))
    print(f"integral time {integral_time:.2f}; default snapshot interval {K.DEFAULT_SNAPSHOT_INTERVAL:g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="generate the whole default size")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the default size otherwise")
    parser.add_argument("--statistics", action="store_true", help="measure the flow's statistics instead")
    parser.add_argument("--trajectories", type=int, default=16, help="for --statistics")
    parser.add_argument("--duration", type=float, default=60.0, help="for --statistics, after spin-up")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--viscosity", type=float, default=K.DEFAULT_VISCOSITY, help="for --statistics")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: automatic)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    print("\n".join(harness.machine_lines("cpu")))
    print(f"the generator uses 1 torch thread per process; workers {args.workers or 'automatic'}")
    if args.statistics:
        statistics(args.trajectories, args.duration, 0.25, args.height, args.width, args.viscosity, args.workers or 1)
    else:
        throughput(1.0 if args.full else args.fraction, args.height, args.width, args.workers, args.progress)


if __name__ == "__main__":
    main()

"""Kriging speed and accuracy at 64x128: fieldpaint's data-set-kernel local kriging against
scikit-learn's GaussianProcessRegressor fitted per field, and the GP part of the evaluation.

Fields are Matérn GRFs (nu = 1.5, l = 8 px; fieldpaint.data.grf.sample_matern_grf), observed
through random masks. On the same test fields and masks:

  ours      GPReconstructor('dataset', nu=..., neighbors=64): one kernel fitted once on
            --train training fields (fit_dataset: a random sample, 256 design points each),
            then simple kriging of each test field from the 64 observations nearest each tile.
            The one-off fit is timed and reported apart (the evaluation pays it once per data
            set and channel).
  sklearn   GaussianProcessRegressor(ConstantKernel * Matern(nu=1.5, ARD) + WhiteKernel) fitted
            per field, the usual way: bounds l in [0.5, 256] px, noise in [1e-6, 10], one start
            from (1, l = 4 px, noise 1e-3) (--sklearn-restarts adds random restarts); above
            1,500 observations fitted on a random 1,500-point subset (sklearn needs ~17 s per
            likelihood at 4,096 points), then conditioned on all observations.

(a) fields per second and MSE on the hidden pixels for both, and the ratio. (b) the GP part of
the default evaluation, 100 fields x 4 mask families x 7 coverages x 2 channels, estimated from
ours' measured seconds per field at each coverage (random masks stand in for every family;
block-shaped holes cost the same per hidden pixel), plus the one-off fits.

    python benchmarks/gp.py --quick          # < 1 min: tiny, to show it runs
    python benchmarks/gp.py                  # ~3 min on 2 idle cores
    python benchmarks/gp.py --threads 2      # torch threads (default 1: steadier on a busy box)

The load average is printed before and after: on a shared machine the timings are only as good
as the machine was idle.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

HEIGHT, WIDTH, LENGTH_SCALE = 64, 128, 8.0
EVAL_COVERAGES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)  # hidden fractions, 7 as the default
EVAL_CASES = 100 * 4 * 2  # fields x mask families x channels, at each coverage


def hidden_mse(mean: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    hidden = np.broadcast_to(mask == 0, truth.shape)
    return float(((mean - truth)[hidden] ** 2).mean())


def run_ours(recon, x: torch.Tensor, mask: torch.Tensor) -> tuple[float, np.ndarray]:
    """(seconds, mean), one field at a time as an evaluation would call it."""
    start, means = time.perf_counter(), []
    for b in range(len(x)):
        means.append(recon.reconstruct(x[b:b + 1], mask[b:b + 1], None, seed=b).mean.numpy())
    return time.perf_counter() - start, np.concatenate(means)


def run_sklearn(x: torch.Tensor, mask: torch.Tensor, max_points: int, restarts: int
                ) -> tuple[float, np.ndarray]:
    """(seconds, mean) for scikit-learn's GPR fitted per field (on a subset above max_points)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    from fieldpaint.baselines.gp import subsample

    bounds = (0.5, 2.0 * max(HEIGHT, WIDTH))
    kernel = ConstantKernel(1.0, (1e-5, 1e5)) * Matern([4.0, 4.0], bounds, nu=1.5) + \
        WhiteKernel(1e-3, (1e-6, 10.0))
    observed = mask[:, 0] > 0.5
    grid = np.argwhere(np.ones((HEIGHT, WIDTH), bool)).astype(np.float64)
    start, means = time.perf_counter(), []
    for b in range(len(x)):
        fit = subsample(observed[b].flatten()[None], max_points, b).view(HEIGHT, WIDTH).numpy()
        obs = observed[b].numpy()
        values = x[b, 0].double().numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = GaussianProcessRegressor(kernel, n_restarts_optimizer=restarts, random_state=b)
            model.fit(np.argwhere(fit).astype(np.float64), values[fit])
            if fit.sum() < obs.sum():  # condition on all observations, kernel fixed
                model = GaussianProcessRegressor(model.kernel_, optimizer=None)
                model.fit(np.argwhere(obs).astype(np.float64), values[obs])
        mean = model.predict(grid).reshape(HEIGHT, WIDTH)
        means.append(np.where(obs, values, mean)[None, None])
    return time.perf_counter() - start, np.concatenate(means)


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configuration, < 1 min")
    parser.add_argument("--train", type=int, default=64, help="training fields for the kernel")
    parser.add_argument("--fields", type=int, default=4, help="test fields per coverage, ours")
    parser.add_argument("--sklearn-fields", type=int, default=2, help="of those, for sklearn")
    parser.add_argument("--compare", default="0.5,0.9", help="hidden fractions for (a)")
    parser.add_argument("--nu", default="auto", help="ours: 0.5, 1.5, 2.5 or auto")
    parser.add_argument("--neighbors", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sklearn-restarts", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.train, args.fields, args.sklearn_fields, args.compare, args.nu = 8, 2, 1, "0.9", "1.5"

    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    from fieldpaint.baselines.gp import GPReconstructor
    from fieldpaint.data.grf import sample_matern_grf
    from fieldpaint.data.masks import make_masks

    nu = args.nu if args.nu == "auto" else float(args.nu)
    print(f"{HEIGHT}x{WIDTH} Matérn-1.5 GRF, l = {LENGTH_SCALE} px; torch {torch.__version__}, "
          f"{args.threads} thread(s), {os.cpu_count()} CPUs; load average {load()}")
    fields = sample_matern_grf(args.train + args.fields, 1, HEIGHT, WIDTH, nu=1.5,
                               length_scale=LENGTH_SCALE, seed=args.seed)
    train, x = torch.from_numpy(fields[:args.train]), torch.from_numpy(fields[args.train:])
    ours = GPReconstructor("dataset", nu=nu, neighbors=args.neighbors, device="cpu")
    start = time.perf_counter()
    kernel = ours.fit_dataset(train, None, max_fields=args.train, seed=args.seed)[0]
    fit_seconds = time.perf_counter() - start
    print(f"data-set kernel from {args.train} fields in {fit_seconds:.1f} s: nu {kernel.nu}, "
          f"l ({kernel.length_scale[0]:.2f}, {kernel.length_scale[1]:.2f}) px, "
          f"s2 {kernel.variance:.3f}, noise/s2 {kernel.noise / kernel.variance:.1e}")

    n_sk = min(args.sklearn_fields, args.fields)
    print(f"\n(a) ours on {args.fields} field(s), sklearn on {n_sk} "
          f"({1 + args.sklearn_restarts} start(s)); MSE on sklearn's fields")
    for fraction in (float(f) for f in args.compare.split(",")):
        mask = torch.from_numpy(make_masks("random", fraction, args.fields, HEIGHT, WIDTH,
                                           seed=args.seed + 1))
        t_ours, m_ours = run_ours(ours, x, mask)
        t_sk, m_sk = run_sklearn(x[:n_sk], mask[:n_sk], 1500, args.sklearn_restarts)
        truth, masks = x[:n_sk].numpy(), mask[:n_sk].numpy()
        e_ours, e_sk = hidden_mse(m_ours[:n_sk], truth, masks), hidden_mse(m_sk, truth, masks)
        f_ours, f_sk = args.fields / t_ours, n_sk / t_sk
        print(f"  {fraction:.0%} hidden ({int(mask[0].sum())} obs): ours {f_ours:8.2f} fields/s "
              f"MSE {e_ours:.5f} | sklearn {f_sk:7.4f} fields/s MSE {e_sk:.5f} | "
              f"speed x{f_ours / f_sk:.0f}, MSE ratio {e_ours / e_sk:.3f}")

    print("\n(b) the GP part of the default evaluation "
          f"({EVAL_CASES} field-channels at each of {len(EVAL_COVERAGES)} coverages)")
    total = 0.0
    for fraction in EVAL_COVERAGES:
        mask = torch.from_numpy(make_masks("random", fraction, args.fields, HEIGHT, WIDTH,
                                           seed=args.seed + 2))
        seconds, _ = run_ours(ours, x, mask)
        per_field = seconds / args.fields
        total += per_field * EVAL_CASES
        print(f"  {fraction:.0%} hidden: {per_field:.3f} s per field-channel")
    fits = 2 * fit_seconds  # one kernel per channel
    print(f"  estimate: {total / 3600:.2f} h of kriging + {fits / 60:.1f} min of fits "
          f"({args.threads} thread(s), this machine)")
    print(f"\nload average at the end {load()}")


if __name__ == "__main__":
    main()

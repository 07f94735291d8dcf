"""Kriging as a Reconstructor: per-field fits, a data-set kernel, or the generator's oracle."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Literal, Mapping, Sequence

import numpy as np
import torch

from fieldpaint.baselines.gp.fit import fit_dataset_gp, fit_gp, nus
from fieldpaint.baselines.gp.kernels import Family, Kernel
from fieldpaint.baselines.gp.observations import design_points, trend_tensor
from fieldpaint.baselines.gp.predict import MeanMode, gp_predict
from fieldpaint.data.masks import make_masks
from fieldpaint.errors import FieldpaintError
from fieldpaint.reconstruct import Reconstruction
from fieldpaint.runtime import torch_threads

ORACLE_NUGGET = 1e-8  # x variance: the generator's fields are noise-free
Mode = Literal["per-field", "dataset", "oracle"]


def oracle_kernel(attrs: Mapping, mean: float = 0.0, std: float = 1.0) -> Kernel:
    """The generator's own kernel (fieldpaint.data.grf.generate_grf attrs) in normalised units.

    Reconstructors see x = (field - mean) / std (the train statistics of this channel), so the
    variance becomes variance / std^2 and the GP mean (attrs mean - mean) / std. The nugget is a
    1e-8 x variance jitter: the generated fields are noise-free.
    """
    if attrs.get("kernel") != "matern" or attrs.get("length_scale_units", "pixels") != "pixels":
        raise FieldpaintError("an oracle GP needs generator attrs with kernel='matern' and the "
                              f"length scale in pixels; got {dict(attrs)!r}")
    nu, ls = float(attrs["nu"]), float(attrs["length_scale"])
    variance = float(attrs.get("variance", 1.0)) / std**2
    family = "rbf" if math.isinf(nu) else "matern"
    return Kernel(family, nu, (ls, ls), variance, ORACLE_NUGGET * variance,
                  (float(attrs.get("mean", 0.0)) - mean) / std)


def default_device() -> torch.device:
    """CUDA when available, else the CPU (float64: Apple's MPS has none)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class GPReconstructor:
    """Kriging as a Reconstructor (fieldpaint.reconstruct); inputs in normalised units.

    mode 'per-field': each field's kernel fitted to its own observations, as a practitioner
    would; default nu='auto' (Matérn 0.5, 1.5 and 2.5 with ARD, the highest marginal likelihood
    per field and channel wins). mode 'dataset': one kernel per channel fitted on many training
    fields (fit_dataset), the information the diffusion model gets. mode 'oracle': the
    generator's true kernel (from_attrs).

    mean: 'gls' (ordinary kriging: the default per field, where the mean is unknown) or 'fixed'
    (simple kriging with Kernel.mean: the default for 'dataset' and 'oracle'). With a `trend`
    (C, H, W), e.g. the training-mean field (mean_field), kriging runs on obs - trend and adds it
    back. Simple kriging is then the right default: the residual's mean is 0 at every pixel over
    the training set by construction, and the trend, estimated from N fields, errs by about
    s2 / N, far less than a GLS mean from a field's few observations at 99 % hidden (which
    ordinary kriging would pay for in its prediction, eq. 2.42). mean='gls' stays available for
    data whose per-field level wanders (then fit and predict both use it).

    periodic: (y, x) axes on which the field wraps (a doubly periodic flow: (True, True)); the
    kernel is periodised (kernels.py). neighbors: None for exact kriging, k (50-100) for local
    kriging (predict.py). device: where the float64 linear algebra runs ('auto': CUDA when
    available). threads: torch intra-op threads for the call (None: leave the caller's setting;
    1 suits many small problems on a busy CPU). Gaussian: `samples` is ignored, members is None.
    """

    def __init__(self, mode: Mode = "per-field", *, family: Family = "matern",
                 nu: float | str = "auto", ard: bool = True, mean: MeanMode | None = None,
                 include_noise: bool = True, restarts: int = 3, max_points: int = 1500,
                 kernels: Sequence[Kernel] | None = None, trend: torch.Tensor | None = None,
                 periodic: tuple[bool, bool] = (False, False), neighbors: int | None = None,
                 device: torch.device | str = "auto", threads: int | None = None) -> None:
        if mode not in ("per-field", "dataset", "oracle"):
            raise FieldpaintError(f"GP mode must be 'per-field', 'dataset' or 'oracle', "
                                  f"got {mode!r}")
        if mean not in (None, "gls", "fixed"):
            raise FieldpaintError(f"GP mean must be 'gls' or 'fixed', got {mean!r}")
        if len(periodic) != 2 or not all(isinstance(p, (bool, np.bool_)) for p in periodic):
            raise FieldpaintError(f"periodic must be two bools (y, x), got {periodic!r}")
        if neighbors is not None and (isinstance(neighbors, bool) or not isinstance(neighbors, int)
                                      or neighbors < 1):
            raise FieldpaintError(f"neighbors must be None or an integer >= 1, got {neighbors!r}")
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise FieldpaintError(f"restarts (the likelihood's optimisation starts) must be an integer >= 1, "
                                  f"got {restarts!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise FieldpaintError(f"threads must be None or an integer >= 1, got {threads!r}")
        nus(family, nu)
        self.mode, self.family, self.nu, self.ard = mode, family, nu, ard
        self.mean: MeanMode = mean or ("gls" if mode == "per-field" else "fixed")
        self.include_noise, self.restarts, self.max_points = include_noise, restarts, max_points
        self.kernels = list(kernels) if kernels is not None else None
        self.trend = None if trend is None else torch.as_tensor(trend).double()
        self.periodic = (bool(periodic[0]), bool(periodic[1]))
        self.neighbors, self.threads = neighbors, threads
        self.device = default_device() if device == "auto" else torch.device(device)
        self.name = f"gp-{mode}"

    @classmethod
    def from_attrs(cls, attrs: Mapping, stats=None, **options) -> GPReconstructor:
        """The oracle from generator attrs. stats: what normalised the data, a FieldStats (or
        any object with per-channel .mean and .std) or a (means, stds) pair; None: unnormalised."""
        if stats is None:
            channels = int(attrs.get("channels", 1))
            means, stds = [0.0] * channels, [1.0] * channels
        else:
            means, stds = (stats.mean, stats.std) if hasattr(stats, "std") else stats
        kernels = [oracle_kernel(attrs, float(m), float(s)) for m, s in zip(means, stds)]
        return cls("oracle", kernels=kernels, **options)

    def _threads(self):
        return torch_threads(self.threads) if self.threads is not None else contextlib.nullcontext()

    def fit_dataset(self, fields: torch.Tensor, valid: torch.Tensor | None = None,
                    masks_or_coverage: torch.Tensor | float | None = None, *,
                    max_fields: int = 64, points_per_field: int = 256, seed: int = 0,
                    n_fields: int | None = None) -> list[Kernel]:
        """Fit one kernel per channel to training fields (N, C, H, W) in normalised units by
        maximising the marginal likelihood summed over a random sample of max_fields of them
        (drawn from `seed`), after removing the trend; sets and returns self.kernels.

        Each field is seen at points_per_field pixels: by default a design of one dense random
        patch plus scattered pixels (observations.design_points: short lags fix nu and the
        nugget, long ones the length scale); or through the given masks (N, 1 or C, H, W), or
        random masks hiding a `coverage` fraction, subsampled to points_per_field.
        n_fields is the old name of max_fields.
        """
        fields = torch.as_tensor(fields)
        N, C, H, W = fields.shape
        count = min(N, n_fields if n_fields is not None else max_fields)
        pick = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(N, count,
                                                                           replace=False)))
        fields = fields[pick]
        if valid is not None:
            valid = torch.as_tensor(valid) > 0.5
            valid = valid[pick] if valid.ndim == 4 and valid.shape[0] == N and N > 1 else valid
        valid_1 = torch.ones(count, 1, H, W, dtype=torch.bool) if valid is None else \
            valid.expand(count, -1, H, W)[:, :1]
        if masks_or_coverage is None:
            masks = design_points(valid_1, points_per_field, seed).view(count, 1, H, W)
        elif isinstance(masks_or_coverage, (int, float)):
            masks = torch.from_numpy(make_masks("random", float(masks_or_coverage), count, H, W,
                                                valid=valid_1.numpy(), seed=seed))
        else:
            masks = torch.as_tensor(masks_or_coverage)
            masks = masks[pick] if masks.shape[0] == N else masks
        trend = None if self.trend is None else trend_tensor(self.trend, C, H, W, "cpu")
        with self._threads():
            self.kernels = fit_dataset_gp(fields, masks, valid, family=self.family, nu=self.nu,
                                          ard=self.ard, estimate_mean=self.mean == "gls",
                                          restarts=self.restarts, max_points=points_per_field,
                                          seed=seed, trend=trend, periodic=self.periodic,
                                          device=self.device)
        return self.kernels

    def reconstruct(self, obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, *,
                    samples: int = 1, seed: int = 0) -> Reconstruction:
        start = time.perf_counter()
        with self._threads():
            if self.mode == "per-field":
                kernels = fit_gp(obs, mask, valid, family=self.family, nu=self.nu, ard=self.ard,
                                 estimate_mean=self.mean == "gls", restarts=self.restarts,
                                 max_points=self.max_points, seed=seed, trend=self.trend,
                                 periodic=self.periodic, device=self.device)
            elif self.kernels is None:
                raise FieldpaintError(f"{self.name} has no kernels: call fit_dataset() or "
                                      "from_attrs()")
            else:
                kernels = self.kernels
            mean, std = gp_predict(obs, mask, valid, kernels, mean=self.mean,
                                   include_noise=self.include_noise, trend=self.trend,
                                   periodic=self.periodic, neighbors=self.neighbors,
                                   device=self.device)
        return Reconstruction(mean, std, None, 0, time.perf_counter() - start)

"""The one interface every reconstruction method shares, and the one place that builds a method by name.

A `Reconstructor` turns observations and a mask into a mean field, a per-pixel standard deviation
and, for ensemble methods, the members. Everything is in normalised units (the run's statistics);
callers denormalise. The CLI, the evaluation, the demo and the notebook API all build their methods
with `build_reconstructor`, and `METHODS` is the list of names they all offer.

Shapes: obs (B, C, H, W) with anything at hidden pixels (they are ignored), mask (B, 1, H, W) with
1 = observed, 0 = hidden, valid (B, 1, H, W) with 0 at never-valid pixels (no observation, no score).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from fieldpaint.errors import FieldpaintError


@dataclass
class Reconstruction:
    mean: torch.Tensor  # (B, C, H, W)
    std: torch.Tensor  # (B, C, H, W) predictive standard deviation; 0 where observed exactly
    members: torch.Tensor | None = None  # (B, K, C, H, W) ensemble members, None for Gaussian methods
    nfe: int = 0  # network evaluations per member (0 for baselines)
    seconds: float = 0.0  # wall time for the whole batch
    mean_step: int | None = None  # the sampling step whose denoised fields' member average is the mean; None:
    #                               the members' own average (or a Gaussian method's mean)
    spread_scale: float | None = None  # members recentred on the mean, their spread times this (None: as drawn)


class Reconstructor(Protocol):
    name: str

    def reconstruct(self, obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, *,
                    samples: int = 1, seed: int = 0) -> Reconstruction:
        """Reconstruct every hidden valid pixel of each field from its observed pixels."""
        ...


@dataclass
class FixedMembers:
    """`inner` drawing `samples` members whatever the caller asks: an evaluation can give a cheap
    sampler more members than an expensive one."""

    inner: Reconstructor
    samples: int

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise FieldpaintError(f"samples must be an integer >= 1, got {self.samples!r}")

    @property
    def name(self) -> str:
        return self.inner.name

    def reconstruct(self, obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, *,
                    samples: int = 1, seed: int = 0) -> Reconstruction:
        return self.inner.reconstruct(obs, mask, valid, samples=self.samples, seed=seed)


def innermost(method: Reconstructor) -> Reconstructor:
    """The reconstructor inside wrappers such as FixedMembers and api.OnModelGrid (each holds `inner`)."""
    while getattr(method, "inner", None) is not None:
        method = method.inner
    return method


FRAMES = ("fixed", "x", "y", "xy")  # the axes a diffusion method's members' frames are rolled along


def member_count(method: Reconstructor, default: int) -> int:
    """The members `method` draws when asked for `default`: a FixedMembers wrapper's own count."""
    while method is not None:
        if isinstance(method, FixedMembers):
            return method.samples
        method = getattr(method, "inner", None)
    return default


def with_mean_step(method: Reconstructor, step: int | None, frames: str = "fixed",
                   spread_scale: float | None = None) -> Reconstructor:
    """`method` (a DiffusionReconstructor, possibly in wrappers) with its mean from sampling step `step`,
    its members drawn in the `frames` given and, with a `spread_scale`, recentred on the mean with
    their spread scaled by it (DiffusionReconstructor's); the wrappers are copied, not changed."""
    return on_innermost(method, lambda core: core.with_mean_step(step).with_frames(frames)
                        .with_spread_scale(spread_scale))


def on_innermost(method: Reconstructor, change) -> Reconstructor:
    """`method` with `change` applied to the reconstructor inside its wrappers (`innermost`); the
    wrappers are copied, not changed."""
    inner = getattr(method, "inner", None)
    if inner is None:
        return change(method)
    outer = copy.copy(method)
    outer.inner = on_innermost(inner, change)
    return outer


def ensemble_summary(members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) over the member axis of (B, K, C, H, W); std is 0 for a single member."""
    mean = members.mean(dim=1)
    std = members.std(dim=1, unbiased=True) if members.shape[1] > 1 else torch.zeros_like(mean)
    return mean, std


def scaled_spread(rec: Reconstruction, scale: float | None) -> Reconstruction:
    """`rec`'s members post-processed member by member (Van Schaeybroeck & Vannitsem 2015):
    mean + scale · (member - members' average), so that they are centred on the reported mean (a
    step's Rao-Blackwellised mean, fieldpaint.mean_step, where one is chosen) with their spread,
    and the std, times `scale`; pixels the members agree on exactly (the observed ones) unchanged.
    None: `rec` as drawn."""
    if scale is None or rec.members is None:
        return rec
    average = rec.members.mean(dim=1, keepdim=True)
    moved = rec.mean.unsqueeze(1) + scale * (rec.members - average)
    members = torch.where(rec.std.unsqueeze(1) == 0, rec.members, moved)
    return dataclasses.replace(rec, members=members, std=rec.std * scale, spread_scale=scale)


def check_spread_scale(scale: float | None) -> None:
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise FieldpaintError(f"the spread scale must be a positive number, got {scale!r}")


# ----------------------------------------------------------------------------------------------
# the methods, by name

Needs = Literal["data", "unconditional", "conditional"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    needs: Needs  # data: a baseline (observations, and training fields for some); else a model of that kind
    summary: str  # one line for --help and the report


METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("gp", "data", "kriging with a Matérn kernel fitted to each field's own observations"),
    MethodSpec("gp-dataset", "data", "kriging with one kernel per channel fitted on training fields, "
                                     "the training-mean field as a known trend, torus distances on periodic data"),
    MethodSpec("gp-oracle", "data", "kriging with the generator's true kernel (Matérn-GRF files only)"),
    MethodSpec("nearest", "data", "nearest-observation fill"),
    MethodSpec("linear", "data", "piecewise-linear (Delaunay) fill, nearest outside the hull"),
    MethodSpec("laplace", "data", "harmonic (Laplace) fill"),
    MethodSpec("repaint", "unconditional", "RePaint (Lugmayr et al. 2022), respaced with jumps back"),
    MethodSpec("ddnm", "unconditional", "DDNM (Wang et al. 2023): null-space correction, then a DDIM step"),
    MethodSpec("mmps", "unconditional", "MMPS (Rozet et al. 2024): moment-matching posterior sampling, Tweedie "
                                        "covariance by a vector-Jacobian product and a conjugate-gradient solve"),
    MethodSpec("conditional", "conditional", "DDIM with the mask and known values given to the model"),
    MethodSpec("conditional-dpm", "conditional", "DPM-Solver++(2M) (Lu et al. 2022), 20 steps: second order, "
                                                 "for conditional models at few network evaluations"),
)}
METHOD_NAMES = tuple(METHODS)
BASELINES = tuple(n for n, s in METHODS.items() if s.needs == "data")
DIFFUSION_METHODS = tuple(n for n, s in METHODS.items() if s.needs != "data")
KRIGING = tuple(n for n in BASELINES if n.startswith("gp"))


def check_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise FieldpaintError(f"unknown method {name!r}; choose one of {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def fits(name: str, conditional: bool) -> bool:
    """Whether diffusion method `name` can run on a model that is (or is not) conditional."""
    needs = check_method(name).needs
    return needs != "data" and (needs == "conditional") == conditional


def check_fits(name: str, conditioning: str) -> None:
    """Raise a one-line error when diffusion method `name` cannot run on a model with this conditioning."""
    needs = check_method(name).needs
    if needs == "data":
        return
    if needs == "unconditional" and conditioning != "none":
        raise FieldpaintError(f"method {name!r} needs an unconditional model, but this model is conditioned "
                              f"(model.conditioning: {conditioning}); use a method for conditional models: "
                              f"{', '.join(n for n in DIFFUSION_METHODS if METHODS[n].needs == 'conditional')}")
    if needs == "conditional" and conditioning == "none":
        raise FieldpaintError(f"method {name!r} needs a concat/FiLM model, but this model is unconditional "
                              f"(model.conditioning: none); use one of "
                              f"{', '.join(n for n in DIFFUSION_METHODS if METHODS[n].needs == 'unconditional')}")


@dataclass
class BaselineData:
    """What a baseline may use besides the observations: the normalisation statistics, the data
    file's attributes (a GRF's true kernel, periodicity) and the training split, loaded on first use."""

    stats: object  # FieldStats: the statistics the observations are normalised with
    attrs: dict = field(default_factory=dict)
    load_train: Callable[[], object] | None = None  # -> FieldSplit of the train split, same statistics
    periodic: tuple[bool, bool] = (False, False)  # (along y, along x)
    _train: object = None

    def train(self):
        if self._train is None:
            if self.load_train is None:
                raise FieldpaintError("gp-dataset fits its kernel on training fields, but none were given "
                                      "(name a run, or the training data file)")
            self._train = self.load_train()
        return self._train


def build_reconstructor(name: str, *, run=None, data: BaselineData | None = None, sampler: dict | None = None,
                        gp: dict | None = None, seed: int = 0) -> Reconstructor:
    """The reconstructor called `name` (one of METHODS).

    run: a `fieldpaint.runs.TrainedRun`, for diffusion methods; data: what baselines may use;
    sampler: DiffusionReconstructor keywords (steps, eta, device, ...); gp: GPReconstructor keywords.
    """
    spec = check_method(name)
    if spec.needs != "data":
        from fieldpaint.diffusion.reconstructor import DiffusionReconstructor

        if run is None:
            raise FieldpaintError(f"method {name!r} needs a trained model: name a run or checkpoint")
        check_fits(name, run.config.model.conditioning)
        return DiffusionReconstructor(run.model, run.config, method=name, **(sampler or {}))
    if name in ("nearest", "linear", "laplace"):
        from fieldpaint.baselines.interp import InterpReconstructor

        return InterpReconstructor(name)
    return _kriging(name, data, gp or {}, seed)


# Kriging predicts each hidden pixel from its 64 nearest observations (exact kriging where a field
# has at most twice as many): within 1 % of exact kriging's MSE at 50-90 % hidden
# (tests/test_gp_local.py), and what makes a 64x128 evaluation at 50 % hidden take seconds, not hours.
KRIGING_DEFAULTS = {"neighbors": 64}


def _kriging(name: str, data: BaselineData | None, options: dict, seed: int) -> Reconstructor:
    from fieldpaint.baselines.gp import GPReconstructor

    options = {**KRIGING_DEFAULTS, **options}
    if name == "gp":
        return GPReconstructor("per-field", **options)
    if data is None:
        raise FieldpaintError(f"{name} needs the data's statistics and attributes")
    if name == "gp-oracle":
        if data.attrs.get("kernel") is None:
            raise FieldpaintError("gp-oracle needs a dataset made by `fieldpaint data generate grf` "
                                  "(its file records the true kernel); this one has none")
        return GPReconstructor.from_attrs(data.attrs, data.stats, **_prediction_options(options))
    return dataset_kriging(data, options, seed)


def _prediction_options(options: dict) -> dict:
    """The options that also apply to a GP whose kernel is given, not fitted."""
    return {k: v for k, v in options.items() if k in ("neighbors", "device", "include_noise", "threads")}


def dataset_kriging(data: BaselineData, options: dict, seed: int) -> Reconstructor:
    """gp-dataset: one kernel per channel fitted on training fields (the information the
    diffusion model had), around the training-mean field, with torus distances on periodic data."""
    from fieldpaint.baselines.gp import GPReconstructor, mean_field

    train = data.train()
    trend = mean_field(train.x, train.valid)
    gp = GPReconstructor("dataset", trend=trend, periodic=data.periodic, **options)
    gp.fit_dataset(train.x, train.valid, seed=seed)
    gp.name = "gp-dataset"
    return gp

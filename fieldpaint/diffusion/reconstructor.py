"""A trained diffusion model plus a sampler, as a `Reconstructor` (fieldpaint.reconstruct).

Methods and their defaults:

    repaint      unconditional models; RePaint 250 steps, jumps 10 x 10 (2,410 network evaluations):
                 the configuration of Lugmayr et al. 2022.
    ddnm         unconditional models; DDNM 100 steps, η = 1.0. η = 1 is DDNM's Algorithm 1 exactly
                 (the DDPM posterior step) and, on the analytic Gaussian oracle (tests/test_samplers.py),
                 had a smaller bias than η = 0.85, the reference code's default (whose η also means
                 something else: a mix of fresh noise and ε̂, not Song et al.'s σ_t).
    conditional  concat/FiLM models; DDIM 50 steps, η = 0.0. On the Gaussian oracle the ensemble
                 spread of deterministic DDIM at 25-50 steps is closer to the posterior std
                 (0.93-0.98 of it at 50 steps) than that of η = 1 / ancestral sampling (0.89-0.96),
                 at the same accuracy of the mean.
    mmps         unconditional models; MMPS (Rozet et al. 2024) 50 steps, η = 1, 5 CG iterations (see
                 DEFAULT_CG_ITERATIONS); with converged CG, the exact kriging posterior on the Gaussian
                 oracle (tests/test_mmps.py). Each step costs one forward and one backward pass per CG
                 iteration; `nfe` counts the forwards.
    conditional-dpm  concat/FiLM models; DPM-Solver++(2M) (Lu et al. 2022), 20 steps uniform in
                 log-SNR: on the Gaussian oracle its spread at 10-20 evaluations is as close to the
                 posterior's as DDIM-50's (tests/test_solvers.py).

With sigma_y > 0, RePaint and DDNM+ are heuristics, about 4x over-confident at observed pixels
(member spread 0.024 against the exact posterior's 0.092 at σ_y = 0.1): use mmps for noisy
observations. Conditional models refuse sigma_y > 0 (they were trained on exact known values).
sigma_y is in normalised units: one float, a per-channel sequence, or a per-pixel tensor
(C|1, H, W) or (B|1, C|1, H, W); fieldpaint.diffusion.sigma_y turns the data's units (what a
user knows) into these.

The mean: by default the members' average. With `mean_step = k` (conditional methods) it is the
members' average of the denoiser's x̂_0 at sampling step k of S (1 = the noisiest): x̂_0(x_t, y)
estimates E[x_0 | x_t, y], so its average over the members' x_t estimates E[x_0 | y] with part of
the K-member Monte-Carlo error integrated out (a Rao-Blackwellised mean), through a network that is
less accurate at high noise. Step S is the members' average itself. The evaluation chooses k per
mask family and coverage on training fields (fieldpaint.mean_step); `step_means` gives every step's.

Members: member k of case b is drawn with its own generator, seeded from (seed, b, k), so the
result does not depend on `batch_size`. With `frames` naming periodic axes ('x', 'y' or 'xy'),
member k of K is drawn in a frame rolled by k/K of the field along them and rolled back
(`member_shift`): the network's zero-padded borders, which it never sees across, then sit elsewhere
for every member, and the members' errors are less alike. That is right only where the field wraps
and its statistics do not depend on the position along the axis; the evaluation chooses it on
validation fields (fieldpaint.mean_step). With `symmetries` (the data's declared ones,
fieldpaint.data.symmetry, the identity first), member k is also drawn in the frame of symmetry
k mod their number and mapped back: every frame is a case of the same distribution, and by the
convexity of the squared error the members' mean over the frames is no worse in expectation than
the mean in one frame with as many members (what differs between frames is the network's error,
and averaging it can only shrink its mean square). Never-valid pixels are held at x0 = 0 in every sampler,
as in training, and never scored. Values of `obs` at hidden pixels are ignored (NaN allowed).
Everything is in normalised units.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
import warnings
from typing import Literal

import numpy as np
import torch
from torch import nn

from fieldpaint.config import Config
from fieldpaint.diffusion.samplers import (check_eps_deterministic, ddim, ddnm, dpm_solver_2m, mmps,
                                           model_denoiser, repaint)
from fieldpaint.diffusion.schedule import make_schedule
from fieldpaint.diffusion.conditioning import conditioning_input
from fieldpaint.data.symmetry import Symmetry
from fieldpaint.diffusion.frames import MemberFrames, check_frames, member_shift
from fieldpaint.errors import FieldpaintError
from fieldpaint.reconstruct import Reconstruction, check_fits, check_spread_scale, ensemble_summary, scaled_spread
from fieldpaint.diffusion.sigma_y import SigmaYOption, is_noisy_option, sigma_y_option
from fieldpaint.runtime import resolve_precision, select_device

Method = Literal["repaint", "ddnm", "mmps", "conditional", "conditional-dpm"]
DEFAULT_STEPS = {"repaint": 250, "ddnm": 100, "mmps": 50, "conditional": 50, "conditional-dpm": 20}
# RePaint has no η (its steps are ancestral), nor has DPM-Solver++(2M) (deterministic by design).
DEFAULT_ETA = {"ddnm": 1.0, "mmps": 1.0, "conditional": 0.0}
# MMPS: 5 conjugate-gradient iterations per step, chosen by the evaluation. On the demo's trained
# unconditional model (benchmarks/sampling.py, 6 fields x 6 groups) MMPS-50 with 5 iterations beat
# RePaint-250/10/10 in all 6 groups and DDNM-100 in 6 (5 intervals below 1), at 550 forward
# equivalents; with 10 it did worse (a network's Jacobian is no exact covariance, and a tighter solve
# fits its errors). On the exact Gaussian oracle 10 iterations are closer to the converged solve
# (0.07 posterior std at 50 % hidden; 20: 0.01): raise --cg-iterations for near-linear models.
DEFAULT_CG_ITERATIONS = 5
# The network's precision while sampling: "auto" is bf16 autocast + channels_last for the
# conditional methods of v-predicting models where the device computes bf16 natively
# (runtime.bf16_native), fp32 elsewhere. Measured there only: on the demo's conditional model on a
# 2-core AVX512-BF16 CPU, DPM-Solver++ sampled 2.1x faster with the same MSE to 3 digits
# (benchmarks/sampling_precision.py). ε-models amplify ε̂'s rounding by 1/√ᾱ at the first steps
# (check_eps_deterministic), and MMPS solves through the network's Jacobian: both stay fp32 unless
# "bf16" is asked for. The sampler's own arithmetic is fp32 in every case.
PRECISIONS = ("fp32", "bf16", "auto")


def sampling_precision(precision: str, method: str, prediction: str, device: torch.device):
    """`precision` resolved for a sampler (runtime.Precision); see PRECISIONS."""
    if precision not in PRECISIONS:
        raise FieldpaintError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto" and (method not in CONDITIONAL or prediction != "v"):
        return resolve_precision("fp32", "auto", device)
    return resolve_precision(precision, "auto", device)
CONDITIONAL = ("conditional", "conditional-dpm")


def member_generator(seed: int, case: int, member: int) -> torch.Generator:
    """A CPU generator for member `member` of case `case`, seeded from (seed, case, member) through
    numpy's SeedSequence (well-mixed, so neighbouring seeds give unrelated streams)."""
    words = np.random.SeedSequence([seed, case, member]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(words[0]) << 32 | int(words[1])) & (2**63 - 1))


def _device(name: str | torch.device) -> torch.device:
    return name if isinstance(name, torch.device) else select_device(str(name))


class DiffusionReconstructor:
    """RePaint, DDNM, MMPS, conditional DDIM or DPM-Solver++ over a model, behind the `Reconstructor`
    interface. `sigma_y` (normalised units): a float, a per-channel sequence, or a per-pixel tensor
    (C|1, H, W) or (B|1, C|1, H, W), B the number of fields passed to `reconstruct`; it is kept as
    given in `self.sigma_y` and as the sampler's float or tensor in `self.noise`."""

    def __init__(self, model: nn.Module, config: Config, *, method: Method, steps: int | None = None,
                 jump_length: int = 10, jump_n_sample: int = 10, eta: float | None = None,
                 sigma_y: SigmaYOption = 0.0,
                 cg_iterations: int = DEFAULT_CG_ITERATIONS, batch_size: int = 16, mean_step: int | None = None,
                 precision: str = "fp32", frames: str = "fixed", symmetries: tuple[Symmetry, ...] = (),
                 spread_scale: float | None = None, device: str | torch.device = "cpu",
                 progress: bool = False) -> None:
        check_fits(method, config.model.conditioning)
        steps = DEFAULT_STEPS[method] if steps is None else steps
        eta = DEFAULT_ETA.get(method, 1.0) if eta is None else eta  # (ignored by repaint)
        T = config.diffusion.timesteps
        for name, value, low in (("steps", steps, 1), ("jump_length", jump_length, 1),
                                 ("jump_n_sample", jump_n_sample, 1), ("batch_size", batch_size, 1),
                                 ("cg_iterations", cg_iterations, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FieldpaintError(f"{name} must be an integer >= {low}, got {value!r}")
        if steps > T:
            raise FieldpaintError(f"steps must be at most the model's {T} training timesteps, got {steps}")
        check_mean_step(mean_step, method, steps)
        check_frames(frames)
        check_spread_scale(spread_scale)
        if not 0.0 <= eta <= 1.0:
            raise FieldpaintError(f"eta must be in [0, 1], got {eta}")
        self.noise = sigma_y_option(sigma_y, len(config.data.variables))  # float or CPU tensor
        noisy = is_noisy_option(self.noise)
        if method == "ddnm" and noisy and eta == 0.0:
            raise FieldpaintError("ddnm with sigma_y > 0 (DDNM+) needs eta > 0: "
                                  "with eta = 0 it ignores noisy observations")
        if method in CONDITIONAL and noisy:
            raise FieldpaintError("a conditional model was trained on exact known values: sigma_y > 0 would be "
                                  "silently wrong; use mmps on an unconditional model for noisy observations")
        warning = check_eps_deterministic(config.diffusion.prediction, eta) if method in ("ddnm", "mmps",
                                                                                           "conditional") else None
        if warning:
            warnings.warn(warning, stacklevel=2)
        self.cg_iterations = cg_iterations
        self.device = _device(device)
        self.precision = sampling_precision(precision, method, config.diffusion.prediction, self.device)
        self.model = model.to(self.device).eval()
        if self.precision.channels_last:  # a copy: Module.to converts in place, and others may share the model
            self.model = copy.deepcopy(self.model).to(memory_format=torch.channels_last)
        self.config, self.method, self.steps, self.eta, self.sigma_y = config, method, steps, eta, sigma_y
        self.jump_length, self.jump_n_sample, self.frames = jump_length, jump_n_sample, frames
        self.symmetries = tuple(symmetries)
        self.batch_size, self.progress = batch_size, progress
        self.mean_step = None if mean_step == steps else mean_step  # step S is the members' average
        self.spread_scale = spread_scale  # None: the members as drawn (`scaled_spread`)
        self.schedule = make_schedule(config.diffusion.schedule, T)
        self.name = f"diffusion-{method}"

    def with_sigma_y(self, sigma_y: SigmaYOption) -> "DiffusionReconstructor":
        """The same model and sampler with another σ_y (e.g. a per-pixel field padded or cut to a
        tile's grid); the same checks as at construction."""
        noise = sigma_y_option(sigma_y, len(self.config.data.variables))
        if is_noisy_option(noise) and (self.method in CONDITIONAL or (self.method == "ddnm" and self.eta == 0.0)):
            raise FieldpaintError(f"{self.method} with eta = {self.eta} cannot take sigma_y > 0")
        other = copy.copy(self)
        other.sigma_y, other.noise = sigma_y, noise
        return other

    def with_mean_step(self, mean_step: int | None) -> "DiffusionReconstructor":
        """The same model and sampler, its mean taken from sampling step `mean_step` (None: the members)."""
        check_mean_step(mean_step, self.method, self.steps)
        other = copy.copy(self)
        other.mean_step = None if mean_step == self.steps else mean_step
        return other

    def with_spread_scale(self, scale: float | None) -> "DiffusionReconstructor":
        """The same model and sampler, its members recentred on its mean with their deviations from
        their average, and its std, times `scale` (a spread calibrated on validation cases,
        fieldpaint.mean_step.spread_scale; `scaled_spread`); None: the members as drawn."""
        check_spread_scale(scale)
        other = copy.copy(self)
        other.spread_scale = scale
        return other

    def with_frames(self, frames: str) -> "DiffusionReconstructor":
        """The same model and sampler, its members drawn in frames rolled along `frames` (FRAMES)."""
        check_frames(frames)
        other = copy.copy(self)
        other.frames = frames
        return other

    def with_symmetries(self, symmetries: tuple[Symmetry, ...]) -> "DiffusionReconstructor":
        """The same model and sampler, member k also drawn in the frame of symmetries[k mod their
        number] (the identity first; () or the identity alone: none)."""
        other = copy.copy(self)
        other.symmetries = () if all(s.is_identity for s in symmetries) else tuple(symmetries)
        return other

    def _sample(self, obs: torch.Tensor, mask: torch.Tensor, fixed: torch.Tensor, generators: list[torch.Generator],
                sigma_y: float | torch.Tensor = 0.0,
                keep: tuple[int, ...] = ()) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """One batch of members: obs (N, C, H, W) with 0 at hidden pixels, mask (N, 1|C, H, W),
        fixed (N, 1, H, W): never-valid pixels, held at x0 = 0 as in training; sigma_y a float or
        broadcastable to (N, C, H, W). Returns (x_0, NFE, the denoiser's x̂_0 at the sampling steps
        `keep` as (len(keep), N, C, H, W) on the CPU, or None when keep is empty)."""
        conditional = self.method in CONDITIONAL
        cond = conditioning_input(obs, mask) if conditional else None
        network = model_denoiser(self.model, self.schedule, self.config.diffusion.prediction, cond)
        denoiser = KeptSteps(network, keep) if keep else network
        dtype = self.precision.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            x, nfe = self._run_sampler(denoiser, obs, mask, fixed, generators, sigma_y)
        return x, nfe, denoiser.stacked() if keep else None

    def _run_sampler(self, denoiser, obs: torch.Tensor, mask: torch.Tensor, fixed: torch.Tensor,
                     generators: list[torch.Generator], sigma_y: float | torch.Tensor) -> tuple[torch.Tensor, int]:
        common = dict(generator=generators, steps=self.steps, sigma_y=sigma_y, fixed=fixed)
        if self.method == "repaint":
            return repaint(denoiser, obs, mask, self.schedule, jump_length=self.jump_length,
                           jump_n_sample=self.jump_n_sample, **common)
        if self.method == "ddnm":
            return ddnm(denoiser, obs, mask, self.schedule, eta=self.eta, **common)
        if self.method == "mmps":
            return mmps(denoiser, obs, mask, self.schedule, eta=self.eta, cg_iterations=self.cg_iterations, **common)
        if self.method == "conditional-dpm":
            return dpm_solver_2m(denoiser, obs.shape, self.schedule, obs=obs, mask=mask, **common)
        return ddim(denoiser, obs.shape, self.schedule, eta=self.eta, obs=obs, mask=mask, **common)

    def _inputs(self, obs: torch.Tensor, mask: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(obs with 0 where not observed, float mask of observed AND valid pixels), on the device."""
        channels = len(self.config.data.variables)
        if obs.ndim != 4 or obs.shape[1] != channels:
            raise FieldpaintError(f"obs must have shape (B, {channels}, H, W) for this model, got {tuple(obs.shape)}")
        for name, m in (("mask", mask), ("valid", valid)):
            fits = m.ndim == 4 and m.shape[1] in (1, channels) and m.shape[0] == obs.shape[0]
            if not fits or m.shape[2:] != obs.shape[2:]:
                raise FieldpaintError(f"{name} must have shape (B, 1, H, W) or (B, C, H, W) matching obs "
                                      f"{tuple(obs.shape)}, got {tuple(m.shape)}")
        observed = (mask > 0.5) & (valid > 0.5)
        if self.method in CONDITIONAL and observed.shape[1] > 1:
            if not bool((observed == observed[:, :1]).all()):
                raise FieldpaintError("a conditional model takes one mask for all channels; "
                                      "this mask differs between channels")
            observed = observed[:, :1]
        at_observed = observed.expand_as(obs)
        if not bool(torch.isfinite(obs[at_observed]).all()):
            raise FieldpaintError("obs has NaN or inf at observed pixels (mask = 1 and valid)")
        obs = torch.where(at_observed, obs, torch.zeros_like(obs)).float()
        fixed = (valid < 0.5)[:, :1].expand(obs.shape[0], 1, *obs.shape[2:])
        return obs.to(self.device), observed.float().to(self.device), fixed.to(self.device)

    def _noise_for(self, obs: torch.Tensor, observed: torch.Tensor) -> float | torch.Tensor:
        """σ_y for these fields: a float, or (B, C, H, W) on the device with 0 wherever nothing is
        observed (a per-pixel error field may be NaN there); refused if not finite where observed."""
        if not isinstance(self.noise, torch.Tensor):
            return self.noise
        sigma = self.noise.to(self.device)
        if sigma.shape[0] not in (1, obs.shape[0]) or sigma.shape[2:] not in ((1, 1), obs.shape[2:]):
            raise FieldpaintError(f"sigma_y of shape {tuple(sigma.shape)} does not fit {obs.shape[0]} fields of "
                                  f"{obs.shape[2]}x{obs.shape[3]}")
        sigma = sigma.expand_as(obs)
        at_observed = observed.expand_as(obs) > 0.5
        if not bool(torch.isfinite(sigma[at_observed]).all()):
            raise FieldpaintError("sigma_y is NaN or inf at observed pixels")
        return torch.where(at_observed, sigma, torch.zeros_like(sigma))

    def reconstruct(self, obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, *, samples: int = 1,
                    seed: int = 0) -> Reconstruction:
        """K = `samples` members per case: mean, std (0 where observed exactly) and members (B, K, C, H, W);
        the mean from sampling step `mean_step` when it is set."""
        keep = () if self.mean_step is None else (self.mean_step,)
        rec, means = self._reconstruct(obs, mask, valid, samples, seed, keep)
        if means is not None:
            rec.mean, rec.mean_step = means[0].to(rec.mean.device), self.mean_step
        return scaled_spread(rec, self.spread_scale)

    def step_means(self, obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, *, samples: int = 1,
                   seed: int = 0) -> tuple[Reconstruction, torch.Tensor]:
        """`reconstruct` (its mean the members') and, for every sampling step s = 1..S (the noisiest
        first), the members' average of the denoiser's x̂_0 at s: (S, B, C, H, W), observed values
        kept exact, 0 at never-valid pixels. Entry S - 1 is the members' average. Conditional methods."""
        check_mean_step(1, self.method, self.steps)
        return self._reconstruct(obs, mask, valid, samples, seed, tuple(range(1, self.steps + 1)))

    def _reconstruct(self, obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, samples: int, seed: int,
                     keep: tuple[int, ...]) -> tuple[Reconstruction, torch.Tensor | None]:
        if samples < 1 or seed < 0:
            raise FieldpaintError(f"samples must be >= 1 and seed >= 0, got samples={samples}, seed={seed}")
        started = time.perf_counter()
        out_device = obs.device
        obs, observed, fixed = self._inputs(obs, mask, valid)
        noise = self._noise_for(obs, observed)
        B = obs.shape[0]
        members = torch.empty((B, samples, *obs.shape[1:]), dtype=obs.dtype)  # (B, K, C, H, W), on the CPU
        kept_sums = torch.zeros((len(keep), *obs.shape), dtype=torch.float64) if keep else None  # (S', B, C, H, W)
        pairs = [(b, k) for b in range(B) for k in range(samples)]
        nfe = 0
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            cases = torch.tensor([b for b, _ in chunk], device=self.device)
            frame = MemberFrames([member_shift(k, samples, *obs.shape[2:], self.frames) for _, k in chunk],
                                 [self.symmetries[k % len(self.symmetries)] for _, k in chunk] if self.symmetries
                                 else None)
            seen, land = frame(observed[cases], signed=False), frame(fixed[cases], signed=False)
            # a sign's offset (data.symmetry, normalised units) must not reach unobserved or never-valid pixels
            x, nfe, kept = self._sample(frame(obs[cases]) * seen, seen, land,
                                        [member_generator(seed, b, k) for b, k in chunk],
                                        frame(noise[cases], signed=False) if isinstance(noise, torch.Tensor)
                                        else noise, keep)
            x = frame.back(x).masked_fill(fixed[cases].to(x.device), 0.0)
            kept = None if kept is None else torch.stack([frame.back(step) for step in kept])
            for row, (b, k) in enumerate(chunk):
                members[b, k] = x[row].cpu()
                if kept is not None:
                    kept_sums[:, b] += kept[:, row]
            if self.progress:
                print(f"{self.name}: {start + len(chunk)}/{len(pairs)} members, "
                      f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        mean, std = ensemble_summary(members)
        if not is_noisy_option(noise) or isinstance(noise, torch.Tensor):
            exact = (observed.cpu() > 0.5).expand_as(mean)
            if isinstance(noise, torch.Tensor):  # exact observations where σ_y = 0
                exact = exact & (noise.cpu() == 0)
            mean = torch.where(exact, obs.cpu(), mean)  # the samplers return obs exactly; the mean's rounding does not
            std = torch.where(exact, torch.zeros_like(std), std)
        means = None
        if kept_sums is not None:  # conditional methods: σ_y = 0, observed values exact
            exact = (observed.cpu() > 0.5).expand_as(mean)
            means = (kept_sums / samples).to(mean.dtype)
            means = torch.where(exact, obs.cpu(), means).masked_fill(fixed.cpu().expand_as(mean), 0.0)
        rec = Reconstruction(mean=mean.to(out_device), std=std.to(out_device), members=members.to(out_device),
                             nfe=nfe, seconds=time.perf_counter() - started)
        return rec, means


def check_mean_step(mean_step: int | None, method: str, steps: int) -> None:
    """A mean step is a sampling step 1..steps of a conditional method (whose samplers call the
    network once per step, so call s is step s)."""
    if mean_step is None:
        return
    if method not in CONDITIONAL:
        raise FieldpaintError(f"mean_step applies to the conditional methods ({', '.join(CONDITIONAL)}), "
                              f"not {method}")
    if isinstance(mean_step, bool) or not isinstance(mean_step, int) or not 1 <= mean_step <= steps:
        raise FieldpaintError(f"mean_step must be a sampling step from 1 to {steps} (the steps), got {mean_step!r}")


class KeptSteps:
    """A denoiser that keeps its outputs at the given calls (1 = the first), on the CPU."""

    def __init__(self, denoiser, keep: tuple[int, ...]) -> None:
        self.denoiser, self.keep, self.kept, self.calls = denoiser, keep, {}, 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0 = self.denoiser(x_t, t)
        self.calls += 1
        if self.calls in self.keep:
            self.kept[self.calls] = x0.detach().to("cpu", torch.float64)
        return x0

    def stacked(self) -> torch.Tensor:
        return torch.stack([self.kept[s] for s in self.keep])

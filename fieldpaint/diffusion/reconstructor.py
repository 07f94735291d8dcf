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
    mmps         unconditional models; MMPS (Rozet et al. 2024) 50 steps, η = 1, 10 CG iterations: the
                 exact kriging posterior on the Gaussian oracle (tests/test_mmps.py). Each step costs one
                 forward and ~10 backward passes; `nfe` counts the forwards.
    conditional-dpm  concat/FiLM models; DPM-Solver++(2M) (Lu et al. 2022), 20 steps uniform in
                 log-SNR: on the Gaussian oracle its spread at 10-20 evaluations is as close to the
                 posterior's as DDIM-50's (tests/test_solvers.py).

With sigma_y > 0, RePaint and DDNM+ are heuristics, about 4x over-confident at observed pixels
(member spread 0.024 against the exact posterior's 0.092 at σ_y = 0.1): use mmps for noisy
observations. Conditional models refuse sigma_y > 0 (they were trained on exact known values).

Members: member k of case b is drawn with its own generator, seeded from (seed, b, k), so the
result does not depend on `batch_size`. Never-valid pixels are held at x0 = 0 in every sampler,
as in training, and never scored. Values of `obs` at hidden pixels are ignored (NaN allowed).
Everything is in normalised units.
"""

from __future__ import annotations

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
from fieldpaint.errors import FieldpaintError
from fieldpaint.reconstruct import Reconstruction, check_fits, ensemble_summary
from fieldpaint.runtime import select_device

Method = Literal["repaint", "ddnm", "mmps", "conditional", "conditional-dpm"]
DEFAULT_STEPS = {"repaint": 250, "ddnm": 100, "mmps": 50, "conditional": 50, "conditional-dpm": 20}
# RePaint has no η (its steps are ancestral), nor has DPM-Solver++(2M) (deterministic by design).
DEFAULT_ETA = {"ddnm": 1.0, "mmps": 1.0, "conditional": 0.0}
# MMPS: 10 conjugate-gradient iterations leave x̂0 ~0.07 posterior std from the converged solve
# at 50 % hidden on the Gaussian oracle (20: 0.01); each costs one backward pass (~2 forwards).
DEFAULT_CG_ITERATIONS = 10
CONDITIONAL = ("conditional", "conditional-dpm")


def member_generator(seed: int, case: int, member: int) -> torch.Generator:
    """A CPU generator for member `member` of case `case`, seeded from (seed, case, member) through
    numpy's SeedSequence (well-mixed, so neighbouring seeds give unrelated streams)."""
    words = np.random.SeedSequence([seed, case, member]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(words[0]) << 32 | int(words[1])) & (2**63 - 1))


def _device(name: str | torch.device) -> torch.device:
    return name if isinstance(name, torch.device) else select_device(str(name))


class DiffusionReconstructor:
    """RePaint, DDNM or conditional DDIM over a model, behind the `Reconstructor` interface."""

    def __init__(self, model: nn.Module, config: Config, *, method: Method, steps: int | None = None,
                 jump_length: int = 10, jump_n_sample: int = 10, eta: float | None = None, sigma_y: float = 0.0,
                 cg_iterations: int = DEFAULT_CG_ITERATIONS, batch_size: int = 16,
                 device: str | torch.device = "cpu", progress: bool = False) -> None:
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
        if not 0.0 <= eta <= 1.0:
            raise FieldpaintError(f"eta must be in [0, 1], got {eta}")
        if not sigma_y >= 0.0:
            raise FieldpaintError(f"sigma_y must be >= 0, got {sigma_y}")
        if method == "ddnm" and sigma_y > 0 and eta == 0.0:
            raise FieldpaintError("ddnm with sigma_y > 0 (DDNM+) needs eta > 0: "
                                  "with eta = 0 it ignores noisy observations")
        if method in CONDITIONAL and sigma_y > 0:
            raise FieldpaintError("a conditional model was trained on exact known values: sigma_y > 0 would be "
                                  "silently wrong; use mmps on an unconditional model for noisy observations")
        warning = check_eps_deterministic(config.diffusion.prediction, eta) if method in ("ddnm", "mmps",
                                                                                           "conditional") else None
        if warning:
            warnings.warn(warning, stacklevel=2)
        self.cg_iterations = cg_iterations
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        self.config, self.method, self.steps, self.eta, self.sigma_y = config, method, steps, eta, sigma_y
        self.jump_length, self.jump_n_sample = jump_length, jump_n_sample
        self.batch_size, self.progress = batch_size, progress
        self.schedule = make_schedule(config.diffusion.schedule, T)
        self.name = f"diffusion-{method}"

    def _sample(self, obs: torch.Tensor, mask: torch.Tensor, fixed: torch.Tensor,
                generators: list[torch.Generator]) -> tuple[torch.Tensor, int]:
        """One batch of members: obs (N, C, H, W) with 0 at hidden pixels, mask (N, 1|C, H, W),
        fixed (N, 1, H, W): never-valid pixels, held at x0 = 0 as in training."""
        conditional = self.method in CONDITIONAL
        cond = conditioning_input(obs, mask) if conditional else None
        denoiser = model_denoiser(self.model, self.schedule, self.config.diffusion.prediction, cond)
        common = dict(generator=generators, steps=self.steps, sigma_y=self.sigma_y, fixed=fixed)
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

    def reconstruct(self, obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, *, samples: int = 1,
                    seed: int = 0) -> Reconstruction:
        """K = `samples` members per case: mean, std (0 where observed exactly) and members (B, K, C, H, W)."""
        if samples < 1 or seed < 0:
            raise FieldpaintError(f"samples must be >= 1 and seed >= 0, got samples={samples}, seed={seed}")
        started = time.perf_counter()
        out_device = obs.device
        obs, observed, fixed = self._inputs(obs, mask, valid)
        B = obs.shape[0]
        members = torch.empty((B, samples, *obs.shape[1:]), dtype=obs.dtype)  # (B, K, C, H, W), on the CPU
        pairs = [(b, k) for b in range(B) for k in range(samples)]
        nfe = 0
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            cases = torch.tensor([b for b, _ in chunk], device=self.device)
            x, nfe = self._sample(obs[cases], observed[cases], fixed[cases],
                                  [member_generator(seed, b, k) for b, k in chunk])
            for row, (b, k) in enumerate(chunk):
                members[b, k] = x[row].cpu()
            if self.progress:
                print(f"{self.name}: {start + len(chunk)}/{len(pairs)} members, "
                      f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        mean, std = ensemble_summary(members)
        if self.sigma_y == 0.0:
            exact = (observed.cpu() > 0.5).expand_as(mean)
            mean = torch.where(exact, obs.cpu(), mean)  # the samplers return obs exactly; the mean's rounding does not
            std = torch.where(exact, torch.zeros_like(std), std)
        return Reconstruction(mean=mean.to(out_device), std=std.to(out_device), members=members.to(out_device),
                              nfe=nfe, seconds=time.perf_counter() - started)

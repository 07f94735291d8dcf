"""σ_y, the observation-noise std, from the data's units (what a user knows) to the normalised
units the samplers take: pure functions that the CLI, the notebook API and inpaint call, and the
check of DiffusionReconstructor's `sigma_y` option."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fieldpaint.errors import FieldpaintError

SigmaYOption = float | Sequence[float] | torch.Tensor  # what DiffusionReconstructor(sigma_y=...) takes


def parse_sigma_y(text: str) -> float | dict[str, float]:
    """The value of `--sigma-y`, in the data's (physical) units: `0.3` (every variable) or
    `sst=0.3` / `u=0.1,v=0.2` (per variable; a variable not named is observed exactly)."""
    def number(item: str, value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise FieldpaintError(f"sigma_y {item!r}: {value!r} is not a number") from None
        if not (math.isfinite(x) and x >= 0):
            raise FieldpaintError(f"sigma_y {item!r}: must be finite and >= 0, got {value}")
        return x

    text = text.strip()
    if "=" not in text:
        return number(text, text)
    out: dict[str, float] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, value = (p.strip() for p in item.partition("="))
        if not sep or not name:
            raise FieldpaintError(f"sigma_y {item!r}: write NAME=VALUE, e.g. sst=0.3, or one number for every variable")
        if name in out:
            raise FieldpaintError(f"sigma_y names {name!r} twice")
        out[name] = number(item, value)
    return out


def sigma_y_in_normalised_units(spec: float | Mapping[str, float] | None, variables: Sequence[str],
                                stats) -> float | tuple[float, ...] | None:
    """σ_norm,c = σ_phys,c / std_c for each channel c (the run's statistics `stats.std`, in the
    order of `variables`, the names `spec` may use). A float applies to every variable; a mapping
    names some (the others get 0: exact). Returns a float for one channel, a tuple for several,
    None for spec None (no noise given)."""
    if spec is None:
        return None
    std = [float(s) for s in stats.std]
    if len(std) != len(variables):
        raise FieldpaintError(f"{len(variables)} variables but statistics for {len(std)} channels")
    if isinstance(spec, Mapping):
        unknown = [k for k in spec if k not in variables]
        if unknown:
            raise FieldpaintError(f"sigma_y names unknown variable(s) {', '.join(unknown)}; "
                                  f"the variables are {', '.join(variables)}")
        phys = [float(spec.get(v, 0.0)) for v in variables]
    else:
        phys = [float(spec)] * len(variables)
    for v, x in zip(variables, phys):
        if not (math.isfinite(x) and x >= 0):
            raise FieldpaintError(f"sigma_y for {v!r} must be finite and >= 0, got {x}")
    normalised = tuple(x / s for x, s in zip(phys, std))
    return normalised[0] if len(normalised) == 1 else normalised


def parse_sigma_y_variable(text: str, variables: Sequence[str]) -> tuple[str | None, ...]:
    """The value of `--sigma-y-variable`: per channel, the input variable holding its per-pixel
    error std (physical units). `err` (one variable for every channel) or `u=u_err,v=v_err`
    (a channel not named is observed exactly: None)."""
    text = text.strip()
    if "=" not in text:
        if not text:
            raise FieldpaintError("sigma_y variable: give a variable name")
        return tuple(text for _ in variables)
    named: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, source = (p.strip() for p in item.partition("="))
        if not sep or not name or not source:
            raise FieldpaintError(f"sigma_y variable {item!r}: write CHANNEL=VARIABLE, e.g. sst=sst_error")
        if name not in variables:
            raise FieldpaintError(f"sigma_y variable names unknown variable {name!r}; "
                                  f"the variables are {', '.join(variables)}")
        named[name] = source
    return tuple(named.get(v) for v in variables)


def sigma_y_field_in_normalised_units(errors, stats) -> torch.Tensor:
    """Per-pixel error std in physical units, (N, C, H, W) array or tensor (NaN allowed where nothing
    is observed), divided by each channel's std: the normalised σ_y (N, C, H, W) float32."""
    e = torch.as_tensor(errors, dtype=torch.float32)
    std = torch.tensor([float(s) for s in stats.std], dtype=torch.float32)
    if e.ndim != 4 or e.shape[1] != len(std):
        raise FieldpaintError(f"per-pixel sigma_y must have shape (N, {len(std)}, H, W), got {tuple(e.shape)}")
    return e / std.reshape(1, -1, 1, 1)


def sigma_y_field_from_dataset(ds, spec: str, variables: Sequence[str], stats) -> torch.Tensor:
    """`--sigma-y-variable SPEC` read from the input dataset `ds` (the grid of `variables`) and
    converted with `stats`: (N, C, H, W) normalised, 0 for channels without an error variable."""
    from fieldpaint.data.fields import dataset_layout, read_fields

    sources = parse_sigma_y_variable(spec, variables)
    layout = dataset_layout(ds, list(variables), None, None, None)
    n = ds.sizes[layout.sample_dim] if layout.sample_dim else 1
    named = [s for s in dict.fromkeys(sources) if s is not None]
    if not named:
        raise FieldpaintError(f"sigma_y variable {spec!r} names no error variable")
    read = dict(zip(named, np.moveaxis(read_fields(ds, named, layout, np.arange(n)), 1, 0)))  # name -> (N, H, W)
    shape = next(iter(read.values())).shape
    errors = np.stack([read[s] if s is not None else np.zeros(shape, np.float32) for s in sources], axis=1)
    return sigma_y_field_in_normalised_units(errors, stats)


def sigma_y_attribute(sigma_y: SigmaYOption) -> float | list[float] | str:
    """σ_y as a NetCDF attribute: the float, the per-channel list, or "per-pixel"."""
    if isinstance(sigma_y, torch.Tensor):
        if sigma_y.numel() == 1:
            return float(sigma_y)
        return "per-pixel"
    if isinstance(sigma_y, Sequence):
        return [float(v) for v in sigma_y]
    return float(sigma_y)


def sigma_y_option(sigma_y: SigmaYOption, channels: int) -> float | torch.Tensor:
    """DiffusionReconstructor's sigma_y, checked: a float, (1, C, 1, 1) per channel, or (B|1, C|1, H, W)."""
    if isinstance(sigma_y, torch.Tensor):
        t = sigma_y.detach().float().cpu()
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1] not in (1, channels):
            raise FieldpaintError(f"per-pixel sigma_y must have shape (C, H, W) or (B, C, H, W) with C = 1 or "
                                  f"{channels}, got {tuple(sigma_y.shape)}")
        if bool((t < 0).any()):
            raise FieldpaintError(f"sigma_y must be >= 0, got min {float(t.nan_to_num(0).min())}")
        return t  # non-finite values are allowed where nothing is observed (checked in reconstruct)
    if isinstance(sigma_y, Sequence) and not isinstance(sigma_y, str):
        values = [float(v) for v in sigma_y]
        if len(values) != channels:
            raise FieldpaintError(f"per-channel sigma_y needs {channels} values (one per channel), got {len(values)}")
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise FieldpaintError(f"sigma_y must be finite and >= 0, got {values}")
        return torch.tensor(values, dtype=torch.float32).reshape(1, channels, 1, 1)
    if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)) or not sigma_y >= 0.0:
        raise FieldpaintError(f"sigma_y must be a number >= 0, a per-channel sequence or a tensor, got {sigma_y!r}")
    return float(sigma_y)


def is_noisy_option(sigma_y: float | torch.Tensor) -> bool:
    return bool((sigma_y.nan_to_num(0.0) > 0).any()) if isinstance(sigma_y, torch.Tensor) else sigma_y > 0

"""Typed, validated configuration: frozen dataclasses, named presets, YAML and `--set a.b=c`.

A config is data. Presets live as YAML files in `fieldpaint/presets/`; each one overrides the
defaults declared here. Loading is strict: an unknown key, a wrong type or an impossible value
raises `ConfigError` naming the key (`model.chanels`), never a silent None.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from fieldpaint.errors import ConfigError

MaskFamily = Literal["random", "stations", "tracks", "boxes", "mixed"]
AttentionKind = Literal["mhsa", "linear", "neighborhood", "channel"]


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None  # NetCDF/Zarr/npz file (make one with `fieldpaint data generate`)
    variables: tuple[str, ...] = ("u", "v")  # data variables, one channel each
    height: int = 64  # H (y), grid rows
    width: int = 128  # W (x), grid columns
    sample_dim: str | None = None  # name of the sample/time dimension; None = detect
    y_dim: str | None = None  # name of the row dimension; None = detect (y, lat, ...)
    x_dim: str | None = None  # name of the column dimension; None = detect (x, lon, ...)
    test_fraction: float = 0.1  # used only when the file has no `split` variable
    train_samples: int | None = None  # keep only the first N training samples (None = all)


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["unet", "uvit", "dit"] = "unet"  # backbone: UNet, U-ViT (Bao et al. 2023), DiT (Peebles & Xie 2023)
    channels: tuple[int, ...] = (32, 64, 128, 128)  # width per level; one downsampling per level
    num_res_blocks: int = 2  # ResBlocks per level on the way down
    attention_levels: tuple[Union[int, str], ...] = ("bottleneck",)  # level index, "HxW" or "bottleneck"
    attention: AttentionKind = "mhsa"  # attention operator at those levels
    attention_bottleneck: AttentionKind | None = None  # operator at the bottleneck; None = same as `attention`
    attention_window: int = 7  # k of the k x k window of 'neighborhood' attention (odd)
    attention_heads: int = 4  # heads per attention block
    dropout: float = 0.1  # dropout inside every ResBlock
    norm_groups: int = 32  # GroupNorm groups; must divide every channel width
    resample: Literal["conv", "interp"] = "conv"  # learned (stride-2 conv / nearest + conv) or fixed (avg-pool / bilinear)
    conditioning: Literal["none", "concat", "film"] = "none"  # see fieldpaint.models.unet
    time_embed_mult: int = 8  # time-embedding MLP width = time_embed_mult * channels[0] (256 in every preset)
    film_channels: int = 32  # width of the FiLM conditioning encoder (conditioning: film)
    patch_size: int = 4  # uvit/dit: side of the square patches that become tokens
    hidden_size: int = 192  # uvit/dit: token width
    depth: int = 9  # uvit/dit: transformer blocks (odd for uvit: in, mid, out)
    mlp_ratio: float = 4.0  # uvit/dit: MLP width = mlp_ratio * hidden_size
    pos_embed: Literal["sincos", "learned"] = "sincos"  # uvit/dit: fixed 2-D sin-cos or learned position embedding


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: Literal["cosine", "linear"] = "cosine"  # beta schedule
    timesteps: int = 1000  # T
    prediction: Literal["eps", "v"] = "eps"  # network target


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 64  # global batch (summed over DDP ranks)
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 0.0  # floor of the cosine decay
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # after warmup
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4  # decoupled (AdamW); Adam's L2 term when optimizer is adam
    warmup_epochs: float = 10.0  # linear LR warmup
    ema_decay: float = 0.9999
    ema_warmup_steps: int = 2000  # decay ramps linearly 0 -> ema_decay over these steps
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    seed: int = 0
    eval_train_samples: int = 1024  # fixed train subset scored each epoch; 0 = the full train split
    overfit_patience: int = 5  # warn when test loss has risen for this many epochs
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # torch.use_deterministic_algorithms
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    num_workers: int = 0


@dataclass(frozen=True)
class MasksConfig:
    family: MaskFamily = "mixed"  # mask family drawn for conditional training
    coverage: tuple[float, float] = (0.5, 0.995)  # hidden fraction, drawn uniformly in this range


@dataclass(frozen=True)
class Config:
    name: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass, strictly typed


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert lists to tuples; raise naming `key`."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"config key {key!r}: {value!r} has the wrong type "
                          f"(expected {' or '.join(_type_name(a) for a in args)})")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config key {key!r}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module


def _build(cls: type, values: Any, prefix: str = "") -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config key {prefix or '<root>'!r}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; allowed here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def to_dict(config: Any) -> dict:
    """Plain dict (lists, not tuples) ready for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(config)


def from_dict(values: dict) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict."""
    config = _build(Config, values)
    validate(config)
    return config


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------
# cross-field validation


def parse_resolution(text: str, key: str) -> tuple[int, int]:
    try:
        h, w = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"config key {key!r}: {text!r} is not a level index, 'HxW' or 'bottleneck'") from None
    return h, w


def level_resolutions(config: Config) -> list[tuple[int, int]]:
    """(H, W) of each UNet level, then of the bottleneck (one halving per level)."""
    h, w = config.data.height, config.data.width
    return [(h >> i, w >> i) for i in range(len(config.model.channels) + 1)]


def attention_level_indices(config: Config) -> set[int]:
    """Resolve `model.attention_levels` to level indices; len(channels) is the bottleneck."""
    m = config.model
    resolutions = level_resolutions(config)
    out = set()
    for i, entry in enumerate(m.attention_levels):
        key = f"model.attention_levels[{i}]"
        if isinstance(entry, int):
            if not 0 <= entry <= len(m.channels):
                raise ConfigError(f"config key {key!r}: level {entry} does not exist "
                                  f"(levels 0..{len(m.channels) - 1}, {len(m.channels)} = bottleneck)")
            out.add(entry)
        elif entry == "bottleneck":
            out.add(len(m.channels))
        else:
            res = parse_resolution(entry, key)
            if res not in resolutions:
                have = ", ".join(f"{a}x{b}" for a, b in resolutions)
                raise ConfigError(f"config key {key!r}: the model has no level at {entry} "
                                  f"(its resolutions are {have})")
            out.add(resolutions.index(res))
    return out


def _validate_unet(config: Config) -> None:
    d, m = config.data, config.model
    if not m.channels or any(c <= 0 for c in m.channels):
        raise ConfigError(f"config key 'model.channels': {list(m.channels)} must be positive widths")
    factor = 2 ** len(m.channels)
    for key, value in (("data.height", d.height), ("data.width", d.width)):
        if value % factor:
            raise ConfigError(f"config key {key!r}: {value} is not divisible by 2^{len(m.channels)} = {factor} "
                              f"(model.channels has {len(m.channels)} levels, each halving the grid)")
    for c in m.channels:
        if c % m.norm_groups:
            raise ConfigError(f"config key 'model.norm_groups': {m.norm_groups} does not divide "
                              f"the width {c} in model.channels")
    if m.num_res_blocks < 1:
        raise ConfigError("config key 'model.num_res_blocks': must be at least 1")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"config key 'model.dropout': {m.dropout} is not in [0, 1)")
    if m.attention_heads < 1:
        raise ConfigError("config key 'model.attention_heads': must be at least 1")
    for key in ("time_embed_mult", "film_channels"):
        if getattr(m, key) < 1:
            raise ConfigError(f"config key 'model.{key}': must be at least 1")
    if m.attention_window < 1 or m.attention_window % 2 == 0:
        raise ConfigError(f"config key 'model.attention_window': {m.attention_window} must be a positive odd number")
    levels = attention_level_indices(config)
    if m.attention_bottleneck is not None and len(m.channels) not in levels:
        raise ConfigError("config key 'model.attention_bottleneck': set, but model.attention_levels "
                          "has no bottleneck entry")
    widths = list(m.channels) + [m.channels[-1]]
    for level in levels:
        if widths[level] % m.attention_heads:
            raise ConfigError(f"config key 'model.attention_heads': {m.attention_heads} does not divide "
                              f"the width {widths[level]} at attention level {level}")


def _validate_transformer(config: Config) -> None:
    """Checks of the patch-token backbones (uvit, dit); the UNet-only keys are not used by them."""
    d, m = config.data, config.model
    if m.conditioning == "film":
        raise ConfigError(f"config key 'model.conditioning': 'film' is UNet-only; arch {m.arch!r} "
                          f"takes 'none' or 'concat'")
    if m.attention != "mhsa" or m.attention_bottleneck not in (None, "mhsa"):
        raise ConfigError(f"config key 'model.attention': arch {m.arch!r} uses full 'mhsa' over its tokens")
    if m.patch_size < 1:
        raise ConfigError("config key 'model.patch_size': must be at least 1")
    for key, value in (("data.height", d.height), ("data.width", d.width)):
        if value % m.patch_size:
            raise ConfigError(f"config key {key!r}: {value} is not divisible by model.patch_size = {m.patch_size}")
    if m.depth < 1 or (m.arch == "uvit" and m.depth % 2 == 0):
        raise ConfigError(f"config key 'model.depth': {m.depth} must be at least 1 (and odd for uvit: "
                          f"depth // 2 blocks in, one in the middle, depth // 2 out)")
    if m.attention_heads < 1 or m.mlp_ratio <= 0:
        raise ConfigError("config key 'model.attention_heads'/'model.mlp_ratio': must be positive")
    if m.hidden_size < 4 or m.hidden_size % 4 or m.hidden_size % m.attention_heads:
        raise ConfigError(f"config key 'model.hidden_size': {m.hidden_size} must be a positive multiple of 4 "
                          f"(2-D sin-cos embedding) and of model.attention_heads = {m.attention_heads}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"config key 'model.dropout': {m.dropout} is not in [0, 1)")


def attention_kinds(config: Config) -> dict[int, str]:
    """{level index: attention kind} for every UNet level with attention: `model.attention`,
    except `model.attention_bottleneck` (when set) at the bottleneck, level len(channels)."""
    m = config.model
    bottleneck = len(m.channels)
    return {level: (m.attention_bottleneck or m.attention) if level == bottleneck else m.attention
            for level in sorted(attention_level_indices(config))}


def validate(config: Config) -> None:
    """Raise ConfigError for values that are impossible together."""
    d, m, t, k = config.data, config.model, config.train, config.masks
    if not d.variables:
        raise ConfigError("config key 'data.variables': at least one variable is needed")
    for key, value in (("data.height", d.height), ("data.width", d.width)):
        if value < 4:
            raise ConfigError(f"config key {key!r}: {value} is too small (at least 4)")
    if not 0.0 < d.test_fraction < 1.0:
        raise ConfigError(f"config key 'data.test_fraction': {d.test_fraction} is not in (0, 1)")
    if m.arch == "unet":
        _validate_unet(config)
    else:
        _validate_transformer(config)
    if config.diffusion.timesteps < 2:
        raise ConfigError("config key 'diffusion.timesteps': must be at least 2")
    for key in ("epochs", "batch_size", "ema_warmup_steps"):
        if getattr(t, key) < (0 if key == "ema_warmup_steps" else 1):
            raise ConfigError(f"config key 'train.{key}': {getattr(t, key)} is too small")
    if t.lr <= 0 or t.min_lr < 0 or t.min_lr > t.lr:
        raise ConfigError(f"config key 'train.lr'/'train.min_lr': need 0 <= min_lr <= lr and lr > 0 "
                          f"(got lr={t.lr}, min_lr={t.min_lr})")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"config key 'train.ema_decay': {t.ema_decay} is not in [0, 1)")
    if t.warmup_epochs < 0:
        raise ConfigError("config key 'train.warmup_epochs': must be non-negative")
    lo, hi = k.coverage
    if not (0.0 <= lo <= hi < 1.0):
        raise ConfigError(f"config key 'masks.coverage': {list(k.coverage)} must satisfy 0 <= low <= high < 1")


# ----------------------------------------------------------------------------------------------
# presets, YAML, overrides


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("fieldpaint.presets").iterdir()
                  if p.name.endswith(".yaml"))


def _preset_dict(name: str) -> dict:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    text = resources.files("fieldpaint.presets").joinpath(f"{name}.yaml").read_text()
    values = yaml.safe_load(text) or {}
    values.setdefault("name", name)
    return values


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads '1e-3' as a string; users mean a number.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    out = dict(values)
    for text in overrides:
        path, value = parse_override(text)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        out = _deep_merge(out, nested)
    return out


def load_config(name_or_path: str | None = None, overrides: list[str] = ()) -> Config:
    """A preset name or a YAML file, plus `key=value` overrides, resolved and validated."""
    if name_or_path is None:
        values: dict = {}
    elif name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).is_file():
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}".splitlines()[0]) from None
    else:
        values = _preset_dict(name_or_path)
    return from_dict(apply_overrides(values, list(overrides)))


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def replace(config: Config, **sections: Any) -> Config:
    """Copy with some sections' fields changed: replace(cfg, model={'dropout': 0.0})."""
    values = _deep_merge(to_dict(config), sections)
    return from_dict(values)

"""Model-structure rules: which architectures and attention kinds exist, how `model.attention_levels`
maps to UNet levels, and which combinations of grid and widths a backbone can be built for.

Pure functions of a Config, no torch: the config schema checks a Config with `validate_model`
when it is built, and `models.registry` reads the same rules to build the network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fieldpaint.errors import ConfigError

if TYPE_CHECKING:  # the schema imports this module, so only the annotations refer back to it
    from fieldpaint.config import Config

ARCHITECTURES = ("unet", "uvit", "dit")  # values of model.arch; the schema's Literal is built from this
TRANSFORMER_ARCHITECTURES = ("uvit", "dit")  # patch-token backbones
ATTENTION_KINDS = ("mhsa", "linear", "neighborhood", "channel")  # values of model.attention (models.attention)
WRAPS = ("none", "x", "y", "xy")  # values of model.wrap: axes along which the UNet's 3x3 convolutions pad circularly


def parse_resolution(text: str, key: str) -> tuple[int, int]:
    """'16x32' -> (16, 32); anything else raises ConfigError naming `key`."""
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


def attention_kinds(config: Config) -> dict[int, str]:
    """{level index: attention kind} for every UNet level with attention: `model.attention`,
    except `model.attention_bottleneck` (when set) at the bottleneck, level len(channels)."""
    m = config.model
    bottleneck = len(m.channels)
    return {level: (m.attention_bottleneck or m.attention) if level == bottleneck else m.attention
            for level in sorted(attention_level_indices(config))}


def validate_model(config: Config) -> None:
    """Raise ConfigError when `config.model` cannot be built for `config.data`'s grid.

    Single values (widths >= 1, dropout in [0, 1), ...) are checked by the schema itself; these
    are the rules between values.
    """
    if config.model.arch in TRANSFORMER_ARCHITECTURES:
        _validate_transformer(config)
    else:
        _validate_unet(config)


def _validate_unet(config: Config) -> None:
    d, m = config.data, config.model
    if not m.channels:
        raise ConfigError("config key 'model.channels': at least one level is needed")
    factor = 2 ** len(m.channels)
    for key, value in (("data.height", d.height), ("data.width", d.width)):
        if value % factor:
            raise ConfigError(f"config key {key!r}: {value} is not divisible by 2^{len(m.channels)} = {factor} "
                              f"(model.channels has {len(m.channels)} levels, each halving the grid)")
    for c in m.channels:
        if c % m.norm_groups:
            raise ConfigError(f"config key 'model.norm_groups': {m.norm_groups} does not divide "
                              f"the width {c} in model.channels")
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
    if m.wrap != "none":
        raise ConfigError(f"config key 'model.wrap': {m.wrap!r} is UNet-only (its convolutions); arch {m.arch!r} "
                          f"takes 'none'")
    if m.conditioning == "film":
        raise ConfigError(f"config key 'model.conditioning': 'film' is UNet-only; arch {m.arch!r} "
                          f"takes 'none' or 'concat'")
    if m.attention != "mhsa" or m.attention_bottleneck not in (None, "mhsa"):
        raise ConfigError(f"config key 'model.attention': arch {m.arch!r} uses full 'mhsa' over its tokens")
    for key, value in (("data.height", d.height), ("data.width", d.width)):
        if value % m.patch_size:
            raise ConfigError(f"config key {key!r}: {value} is not divisible by model.patch_size = {m.patch_size}")
    if m.arch == "uvit" and m.depth % 2 == 0:
        raise ConfigError(f"config key 'model.depth': {m.depth} must be odd for uvit (depth // 2 blocks in, "
                          f"one in the middle, depth // 2 out)")
    if m.hidden_size % 4 or m.hidden_size % m.attention_heads:
        raise ConfigError(f"config key 'model.hidden_size': {m.hidden_size} must be a multiple of 4 "
                          f"(2-D sin-cos embedding) and of model.attention_heads = {m.attention_heads}")

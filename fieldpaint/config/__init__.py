"""Typed, validated configuration: frozen dataclasses, named presets, YAML and `--set a.b=c`.

A config is data. Presets live as YAML files in `fieldpaint/presets/`; each one overrides the
defaults declared in `schema` (fields, defaults, bounds, one-line comments). `loading` turns
YAML, presets and overrides into a Config. Loading is strict: an unknown key, a wrong type or an
impossible value raises `ConfigError` naming the key (`model.chanels`), never a silent None.
"""

from fieldpaint.config.loading import (apply_overrides, dump_yaml, from_dict, load_config, parse_override,
                                       preset_names, replace, to_dict)
from fieldpaint.config.schema import (MAX_GRID, MIN_GRID, PERIODICITIES, AttentionKind, Config, DataConfig,
                                      DiffusionConfig, MaskFamily, MasksConfig, ModelConfig, Periodic,
                                      TrainConfig, validate)

__all__ = [
    "MAX_GRID", "MIN_GRID", "PERIODICITIES", "AttentionKind", "Config", "DataConfig", "DiffusionConfig",
    "MaskFamily", "MasksConfig", "ModelConfig", "Periodic", "TrainConfig", "apply_overrides", "dump_yaml",
    "from_dict", "load_config", "parse_override", "preset_names", "replace", "to_dict",
    "validate",
]

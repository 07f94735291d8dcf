"""Loading configs: strict typed coercion of plain dicts, named presets, YAML files and
`--set a.b=c` overrides. The schema (fields, defaults, bounds) is in `fieldpaint.config.schema`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from fieldpaint.config.schema import Config
from fieldpaint.errors import ConfigError

# Keys older versions wrote into every resolved config.yaml (run folders, checkpoints), with the
# value they always held: dropped on load so old runs still resume; any other value is an error.
RETIRED_KEYS: dict[str, Any] = {"train.num_workers": 0}  # key -> the value old versions always wrote

# ----------------------------------------------------------------------------------------------
# dict <-> dataclass, strictly typed


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert lists to tuples; raise naming `key`.

    Only types are checked here; each section checks its values' bounds when it is built.
    """
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        given = [arg for arg in args if arg is not type(None)]
        if len(given) == 1:  # an optional value: its own type's error (e.g. "expected 4 values") says more
            return _coerce(value, given[0], key)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
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
        try:
            return float(value)
        except OverflowError:  # an integer with hundreds of digits
            raise ConfigError(f"config key {key!r}: {value} is too large") from None
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
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in the schema


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
        if full in RETIRED_KEYS and key not in names:
            if value == RETIRED_KEYS[full] and not isinstance(value, bool):
                continue
            raise ConfigError(f"config key {full!r} was removed (it had no effect); delete it")
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; allowed here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)  # the section checks its bounds and rules here


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
    """Build and validate a Config from a (possibly partial) nested dict; the data section's
    unset variables and grid are resolved from its file first (`resolve_data`)."""
    return _build(Config, resolve_data(values))


def resolve_data(values: dict) -> dict:
    """`values` with `data.variables`, `data.height` and `data.width`, where unset and a data file is
    named, taken from the file: its gridded variables, and its grid padded to the next multiple
    the model divides (fieldpaint.data.grid.grid_multiple: 2^levels for the UNet, the patch size
    for uvit/dit). The resolved config is what every run records: the model's (padded) grid."""
    from fieldpaint.config.schema import DataConfig, ModelConfig
    from fieldpaint.data.grid import grid_multiple, padded_shape

    if not isinstance(values, dict) or not isinstance(values.get("data"), dict):
        return values
    given = values["data"]
    if given.get("path") is None or (given.get("variables") and given.get("height") is not None
                                     and given.get("width") is not None):
        return values
    data = _build(DataConfig, given, "data")  # reads the file's variables and (unpadded) grid
    model = _build(ModelConfig, values.get("model"), "model")
    height, width = padded_shape(data.height, data.width, grid_multiple(model))
    resolved = {**given, "variables": list(data.variables),
                "height": given["height"] if given.get("height") is not None else height,
                "width": given["width"] if given.get("width") is not None else width}
    return {**values, "data": resolved}


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


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
    return key.strip().split("."), _numbers(value)


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads '1e-3', 'inf' and 'nan' as strings; users mean numbers (the schema then
    rejects inf and nan, naming the key). Applied inside lists too: `train.betas=[nan,0.9]`."""
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


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
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}".splitlines()[0]) from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, "
                              f"got {type(values).__name__}")
    else:
        values = _preset_dict(name_or_path)
    return from_dict(apply_overrides(values, list(overrides)))


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def replace(config: Config, **sections: Any) -> Config:
    """Copy with some sections' fields changed: replace(cfg, model={'dropout': 0.0})."""
    values = _deep_merge(to_dict(config), sections)
    return from_dict(values)

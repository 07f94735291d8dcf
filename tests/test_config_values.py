"""Every number in the config is checked where it is declared: a bad value is a one-line
ConfigError naming the key, before any model, optimizer or dataset is built.

The first block of cases are failures measured before these checks existed: `train.lr=inf` trained
to NaN weights, `weight_decay=-1` trained, and lr=nan, betas=[2,3], warmup_epochs=nan, seed=1e23,
timesteps=1e9 and norm_groups=0 ended in tracebacks.
"""

from __future__ import annotations

import math
import re

import pytest
import yaml

from fieldpaint.config import MIN_GRID, Config, TrainConfig, from_dict, load_config, to_dict
from fieldpaint.errors import ConfigError

PRESET = "standard_attn_slim"

BAD = [
    # measured failures
    ("train.lr=inf", "train.lr"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.lr=nan", "train.lr"),
    ("train.betas=[2,3]", "train.betas"),
    ("train.warmup_epochs=nan", "train.warmup_epochs"),
    ("train.seed=1e23", "train.seed"),
    ("diffusion.timesteps=1000000000", "diffusion.timesteps"),
    ("model.norm_groups=0", "model.norm_groups"),
    # learning rates
    ("train.lr=0", "train.lr"),
    ("train.lr=-1e-3", "train.lr"),
    ("train.lr=.inf", "train.lr"),
    ("train.min_lr=-1e-6", "train.min_lr"),
    ("train.min_lr=nan", "train.min_lr"),
    ("train.min_lr=0.01", "train.min_lr"),  # above the preset's lr 1e-3
    ("train.warmup_epochs=-1", "train.warmup_epochs"),
    ("train.warmup_epochs=inf", "train.warmup_epochs"),
    # optimizer
    ("train.betas=[0.9,1.0]", "train.betas"),
    ("train.betas=[-0.1,0.999]", "train.betas"),
    ("train.betas=[nan,0.999]", "train.betas"),
    ("train.weight_decay=nan", "train.weight_decay"),
    ("train.weight_decay=inf", "train.weight_decay"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.grad_clip=inf", "train.grad_clip"),
    ("train.grad_clip=nan", "train.grad_clip"),
    # EMA
    ("train.ema_decay=1.0", "train.ema_decay"),
    ("train.ema_decay=-0.5", "train.ema_decay"),
    ("train.ema_decay=nan", "train.ema_decay"),
    ("train.ema_warmup_steps=-1", "train.ema_warmup_steps"),
    # the terminal share of the timesteps: [0, 1) (1 would never train any other noise level)
    ("diffusion.terminal_fraction=1.0", "diffusion.terminal_fraction"),
    ("diffusion.terminal_fraction=-0.1", "diffusion.terminal_fraction"),
    ("diffusion.terminal_fraction=nan", "diffusion.terminal_fraction"),
    # counts and their upper bounds
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=10000000", "train.epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=100000", "train.batch_size"),
    ("train.eval_train_samples=-1", "train.eval_train_samples"),
    ("train.overfit_patience=0", "train.overfit_patience"),
    ("diffusion.timesteps=1", "diffusion.timesteps"),
    ("diffusion.timesteps=100001", "diffusion.timesteps"),
    ("diffusion.timesteps=inf", "diffusion.timesteps"),
    ("model.channels=[32,0,128,128]", "model.channels"),
    ("model.channels=[32,-64,128,128]", "model.channels"),
    ("model.num_res_blocks=0", "model.num_res_blocks"),
    ("model.attention_heads=0", "model.attention_heads"),
    ("model.norm_groups=-4", "model.norm_groups"),
    ("model.time_embed_mult=0", "model.time_embed_mult"),
    ("model.attention_window=0", "model.attention_window"),
    ("model.attention_window=4", "model.attention_window"),
    ("model.mlp_ratio=nan", "model.mlp_ratio"),
    ("model.mlp_ratio=0", "model.mlp_ratio"),
    # dropout
    ("model.dropout=1.0", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("model.dropout=nan", "model.dropout"),
    # seed: an integer in [0, 2**63)
    ("train.seed=-1", "train.seed"),
    ("train.seed=9223372036854775808", "train.seed"),  # 2**63
    ("train.seed=1.5", "train.seed"),
    ("train.seed=nan", "train.seed"),
    ("train.seed=true", "train.seed"),
    # masks
    ("masks.coverage=[0.5,1.0]", "masks.coverage"),
    ("masks.coverage=[-0.1,0.9]", "masks.coverage"),
    ("masks.coverage=[0.9,0.5]", "masks.coverage"),
    ("masks.coverage=[nan,0.9]", "masks.coverage"),
    ("masks.coverage=[0.5]", "masks.coverage"),
    # data
    ("data.height=4", "data.height"),  # below fieldpaint.data.fields.MIN_GRID = 8
    ("data.width=100000", "data.width"),
    ("data.test_fraction=0", "data.test_fraction"),
    ("data.test_fraction=1", "data.test_fraction"),
    ("data.test_fraction=nan", "data.test_fraction"),
    ("data.train_samples=0", "data.train_samples"),
    ("data.periodic=z", "data.periodic"),
]


@pytest.mark.parametrize("override, key", BAD, ids=[o for o, _ in BAD])
def test_bad_value_is_a_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(PRESET, [override])
    message = str(err.value)  # a tuple's entry is named as 'train.betas[0]'
    assert re.search(rf"'{re.escape(key)}(\[\d+\])?'", message) and "\n" not in message, message


@pytest.mark.parametrize("override", [
    "train.lr=1.0", "train.min_lr=1e-3", "train.warmup_epochs=0", "train.betas=[0.0,0.0]",
    "train.weight_decay=0", "train.grad_clip=0", "train.ema_decay=0", "train.ema_warmup_steps=0",
    "train.seed=9223372036854775807", "diffusion.timesteps=2", "diffusion.timesteps=100000",
    "masks.coverage=[0.0,0.0]", "masks.coverage=[0.7,0.7]", "model.dropout=0", "data.periodic=xy",
    "train.eval_train_samples=0", "train.batch_size=65536", "diffusion.terminal_fraction=0",
    "diffusion.terminal_fraction=0.99",
])
def test_values_on_the_bounds_are_accepted(override):
    load_config(PRESET, [override])


def test_a_huge_integer_in_a_yaml_file_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  seed: 100000000000000000000000\n")
    with pytest.raises(ConfigError, match="'train.seed'"):
        load_config(str(path))
    path.write_text("train:\n  lr: 1" + "0" * 400 + "\n")  # too big for a float
    with pytest.raises(ConfigError, match="'train.lr'"):
        load_config(str(path))


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match="'train.lr'"):
        TrainConfig(lr=math.inf)
    with pytest.raises(ConfigError, match="'train.min_lr'"):
        TrainConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ConfigError, match="'model.norm_groups'"):
        from_dict({"model": {"norm_groups": 0}})


def test_config_grid_minimum_is_the_data_minimum():
    from fieldpaint.data import fields

    assert MIN_GRID == fields.MIN_GRID
    with pytest.raises(ConfigError, match="'data.width'"):
        from_dict({"data": {"height": 8, "width": MIN_GRID - 2}, "model": {"channels": [8], "norm_groups": 4}})
    assert from_dict({"data": {"height": MIN_GRID, "width": MIN_GRID},
                      "model": {"channels": [8], "norm_groups": 4}}).data.height == MIN_GRID


def test_every_default_passes_its_own_bounds_and_round_trips():
    config = Config()
    assert from_dict(yaml.safe_load(yaml.safe_dump(to_dict(config)))) == config

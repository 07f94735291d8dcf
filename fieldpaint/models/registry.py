"""Config -> model, and parameter counts for `fieldpaint configs`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fieldpaint.errors import ConfigError
from fieldpaint.models.structure import TRANSFORMER_ARCHITECTURES, attention_kinds, attention_level_indices
from fieldpaint.models.transformers import DiT, UViT
from fieldpaint.models.unet import UNet

if TYPE_CHECKING:
    from fieldpaint.config import Config

TRANSFORMERS: dict[str, type[nn.Module]] = {"dit": DiT, "uvit": UViT}  # model.arch -> class
assert set(TRANSFORMERS) == set(TRANSFORMER_ARCHITECTURES), "models.structure lists the same backbones"
TRAIN_SAMPLES = 9180  # training-set size of the notes, for params per sample ("Params/sample")


def build_model(config: Config) -> nn.Module:
    """The backbone `config.model` describes, for len(config.data.variables) channels.

    `config` was checked when it was built (including `models.structure.validate_model`)."""
    m = config.model
    if m.arch in TRANSFORMERS:
        return TRANSFORMERS[m.arch](
            in_channels=len(config.data.variables),
            height=config.data.height,
            width=config.data.width,
            patch_size=m.patch_size,
            hidden_size=m.hidden_size,
            depth=m.depth,
            heads=m.attention_heads,
            mlp_ratio=m.mlp_ratio,
            dropout=m.dropout,
            conditioning=m.conditioning,
            pos_embed=m.pos_embed,
        )
    if m.arch != "unet":
        raise ConfigError(f"config key 'model.arch': {m.arch!r} has no builder")
    return UNet(
        in_channels=len(config.data.variables),
        channels=m.channels,
        num_res_blocks=m.num_res_blocks,
        attention_levels=attention_level_indices(config),
        attention=attention_kinds(config),
        attention_heads=m.attention_heads,
        attention_window=m.attention_window,
        dropout=m.dropout,
        norm_groups=m.norm_groups,
        resample=m.resample,
        conditioning=m.conditioning,
        time_embed_mult=m.time_embed_mult,
        film_channels=m.film_channels,
        wrap=m.wrap,
    )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def describe_parameters(config: Config, n_samples: int = TRAIN_SAMPLES) -> dict:
    """{'total', 'trainable', 'per_sample'}: the counts of the model `config` builds, and total
    parameters per training sample (the notes' overfitting measure, 2,523 vs 666)."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(config)
    total, trainable = count_parameters(model)
    return {"total": total, "trainable": trainable, "per_sample": total / n_samples}

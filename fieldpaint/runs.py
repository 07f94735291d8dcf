"""A trained run, loaded once: its config, its normalisation statistics and its EMA weights.

Everything that asks "which model, which statistics, which data" about a run folder or a
checkpoint file (inpaint, evaluate, the demo, the notebook API) gets one `TrainedRun` from
`load_run` and reads it; nothing else reads raw checkpoint dictionaries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from fieldpaint.checkpoint import check_compatible, load_checkpoint, resolve_checkpoint
from fieldpaint.config import Config, from_dict
from fieldpaint.data.fields import FieldStats
from fieldpaint.errors import CheckpointError


@dataclass
class TrainedRun:
    path: Path  # the run folder or checkpoint file the user named
    checkpoint: Path  # the checkpoint file actually read
    config: Config
    stats: FieldStats
    model: nn.Module  # EMA weights (the raw weights when the checkpoint has no EMA), eval mode
    epoch: int

    @property
    def conditional(self) -> bool:
        return self.config.model.conditioning != "none"

    @property
    def label(self) -> str:
        """A short name for tables: the run folder's name."""
        return (self.path if self.path.is_dir() else self.path.parent).name or str(self.path)


def load_run(path_or_run_dir: str | os.PathLike) -> TrainedRun:
    """Read a run's last checkpoint (or the named checkpoint file) once and build its model."""
    from fieldpaint.models.registry import build_model

    path = Path(path_or_run_dir)
    checkpoint = load_checkpoint(resolve_checkpoint(path))
    if checkpoint.stats is None:
        raise CheckpointError(f"checkpoint {checkpoint.path} has no normalisation statistics")
    config = from_dict(checkpoint.config)
    model = build_model(config)
    check_compatible(checkpoint, model)
    model.load_state_dict(checkpoint.ema_state if checkpoint.ema_state is not None else checkpoint.model_state)
    return TrainedRun(path, checkpoint.path, config, FieldStats.from_dict(checkpoint.stats), model.eval(),
                      checkpoint.epoch)

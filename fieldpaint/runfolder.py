"""The run folder: what `fieldpaint train` may do with it, and how it is opened, never left stuck.

A folder is created only once everything about the run has been validated (fieldpaint.train
checks data, model, checkpoint fit and optimizer before calling `open_run_folder`). A folder
holding only a config (a run killed before its first checkpoint) can be resumed or restarted;
resume reads the config its last checkpoint was trained with and never rewrites config.yaml
before a new checkpoint exists; stale temporaries of killed writers are removed on the next
start; `best` is made consistent with `last`.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from fieldpaint.atomic import remove_stale_temporaries, write_bytes_atomic, write_text_atomic
from fieldpaint.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from fieldpaint.config import Config, apply_overrides, dump_yaml, from_dict, load_config
from fieldpaint.errors import CheckpointError, FieldpaintError


@dataclass(frozen=True)
class RunPlan:
    """What `fieldpaint train` is about to do: a resolved config, a run folder, and how to start."""

    config: Config
    run_dir: Path
    resume: bool  # continue run_dir (from its last checkpoint, or from scratch if it holds only a config)
    init_from: Path | None  # a new run starting from these weights


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.safetensors"


def holds_checkpoint(run_dir: str | Path) -> bool:
    folder = Path(run_dir) / "checkpoints"
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """A new run may not start in a folder that holds a checkpoint (a folder with only a config,
    left by a run killed before its first checkpoint, may be restarted); a resumed one needs a run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FieldpaintError(f"{run_dir} is a file, not a run folder")
    if not resume and holds_checkpoint(run_dir):
        raise FieldpaintError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                              "or choose another --run-dir")
    if resume and not last_checkpoint(run_dir).is_file() and not (run_dir / "config.yaml").is_file():
        raise FieldpaintError(f"{run_dir} is not a run folder (no config.yaml, no checkpoints/last.safetensors); "
                              "nothing to resume")


def recorded_init_from(run_dir: Path) -> Path | None:
    try:
        value = json.loads((run_dir / "run.json").read_text()).get("init_from")
    except (OSError, ValueError):
        return None
    return Path(value) if value else None


def prepare_run(*, config: str | None = None, run_dir: str | Path | None = None, resume: str | Path | None = None,
                init_from: str | Path | None = None, overrides: Sequence[str] = ()) -> RunPlan:
    """Decide what `fieldpaint train` does, reading but never writing the run folder.

    New run (config and run_dir): refused if run_dir holds a checkpoint; a folder holding only a
    config (killed before its first checkpoint) is restarted. Resume (resume=DIR): the config the
    last checkpoint was trained with (or DIR/config.yaml if there is no checkpoint yet: the run
    then starts from scratch, from the weights it was initialised from if any), plus `overrides`.
    """
    if resume is not None and init_from is not None:
        raise FieldpaintError("--resume continues a run and --init-from starts a new one: pass only one")
    if resume is None:
        if not config or run_dir is None:
            raise FieldpaintError("a new run needs --config NAME and --run-dir DIR (or --resume DIR)")
        run_dir = Path(run_dir)
        check_run_folder(run_dir, resume=False)
        if init_from is not None:
            resolve_checkpoint(init_from)  # exists (train checks that it fits, before writing anything)
        return RunPlan(load_config(config, list(overrides)), run_dir, False, None if init_from is None else Path(init_from))
    if run_dir is not None and Path(run_dir).resolve() != Path(resume).resolve():
        raise FieldpaintError(f"--resume {resume} continues that folder; --run-dir {run_dir} names another")
    run_dir = Path(resume)
    check_run_folder(run_dir, resume=True)
    if last_checkpoint(run_dir).is_file():
        saved = load_checkpoint(last_checkpoint(run_dir)).config
        resolved = from_dict(apply_overrides(saved, list(overrides)))
        on_disk = run_dir / "config.yaml"
        if on_disk.is_file() and not overrides and on_disk.read_text() != dump_yaml(from_dict(saved)):
            warnings.warn(f"{on_disk} differs from the config checkpoints/last.safetensors was trained with; "
                          "resuming with the checkpoint's (change settings with --set)", stacklevel=2)
    else:
        resolved = load_config(str(run_dir / "config.yaml"), list(overrides))
    return RunPlan(resolved, run_dir, True, None)


def write_run_header(run_dir: Path, config: Config, info: dict) -> None:
    """config.yaml and run.json, each written atomically."""
    write_text_atomic(run_dir / "config.yaml", dump_yaml(config), overwrite=True)
    write_text_atomic(run_dir / "run.json", json.dumps(info, indent=2) + "\n", overwrite=True)


def repair_best(run_dir: Path, last: Checkpoint) -> bool:
    """If `last` names its own epoch as the best, make best.safetensors a copy of it, so `best` is
    what `last` and the metrics name: after a kill between the two writes (best first: `best` is
    then the redone epoch's; an older fieldpaint wrote last first), or a damaged `best`. True if
    it was repaired."""
    if int((last.extra or {}).get("best", (math.inf, -1))[1]) != last.epoch:
        return False
    path = run_dir / "checkpoints" / "best.safetensors"
    with contextlib.suppress(CheckpointError):
        if load_checkpoint(path).epoch == last.epoch:
            return False
    write_bytes_atomic(path, last.path.read_bytes(), overwrite=True)
    return True


def open_run_folder(run_dir: Path, config: Config, info: dict, ckpt: Checkpoint | None) -> bool:
    """Create or tidy the folder; True while config.yaml/run.json still wait for a new checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for folder in (run_dir, run_dir / "checkpoints"):
        remove_stale_temporaries(folder)  # left by writers that were killed
    if ckpt is None:  # a new or restarted run: its config first, so a kill now leaves a resumable folder
        write_run_header(run_dir, config, info)
        return False
    if repair_best(run_dir, ckpt):  # e.g. a best written just before a kill cut the epoch's last
        tqdm.write(f"{run_dir}: checkpoints/best.safetensors reset to last.safetensors (epoch {ckpt.epoch}), "
                   "the best epoch it records")
    return True

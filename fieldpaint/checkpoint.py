"""Checkpoints: one safetensors file, written atomically, read without unpickling anything.

Layout of `NAME.safetensors`:

    tensors   model.<key>            the unwrapped model's state dict
              ema.<key>              the EMA shadow (parameters and buffers), if any
              optim.state.<i>.<name> the optimizer's per-parameter tensors (exp_avg, step, ...)
              rng.torch, rng.cuda.0   torch CPU / current CUDA device generator states, uint8
    metadata  {"fieldpaint_checkpoint": "<one JSON document>",
               "fieldpaint_checkpoint_sha256": "<sha256 of that document>"}
              The document: format version, step, epoch, config, normalisation stats, metrics,
              optimizer param groups and non-tensor state, scheduler state (LambdaLR's, lambdas
              as null), optimizer signature, Python and numpy RNG states, extra, fieldpaint and
              torch versions, and `tensors_sha256`, a digest of every tensor (name, dtype, shape,
              bytes, in name order).

Loading verifies both digests and refuses non-finite weights, so a flipped bit, NaN bytes or an
edited metadata value is a CheckpointError naming the file, not a model that silently samples
NaN. (Format 1 files, written before the digests, load unverified.)

A single file makes the write atomic (fieldpaint.atomic: a hidden temporary in the same folder,
fsynced, then `os.replace`d over the old file, and the folder fsynced). A crash at any point
leaves the previous checkpoint whole; `fieldpaint.atomic.remove_stale_temporaries` clears the
temporary a killed writer left.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

import fieldpaint
from fieldpaint.atomic import write_bytes_atomic
from fieldpaint.errors import CheckpointError

FORMAT_VERSION = 2  # 2: sha256 digests of the tensors and of the metadata document
META_KEY = "fieldpaint_checkpoint"
DIGEST_KEY = "fieldpaint_checkpoint_sha256"
WEIGHT_PREFIXES = ("model.", "ema.")  # tensors that must be finite


@dataclass
class Checkpoint:
    path: Path
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None
    optimizer_state: dict | None  # exactly torch's Optimizer.state_dict() format
    scheduler_state: dict | None
    step: int
    epoch: int
    config: dict
    stats: dict | None
    metrics: dict | None
    rng: dict | None  # as returned by capture_rng_state()
    extra: dict | None
    optimizer_signature: dict | None = None  # optim.optimizer_signature(...) of the run that saved it
    versions: dict = field(default_factory=dict)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module under DistributedDataParallel / DataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _clean_key(key: str) -> str:
    # A compiled *submodule* still puts `_orig_mod.` inside its keys; no architecture name uses it.
    return key.replace("_orig_mod.", "")


# ----------------------------------------------------------------------------------------------
# RNG states


def capture_rng_state() -> dict[str, Any]:
    """Python `random`, numpy's global generator, torch CPU and, once CUDA is in use, the current
    CUDA device (not all devices: reading their states would open a context on every GPU from
    every DDP rank)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [torch.cuda.get_rng_state()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])


# ----------------------------------------------------------------------------------------------
# JSON that keeps tuples (torch's param groups hold `betas` as a tuple)


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# saving


def _cpu(t: torch.Tensor) -> torch.Tensor:
    # A private contiguous copy: safetensors refuses tensors that share storage (tied weights).
    return t.detach().to("cpu", copy=True).contiguous()


def _split_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.state.{index}.{name}"] = _cpu(value)
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    for name, t in tensors.items():
        if name.startswith(WEIGHT_PREFIXES) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"checkpoint {where} holds non-finite weights ({bad} of {t.numel()} "
                                  f"values of {name!r} are NaN or inf)")


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, ema: Any = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, step: int,
                    epoch: int, config: dict, stats: dict | None, metrics: dict | None = None,
                    extra: dict | None = None, optimizer_signature: dict | None = None) -> Path:
    """Write everything needed to resume or to sample, atomically, to `path`; returns the path.

    `ema` is anything with `state_dict() -> dict[str, Tensor]` (fieldpaint.ema.EMA). Call on one
    rank only under DDP: the RNG states saved are this process's.
    """
    path = Path(path)
    tensors = {f"model.{_clean_key(k)}": _cpu(v) for k, v in unwrap_model(model).state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{_clean_key(k)}": _cpu(v) for k, v in ema.state_dict().items()})
    optim_meta = None
    if optimizer is not None:
        optim_tensors, optim_meta = _split_optimizer(optimizer.state_dict())
        tensors.update(optim_tensors)
    rng = capture_rng_state()
    tensors["rng.torch"] = rng["torch"]
    for device, s in enumerate(rng.get("cuda", [])):
        tensors[f"rng.cuda.{device}"] = s
    _check_finite(tensors, f"to be written to {path}")  # a diverged run never replaces a good file
    # LambdaLR saves its lambdas as None (plain functions are not state), so this is plain JSON.
    scheduler_state = scheduler.state_dict() if scheduler is not None else None
    meta = {
        "format_version": FORMAT_VERSION,
        "versions": {"fieldpaint": fieldpaint.__version__, "torch": torch.__version__},
        "step": int(step), "epoch": int(epoch),
        "config": config, "stats": stats, "metrics": metrics, "extra": extra,
        "has_ema": ema is not None,
        "optimizer": optim_meta, "scheduler": scheduler_state, "optimizer_signature": optimizer_signature,
        "rng": {"python": rng["python"], "numpy": rng["numpy"], "cuda_devices": len(rng.get("cuda", []))},
        "tensors_sha256": tensors_digest(tensors),
    }
    document = json.dumps(_to_json(meta))
    header = {META_KEY: document, DIGEST_KEY: hashlib.sha256(document.encode()).hexdigest()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, safetensors_bytes(tensors, metadata=header), overwrite=True)
    return path


# ----------------------------------------------------------------------------------------------
# loading


def resolve_checkpoint(path_or_run_dir: str | os.PathLike, *, best: bool = False) -> Path:
    """A checkpoint file -> itself; a run folder (or its checkpoints/ folder) -> last or best."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        name = "best.safetensors" if best else "last.safetensors"
        for candidate in (path / "checkpoints" / name, path / name):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"no checkpoint at {path / 'checkpoints' / name}")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt): {err}") from None
    if META_KEY not in header:
        raise CheckpointError(f"{path} is a safetensors file but not a fieldpaint checkpoint")
    try:
        meta = _from_json(json.loads(header[META_KEY]))
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata: {err}") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version!r}; this fieldpaint "
                              f"({fieldpaint.__version__}) reads up to {FORMAT_VERSION}")
    if version >= 2:
        if hashlib.sha256(header[META_KEY].encode()).hexdigest() != header.get(DIGEST_KEY):
            raise CheckpointError(f"checkpoint {path} is corrupt: its metadata does not match its checksum")
        if tensors_digest(tensors) != meta.get("tensors_sha256"):
            raise CheckpointError(f"checkpoint {path} is corrupt: its tensor data does not match its checksum")
    _check_finite(tensors, str(path))
    return tensors, meta


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    for key, value in _prefixed(tensors, "optim.state.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": dict(sorted(state.items())), "param_groups": meta["param_groups"]}


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file (see `resolve_checkpoint` for run folders). Tensors land on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    tensors, meta = _read(path)
    try:
        rng = None
        if "rng.torch" in tensors:
            rng = {"python": meta["rng"]["python"], "numpy": meta["rng"]["numpy"], "torch": tensors["rng.torch"],
                   "cuda": [tensors[f"rng.cuda.{d}"] for d in range(meta["rng"]["cuda_devices"])]}
        return Checkpoint(
            path=path,
            model_state=_prefixed(tensors, "model."),
            ema_state=_prefixed(tensors, "ema.") if meta["has_ema"] else None,
            optimizer_state=_join_optimizer(tensors, meta["optimizer"]) if meta["optimizer"] else None,
            scheduler_state=meta["scheduler"],
            step=meta["step"], epoch=meta["epoch"], config=meta["config"], stats=meta["stats"],
            metrics=meta["metrics"], rng=rng, extra=meta["extra"],
            optimizer_signature=meta["optimizer_signature"], versions=meta.get("versions", {}))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupt (bad entry {err})") from None


def _fmt(shape: Any) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_compatible(checkpoint: Checkpoint, model: nn.Module) -> None:
    """Raise CheckpointError naming the first key that is missing, unexpected or differently shaped."""
    expected = {_clean_key(k): v for k, v in unwrap_model(model).state_dict().items()}
    states = [("weights", checkpoint.model_state)]
    if checkpoint.ema_state is not None:
        states.append(("EMA weights", checkpoint.ema_state))
    for what, saved in states:
        for key, value in expected.items():
            if key not in saved:
                raise CheckpointError(f"checkpoint {checkpoint.path} does not fit this model: its {what} "
                                      f"have no {key!r} (shape {_fmt(value.shape)}); was it trained with "
                                      f"another architecture?")
            if tuple(saved[key].shape) != tuple(value.shape):
                raise CheckpointError(f"checkpoint {checkpoint.path} does not fit this model: {key!r} has "
                                      f"shape {_fmt(saved[key].shape)} in the checkpoint but "
                                      f"{_fmt(value.shape)} in the model")
        unexpected = [k for k in saved if k not in expected]
        if unexpected:
            raise CheckpointError(f"checkpoint {checkpoint.path} does not fit this model: its {what} "
                                  f"hold {unexpected[0]!r}, which the model does not have")

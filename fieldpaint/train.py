"""The training loop: the notes' recipe (AdamW, cosine LR with warmup, EMA with warmup, full
evaluation with the EMA weights every epoch), safe checkpoints, exact resume, and DDP.

`train(config, run_dir)` is one function in commented phases; construction, the step
(`train_step`), the evaluation and checkpointing are called, not inlined. Randomness is derived
from (seed, step) and (seed, epoch), not from a running generator, so a resumed run draws the same
timesteps, noise, masks and batch order as an uninterrupted one, and the global batch is the
same whatever the number of DDP processes.

A run folder survives a kill at any point:

- everything that can fail (data, model, checkpoint fit, optimizer) is checked before the folder
  is created or touched;
- a new run writes `config.yaml` and `run.json` (atomically) before its first step, so a folder
  killed before its first checkpoint holds only a config: `--resume` starts it from scratch with
  that config, and a new run may restart in it (`prepare_run`);
- a resumed run rewrites `config.yaml` only after its first new checkpoint, and continues the
  config its last checkpoint was trained with (plus `--set` overrides); a new run re-planned after
  an epoch (`replan`) rewrites it before that epoch's checkpoint;
- each epoch writes, in this order, its metrics row, `best` (if it improved) and `last`. `last`
  is the commit point: a kill before it is redone exactly by `--resume` (which drops later
  metrics rows, a torn final line included); `best` is never older than what `last` names, and
  a resume repairs it from `last` should it be.
- a non-finite loss stops the run (TrainingDiverged) before anything of that epoch is written.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from fieldpaint import __version__
from fieldpaint.checkpoint import (Checkpoint, check_compatible, load_checkpoint, resolve_checkpoint,
                                   restore_rng_state, save_checkpoint, unwrap_model)
from fieldpaint.config import Config, to_dict
from fieldpaint.data.fields import FieldSplit, FieldStats, augmentation_frames, check_wrap_on_file
from fieldpaint.data.stream import chunked_order
from fieldpaint.data.stream import load_training_data as load_data
from fieldpaint.data.symmetry import Symmetry, in_random_frames
from fieldpaint.diffusion.conditioning import conditioning_input, draw_training_masks
from fieldpaint.diffusion.loss import diffusion_loss, draw_timesteps
from fieldpaint.diffusion.schedule import make_schedule
from fieldpaint.ema import EMA, ema_decay_at
from fieldpaint.errors import ConfigError, FieldpaintError
from fieldpaint.models.registry import build_model, count_parameters
from fieldpaint.optim import (build_optimizer, build_scheduler, optimizer_signature, resume_optimizer,
                              retarget_scheduler)
from fieldpaint.runfolder import (RunPlan, check_run_folder, last_checkpoint, open_run_folder,  # noqa: F401
                                  prepare_run, recorded_init_from, write_run_header)  # RunPlan, prepare_run: re-exported
from fieldpaint.runlog import MetricsLog
from fieldpaint.runtime import (Precision, Runtime, all_reduce_mean, resolve_precision, seed_everything, set_deterministic,
                                setup_runtime, teardown_runtime)

EVAL_BATCH = 64


class TrainingDiverged(FieldpaintError):
    """The training or test loss became NaN or inf; the last finite checkpoint is kept."""


# ----------------------------------------------------------------------------------------------
# batches, the step, evaluation


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random stream of one optimizer step (or eval chunk); depends only on (seed, step)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch + 1))


def make_batch(data: FieldSplit, index: torch.Tensor, config: Config, seed: int, step: int,
               runtime: Runtime, symmetries: tuple[Symmetry, ...] = ()) -> dict:
    """The global batch of one step, cut to this rank's share: x0, valid, t, noise, cond; each
    field in a random frame of `symmetries` when given (train.augment, `augmentation_frames`)."""
    g = step_generator(seed, step)
    x0, valid = data.batch(index, seed=seed, step=step)  # random crops when the file's grid is larger
    t = draw_timesteps(len(index), config.diffusion.timesteps, config.diffusion.terminal_fraction, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    if symmetries:  # drawn after t and noise, which stay those of an unaugmented run
        x0, valid = in_random_frames(x0, valid, symmetries, g)
    cond = None
    if config.model.conditioning != "none":
        mask = draw_training_masks(valid, config.masks, seed=seed * 1_000_003 + step)
        cond = conditioning_input(x0, mask)
    share = slice(runtime.rank * len(index) // runtime.world_size, (runtime.rank + 1) * len(index) // runtime.world_size)
    batch = {"x0": x0, "valid": valid, "t": t, "noise": noise, "cond": cond}
    return {k: None if v is None else v[share].to(runtime.device) for k, v in batch.items()}


def precision_of(config: Config, device: torch.device) -> Precision:
    """train.precision and train.channels_last resolved for `device` (`runtime.resolve_precision`)."""
    return resolve_precision(config.train.precision, config.train.channels_last, device)


def autocast(config: Config, device: torch.device):
    """bf16 autocast of the forward pass and loss when train.precision resolves to bf16."""
    dtype = precision_of(config, device).autocast_dtype
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def train_step(net: torch.nn.Module, batch: dict, *, optimizer: torch.optim.Optimizer, scheduler, ema: EMA | None,
               schedule, config: Config, step: int) -> torch.Tensor:
    """One optimizer step on `batch` (a `make_batch` dict): forward and loss under `autocast`,
    backward, gradient clipping at train.grad_clip, optimizer step, LR-scheduler step, and the EMA
    update of 0-based `step` (the first update copies the weights). `scheduler` and `ema` may be None.

    `net` runs the forward pass (the model, or its DDP / torch.compile wrapper); clipping and the
    EMA act on the bare model under it. Returns the loss detached, on the device: reading it
    (float) would wait for the step, so callers add it up there.
    """
    model = unwrap_model(net)
    with autocast(config, batch["x0"].device):
        loss = diffusion_loss(net, batch["x0"], batch["valid"], schedule, config.diffusion.prediction,
                              cond=batch["cond"], t=batch["t"], noise=batch["noise"],
                              weighting=config.diffusion.loss_weighting)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if ema is not None:
        ema.update(model, step)
    return loss.detach()


def _sum_dtype(device: torch.device) -> torch.dtype:
    # float64 sums of float32 losses equal the former Python-float sums; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, data: FieldSplit, config: Config, schedule, device: torch.device,
                  seed: int = 12345) -> float:
    """Denoising loss over a whole split with fixed timesteps, noise and masks, so epochs compare."""
    model.eval()
    total, count = torch.zeros((), dtype=_sum_dtype(device), device=device), 0
    for chunk, start in enumerate(range(0, len(data.x), EVAL_BATCH)):
        index = torch.arange(start, min(start + EVAL_BATCH, len(data.x)))
        batch = make_batch(data, index, config, seed, chunk, Runtime(device))
        with autocast(config, device):  # the training precision: in bf16 ~3x cheaper than fp32 on CPU
            loss = diffusion_loss(model, batch["x0"], batch["valid"], schedule, config.diffusion.prediction,
                                  cond=batch["cond"], t=batch["t"], noise=batch["noise"],
                                  weighting=config.diffusion.loss_weighting)
        total += loss.to(total.dtype) * len(index)
        count += len(index)
    return float(total) / max(count, 1)


# ----------------------------------------------------------------------------------------------
# construction


def load_training_data(config: Config, stats: FieldStats | None = None) -> tuple[FieldSplit, FieldSplit, FieldStats]:
    if config.data.path is None:
        raise ConfigError("config key 'data.path' is not set: name a NetCDF/Zarr file "
                          "(make one with `fieldpaint data generate kolmogorov`)")
    check_wrap_on_file(config.data, config.model.wrap)
    train_data, test_data, stats = load_data(config.data, stats)  # in memory, or streamed (data.streaming)
    if len(test_data) == 0:
        raise ConfigError(f"the dataset {config.data.path} has no test samples; set data.test_fraction")
    return train_data, test_data, stats


def build_training_model(config: Config, device: torch.device, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """`config`'s model (or `model`) on `device`, in channels_last when train.channels_last
    resolves to it (`precision_of`)."""
    model = (build_model(config) if model is None else model).to(device)
    return model.to(memory_format=torch.channels_last) if precision_of(config, device).channels_last else model


def build_optimization(model: torch.nn.Module, config: Config, steps_per_epoch: int, offset: int = 0):
    """(optimizer, LR scheduler, optimizer signature); the schedule runs from epoch `offset` to the end."""
    t = config.train
    try:
        optimizer = build_optimizer(model, t)
    except ValueError as err:  # torch's own checks of lr, betas, ...
        raise ConfigError(f"config section 'train': the optimizer cannot be built: {err}") from None
    epochs = max(1, t.epochs - offset)
    return (optimizer, build_scheduler(optimizer, t, steps_per_epoch, epochs=epochs),
            optimizer_signature(t, steps_per_epoch, epochs=epochs))


def _resumed_optimization(model, config: Config, steps_per_epoch: int, ckpt: Checkpoint | None, reset: bool):
    """(optimizer, scheduler, signature, schedule offset). Saved state loads only when nothing in
    the optimizer signature changed (`optim.resume_optimizer`, the one resume rule); otherwise, or
    with `reset`, the optimizer is fresh and the LR schedule restarts over the epochs that remain."""
    offset = int((ckpt.extra or {}).get("schedule_offset", 0)) if ckpt is not None else 0
    optimizer, scheduler, signature = build_optimization(model, config, steps_per_epoch, offset)
    if ckpt is None:
        return optimizer, scheduler, signature, offset
    changes = ["--reset-optimizer"] if reset else resume_optimizer(
        optimizer, scheduler, saved_signature=ckpt.optimizer_signature, signature=signature,
        optimizer_state=ckpt.optimizer_state, scheduler_state=ckpt.scheduler_state)
    if changes:
        optimizer, scheduler, signature = build_optimization(model, config, steps_per_epoch, ckpt.epoch)
        offset = ckpt.epoch
    return optimizer, scheduler, signature, offset


# ----------------------------------------------------------------------------------------------
# the run folder


def _say(runtime: Runtime, text: str) -> None:
    if runtime.is_main:
        tqdm.write(text)


def _check_finite(value: float, what: str, epoch: int, run_dir: Path) -> None:
    if not math.isfinite(value):
        kept = f"{last_checkpoint(run_dir)} is kept" if last_checkpoint(run_dir).is_file() else "no checkpoint was written"
        raise TrainingDiverged(f"training diverged: the {what} is {value} in epoch {epoch}; {kept} "
                               "(lower train.lr, or check the data for extreme values)")


# ----------------------------------------------------------------------------------------------
# the loop


def train(config: Config, run_dir: str | Path, *, resume: bool = False, reset_optimizer: bool = False,
          init_from: str | Path | None = None, progress: bool = True, stop_after_epoch: int | None = None,
          replan: Callable[[float], Config] | None = None) -> dict:
    """Train `config` into `run_dir`; returns the last epoch's metrics.

    resume: continue from run_dir's `last` checkpoint (exactly, when the optimizer and LR settings
    are unchanged; otherwise weights only, with a warning, as the notes' lesson demands); a folder
    with a config but no checkpoint starts from scratch. reset_optimizer: on resume, always start
    the optimizer and LR schedule fresh. init_from: start a new run from a checkpoint's weights
    (the notes' retrain mode). stop_after_epoch: end after this epoch as if killed (for tests).
    replan: for a budget in minutes (fieldpaint.demo). Called after every epoch of a new run with
    the epochs done and their wall seconds (steps and evaluations, summed); returns the config to
    finish with, which may differ only in the REPLANNABLE train keys. The LR schedule, the EMA,
    config.yaml and every checkpoint follow a change, so a resume is exact (a resumed run is not
    re-planned). Single-process runs only.
    """
    run_dir = Path(run_dir)
    t = config.train
    # -- 1. setup: process group, device, seeds; the run folder is only read -------------------
    runtime = setup_runtime(t.device)
    if t.batch_size % runtime.world_size:
        raise ConfigError(f"config key 'train.batch_size': {t.batch_size} is not divisible by "
                          f"{runtime.world_size} processes")
    check_run_folder(run_dir, resume)
    if replan is not None and runtime.distributed:
        raise ValueError("train(replan=...) is for single-process runs: every rank would time its own epoch")
    set_deterministic(t.deterministic)
    seed_everything(t.seed)
    ckpt = load_checkpoint(last_checkpoint(run_dir)) if resume and last_checkpoint(run_dir).is_file() else None
    if resume and ckpt is None and init_from is None:
        init_from = recorded_init_from(run_dir)  # a run killed before its first checkpoint
    source = ckpt if ckpt is not None else load_checkpoint(resolve_checkpoint(init_from)) if init_from else None

    # -- 2. data, model, EMA, optimizer, schedule: whatever can fail fails here, before any write
    stats = FieldStats.from_dict(ckpt.stats) if ckpt is not None and ckpt.stats else None
    train_data, test_data, stats = load_training_data(config, stats)
    augment = () if t.augment == "none" else augmentation_frames(config.data, stats)
    eval_train = train_data.first(t.eval_train_samples)  # a fixed train subset scored every epoch
    n_train = len(train_data.x)
    batch_size = min(t.batch_size, n_train - n_train % runtime.world_size)
    steps_per_epoch = max(1, n_train // batch_size)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps).to(runtime.device)
    model = build_training_model(config, runtime.device)
    if source is not None:
        check_compatible(source, model)
        model.load_state_dict(source.model_state)
    ema = EMA(model, t.ema_decay, t.ema_warmup_steps)
    if ckpt is not None and ckpt.ema_state:
        ema.load_state_dict(ckpt.ema_state)
    start_epoch, step, best = 0, 0, (math.inf, -1)
    if ckpt is not None:
        start_epoch, step = ckpt.epoch, ckpt.step
        best = tuple((ckpt.extra or {}).get("best", best))
    optimizer, scheduler, signature, offset = _resumed_optimization(model, config, steps_per_epoch, ckpt, reset_optimizer)
    if ckpt is not None and ckpt.rng is not None:
        restore_rng_state(ckpt.rng)
    net = torch.compile(model) if t.compile else model
    if runtime.distributed:
        net = DistributedDataParallel(net, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)

    # -- 3. the run folder: created, tidied, config written (new runs) or best repaired (resumed)
    total, trainable = count_parameters(model)
    precision = precision_of(config, runtime.device)
    info = {"fieldpaint": __version__, "torch": torch.__version__, "device": str(runtime.device),
            "precision": precision.name, "channels_last": precision.channels_last, "precision_reason": precision.reason,
            "world_size": runtime.world_size, "parameters": total, "trainable_parameters": trainable,
            "train_samples": n_train, "params_per_sample": trainable / max(n_train, 1), "augment_frames": len(augment),
            "init_from": None if init_from is None else str(init_from)}
    header_pending, log = False, None
    if runtime.is_main:
        header_pending = open_run_folder(run_dir, config, info, ckpt)
        log = MetricsLog(run_dir, resume_after_epoch=start_epoch if ckpt else None)
        _say(runtime, f"{config.name}: {trainable / 1e6:.2f}M trainable parameters, "
                      f"{info['params_per_sample']:.0f} per training sample; {n_train} train / "
                      f"{len(test_data.x)} test samples; {steps_per_epoch} steps per epoch on {runtime.device} "
                      f"in {precision.describe()}" + (f"; each field in a random one of {len(augment)} symmetric "
                                                        "frames" if augment else ""))

    # -- 4. the epochs ------------------------------------------------------------------------
    row: dict = {}
    try:
        epoch = start_epoch
        run_seconds = 0.0  # this process's epochs, for `replan`
        while epoch < t.epochs:  # t.epochs may change after any epoch, by `replan`
            net.train()
            started = time.perf_counter()
            running = torch.zeros((), dtype=_sum_dtype(runtime.device), device=runtime.device)
            order = chunked_order(n_train, train_data.block, max(1, config.data.cache_chunks // 2), t.seed, epoch) \
                if config.data.streaming else epoch_order(n_train, t.seed, epoch)
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
                       disable=not (progress and runtime.is_main))
            for i in bar:  # one optimizer step on the global batch (this rank's share of it)
                batch = make_batch(train_data, order[i * batch_size:(i + 1) * batch_size], config, t.seed, step,
                                   runtime, augment)
                running += train_step(net, batch, optimizer=optimizer, scheduler=scheduler, ema=ema,
                                      schedule=schedule, config=config, step=step).to(running.dtype)
                step += 1
            # the epoch's one host sync: the global batch's mean loss, averaged over the epoch
            epoch_loss = float(all_reduce_mean(running, runtime)) / steps_per_epoch
            seconds = time.perf_counter() - started
            _check_finite(epoch_loss, "training loss", epoch + 1, run_dir)

            # -- 5. evaluation with the EMA weights; metrics row, then best, then last (rank 0)
            if runtime.is_main:
                with ema.swapped_in(model):
                    test_loss = evaluate_loss(model, test_data, config, schedule, runtime.device)
                    train_loss = evaluate_loss(model, eval_train, config, schedule, runtime.device)
                _check_finite(test_loss, "test loss", epoch + 1, run_dir)
                improved = test_loss < best[0]
                if improved:
                    best = (test_loss, epoch + 1)
                row = {"epoch": epoch + 1, "step": step, "epoch_loss": epoch_loss, "train_loss": train_loss,
                       "test_loss": test_loss, "lr": optimizer.param_groups[0]["lr"],
                       "ema_decay": ema_decay_at(step - 1, t.ema_decay, t.ema_warmup_steps),
                       "best_test_loss": best[0], "best_epoch": best[1], "epochs_since_best": epoch + 1 - best[1],
                       "overfitting": epoch + 1 - best[1] >= t.overfit_patience, "seconds": seconds,
                       "samples_per_s": steps_per_epoch * batch_size / seconds}
                log.log(row)
                _say(runtime, f"epoch {epoch + 1:>3}  epoch_loss {epoch_loss:.4f}  train {train_loss:.4f}  "
                              f"test {test_loss:.4f}  lr {row['lr']:.2e}  ema {row['ema_decay']:.4f}  {seconds:.1f}s")
                run_seconds += time.perf_counter() - started
                new = config if replan is None or ckpt is not None else replanned(config, replan(epoch + 1, run_seconds))
                if to_dict(new) != to_dict(config):
                    config = new
                    t, signature = config.train, optimizer_signature(config.train, steps_per_epoch)
                    retarget_scheduler(scheduler, t, steps_per_epoch)
                    ema.decay, ema.warmup_steps = t.ema_decay, t.ema_warmup_steps
                    write_run_header(run_dir, config, info)  # before the checkpoint that commits it
                    _say(runtime, f"  re-planned from the pace of {epoch + 1} epoch(s): {t.epochs} epochs")
                if row["overfitting"]:
                    _say(runtime, f"  test loss has not improved for {row['epochs_since_best']} epochs "
                                  f"(best {best[0]:.4f} at epoch {best[1]}): the model may be overfitting")
                state = dict(model=model, ema=ema, optimizer=optimizer, scheduler=scheduler, step=step,
                             epoch=epoch + 1, config=to_dict(config), stats=stats.to_dict(), metrics=row,
                             optimizer_signature=signature, extra={"best": list(best), "schedule_offset": offset})
                if improved:
                    save_checkpoint(run_dir / "checkpoints" / "best.safetensors", **state)
                save_checkpoint(last_checkpoint(run_dir), **state)  # the commit point of the epoch
                if header_pending:  # a resumed run's config goes beside its first new checkpoint
                    write_run_header(run_dir, config, info)
                    header_pending = False
            if runtime.distributed:
                torch.distributed.barrier()
            epoch += 1
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
    finally:
        if log is not None:
            log.close()
        teardown_runtime(runtime)
    return row


REPLANNABLE = ("epochs", "warmup_epochs", "ema_decay", "ema_warmup_steps")  # train keys `replan` may change


def replanned(config: Config, new: Config) -> Config:
    """`new`, checked to differ from `config` only in REPLANNABLE train keys."""
    def fixed(c: Config) -> dict:
        values = to_dict(c)
        values["train"] = {k: v for k, v in values["train"].items() if k not in REPLANNABLE}
        return values

    if fixed(new) != fixed(config):
        raise ValueError(f"replan may change only train.{', train.'.join(REPLANNABLE)}")
    return new

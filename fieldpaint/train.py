"""The training loop: the notes' recipe (AdamW, cosine LR with warmup, EMA with warmup, full
evaluation with the EMA weights every epoch), safe checkpoints, exact resume, and DDP.

`train(config, run_dir)` is one function in commented phases; construction, the loss, the
evaluation and checkpointing are called, not inlined. Randomness is derived from
(seed, step) and (seed, epoch), not from a running generator, so a resumed run draws the same
timesteps, noise, masks and batch order as an uninterrupted one, and the global batch is the
same whatever the number of DDP processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from fieldpaint import __version__
from fieldpaint.checkpoint import (check_compatible, load_checkpoint, resolve_checkpoint,
                                   restore_rng_state, save_checkpoint)
from fieldpaint.config import Config, dump_yaml, to_dict
from fieldpaint.data.fields import FieldSplit, FieldStats, load_splits
from fieldpaint.diffusion.loss import diffusion_loss
from fieldpaint.diffusion.schedule import make_schedule
from fieldpaint.ema import EMA, ema_decay_at
from fieldpaint.errors import ConfigError
from fieldpaint.diffusion.conditioning import conditioning_input, draw_training_masks
from fieldpaint.models.registry import build_model, count_parameters
from fieldpaint.optim import build_optimizer, build_scheduler, optimizer_signature, signature_changes
from fieldpaint.runlog import MetricsLog
from fieldpaint.runtime import Runtime, all_reduce_mean, seed_everything, set_deterministic, setup_runtime, teardown_runtime

EVAL_BATCH = 64


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random stream of one optimizer step (or eval chunk); depends only on (seed, step)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch + 1))


def make_batch(data: FieldSplit, index: torch.Tensor, config: Config, seed: int, step: int,
               runtime: Runtime) -> dict:
    """The global batch of one step, cut to this rank's share: x0, valid, t, noise, cond."""
    g = step_generator(seed, step)
    x0, valid = data.x[index], data.valid[index]
    t = torch.randint(0, config.diffusion.timesteps, (len(index),), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    cond = None
    if config.model.conditioning != "none":
        mask = draw_training_masks(valid, config.masks, seed=seed * 1_000_003 + step)
        cond = conditioning_input(x0, mask)
    share = slice(runtime.rank * len(index) // runtime.world_size, (runtime.rank + 1) * len(index) // runtime.world_size)
    batch = {"x0": x0, "valid": valid, "t": t, "noise": noise, "cond": cond}
    return {k: None if v is None else v[share].to(runtime.device) for k, v in batch.items()}


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, data: FieldSplit, config: Config, schedule, device: torch.device,
                  seed: int = 12345) -> float:
    """Denoising loss over a whole split with fixed timesteps, noise and masks, so epochs compare."""
    model.eval()
    total, count = 0.0, 0
    for chunk, start in enumerate(range(0, len(data.x), EVAL_BATCH)):
        index = torch.arange(start, min(start + EVAL_BATCH, len(data.x)))
        batch = make_batch(data, index, config, seed, chunk, Runtime(device))
        loss = diffusion_loss(model, batch["x0"], batch["valid"], schedule, config.diffusion.prediction,
                              cond=batch["cond"], t=batch["t"], noise=batch["noise"])
        total += float(loss) * len(index)
        count += len(index)
    return total / max(count, 1)


def load_training_data(config: Config, stats: FieldStats | None = None) -> tuple[FieldSplit, FieldSplit, FieldStats]:
    if config.data.path is None:
        raise ConfigError("config key 'data.path' is not set: name a NetCDF/Zarr file "
                          "(make one with `fieldpaint data generate kolmogorov`)")
    train_set, test_set = load_splits(config.data, stats=stats)
    if len(test_set) == 0:
        raise ConfigError(f"the dataset {config.data.path} has no test samples; set data.test_fraction")
    return (train_set.fields(), test_set.fields(), train_set.stats)


def write_run_header(run_dir: Path, config: Config, model: torch.nn.Module, n_train: int, runtime: Runtime) -> dict:
    total, trainable = count_parameters(model)
    info = {"fieldpaint": __version__, "torch": torch.__version__, "device": str(runtime.device),
            "world_size": runtime.world_size, "parameters": total, "trainable_parameters": trainable,
            "train_samples": n_train, "params_per_sample": trainable / max(n_train, 1)}
    (run_dir / "config.yaml").write_text(dump_yaml(config))
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def resume_decision(ckpt, t, steps_per_epoch: int, reset_optimizer: bool) -> tuple[int, bool]:
    """(schedule offset, fresh optimizer?) for a resumed run.

    The notes' regression (Adam state loaded into AdamW, a cosine schedule fast-forwarded over a
    constant-LR history) must be impossible: when any optimizer or LR setting differs from the
    checkpoint's, only the weights load, and the optimizer and LR schedule start fresh here.
    """
    offset = int(ckpt.extra.get("schedule_offset", 0))
    now = optimizer_signature(t, steps_per_epoch, epochs=max(1, t.epochs - offset))
    changes = signature_changes(ckpt.extra.get("optimizer_signature", {}), now)
    if changes:
        warnings.warn("optimizer/LR settings changed since the checkpoint (" + "; ".join(changes) +
                      "): loading weights only; the optimizer and LR schedule start fresh", stacklevel=3)
    if changes or reset_optimizer:
        return ckpt.epoch, True
    return offset, False


def _autocast(config: Config, device: torch.device):
    if config.train.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _say(runtime: Runtime, text: str) -> None:
    if runtime.is_main:
        tqdm.write(text)


def train(config: Config, run_dir: str | Path, *, resume: bool = False, reset_optimizer: bool = False,
          init_from: str | Path | None = None, progress: bool = True, stop_after_epoch: int | None = None) -> dict:
    """Train `config` into `run_dir`; returns the last epoch's metrics.

    resume: continue from run_dir's `last` checkpoint (exactly, when the optimizer and LR settings
    are unchanged; otherwise weights only, with a warning, as the notes' lesson demands).
    reset_optimizer: on resume, always start the optimizer and LR schedule fresh.
    init_from: start a new run from a checkpoint's weights (the notes' retrain mode).
    stop_after_epoch: end after this epoch as if killed (for tests of resume).
    """
    run_dir = Path(run_dir)
    t = config.train
    # -- setup: process group, device, seeds -------------------------------------------------
    runtime = setup_runtime(t.device)
    if t.batch_size % runtime.world_size:
        raise ConfigError(f"config key 'train.batch_size': {t.batch_size} is not divisible by "
                          f"{runtime.world_size} processes")
    set_deterministic(t.deterministic)
    seed_everything(t.seed)
    ckpt = load_checkpoint(resolve_checkpoint(run_dir)) if resume else None

    # -- data, model, EMA, optimizer, schedule --------------------------------------------------
    stats = FieldStats.from_dict(ckpt.stats) if ckpt is not None and ckpt.stats else None
    train_data, test_data, stats = load_training_data(config, stats)
    eval_train = train_data.first(t.eval_train_samples)  # a fixed train subset scored every epoch
    n_train = len(train_data.x)
    batch_size = min(t.batch_size, n_train - n_train % runtime.world_size)
    steps_per_epoch = max(1, n_train // batch_size)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps).to(runtime.device)
    model = build_model(config).to(runtime.device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        info = write_run_header(run_dir, config, model, n_train, runtime)
        _say(runtime, f"{config.name}: {info['trainable_parameters'] / 1e6:.2f}M trainable parameters, "
                      f"{info['params_per_sample']:.0f} per training sample; {n_train} train / "
                      f"{len(test_data.x)} test samples; {steps_per_epoch} steps per epoch on {runtime.device}")
    start_epoch, step, best, offset, fresh_optimizer = 0, 0, (math.inf, -1), 0, True
    if ckpt is not None:
        check_compatible(ckpt, model)
        model.load_state_dict(ckpt.model_state)
        start_epoch, step = ckpt.epoch, ckpt.step
        best = tuple(ckpt.extra.get("best", (math.inf, -1)))
        offset, fresh_optimizer = resume_decision(ckpt, t, steps_per_epoch, reset_optimizer)
    elif init_from is not None:
        source = load_checkpoint(resolve_checkpoint(init_from))
        check_compatible(source, model)
        model.load_state_dict(source.model_state)
    ema = EMA(model, t.ema_decay, t.ema_warmup_steps)
    if ckpt is not None and ckpt.ema_state:
        ema.load_state_dict(ckpt.ema_state)
    optimizer = build_optimizer(model, t)
    # The LR schedule runs from epoch `offset` (0, or where a fresh optimizer started) to the end.
    schedule_epochs = max(1, t.epochs - offset)
    scheduler = build_scheduler(optimizer, t, steps_per_epoch, epochs=schedule_epochs)
    signature = optimizer_signature(t, steps_per_epoch, epochs=schedule_epochs)
    if ckpt is not None and not fresh_optimizer:
        optimizer.load_state_dict(ckpt.optimizer_state)
        scheduler.load_state_dict(ckpt.scheduler_state)
        restore_rng_state(ckpt.rng)
    net = torch.compile(model) if t.compile else model
    if runtime.distributed:
        net = DistributedDataParallel(net, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    log = MetricsLog(run_dir, resume_after_epoch=start_epoch if ckpt else None) if runtime.is_main else None

    # -- the epochs -------------------------------------------------------------------------------
    row: dict = {}
    for epoch in range(start_epoch, t.epochs):
        net.train()
        started, running = time.perf_counter(), 0.0
        order = epoch_order(n_train, t.seed, epoch)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
                   disable=not (progress and runtime.is_main))
        for i in bar:
            # one optimizer step on the global batch (this rank's share of it)
            batch = make_batch(train_data, order[i * batch_size:(i + 1) * batch_size], config, t.seed, step, runtime)
            with _autocast(config, runtime.device):
                loss = diffusion_loss(net, batch["x0"], batch["valid"], schedule, config.diffusion.prediction,
                                      cond=batch["cond"], t=batch["t"], noise=batch["noise"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            ema.update(model, step)  # 0-based: the first update copies the weights
            step += 1
            running += float(all_reduce_mean(loss.detach(), runtime))  # the global batch's loss
            bar.set_postfix(loss=f"{running / (i + 1):.4f}",
                            samples_s=f"{(i + 1) * batch_size / (time.perf_counter() - started):.1f}")
        seconds = time.perf_counter() - started
        epoch_loss = running / steps_per_epoch

        # evaluation with the EMA weights, checkpoints (rank 0)
        if runtime.is_main:
            with ema.swapped_in(model):
                test_loss = evaluate_loss(model, test_data, config, schedule, runtime.device)
                train_loss = evaluate_loss(model, eval_train, config, schedule, runtime.device)
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
            if row["overfitting"]:
                _say(runtime, f"  test loss has not improved for {row['epochs_since_best']} epochs "
                              f"(best {best[0]:.4f} at epoch {best[1]}): the model may be overfitting")
            state = dict(model=_unwrap(model), ema=ema, optimizer=optimizer, scheduler=scheduler, step=step,
                         epoch=epoch + 1, config=to_dict(config), stats=stats.to_dict(), metrics=row,
                         extra={"best": list(best), "optimizer_signature": signature,
                                "schedule_offset": offset})
            save_checkpoint(run_dir / "checkpoints" / "last.safetensors", **state)
            if improved:
                save_checkpoint(run_dir / "checkpoints" / "best.safetensors", **state)
        if runtime.distributed:
            torch.distributed.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    if log is not None:
        log.close()
    teardown_runtime(runtime)
    return row

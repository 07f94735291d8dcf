"""Timing real training steps: the demo's budget (fieldpaint.demo) and
benchmarks/train_throughput.py."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from fieldpaint.config import Config
from fieldpaint.data.fields import synthetic_split
from fieldpaint.diffusion.schedule import make_schedule
from fieldpaint.ema import EMA
from fieldpaint.runtime import Runtime, synchronize
from fieldpaint.train import build_optimization, build_training_model, make_batch, train_step


def train_step_times(config: Config, device: torch.device, steps: int, *, warmup: int = 1,
                     model: torch.nn.Module | None = None,
                     before_first_step: Callable[[], None] | None = None) -> list[float]:
    """Wall seconds of `steps` training-loop steps (make_batch + train_step on train.batch_size
    synthetic fields of config's grid) after `warmup` untimed ones, with the real model (or
    `model`; compiled as train compiles it under train.compile), optimizer, LR scheduler and EMA.
    `before_first_step` runs once everything is built (e.g. to reset a peak-memory counter)."""
    torch.manual_seed(config.train.seed)
    device = torch.device(device)
    model = build_training_model(config, device, model).train()
    optimizer, scheduler, _ = build_optimization(model, config, steps + warmup)
    ema = EMA(model, config.train.ema_decay, config.train.ema_warmup_steps)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps).to(device)
    data, runtime = synthetic_split(config, config.train.batch_size), Runtime(device)
    index = torch.arange(config.train.batch_size)
    net = torch.compile(model) if config.train.compile else model
    if before_first_step is not None:
        before_first_step()
    times = []
    for step in range(warmup + steps):
        synchronize(device)
        started = time.perf_counter()
        batch = make_batch(data, index, config, config.train.seed, step, runtime)
        train_step(net, batch, optimizer=optimizer, scheduler=scheduler, ema=ema, schedule=schedule,
                   config=config, step=step)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times[warmup:]


def time_train_steps(config: Config, device: torch.device, repeats: int = 3) -> float:
    """Median seconds per training step of `config` on `device` (1 warm-up + `repeats` timed)."""
    return statistics.median(train_step_times(config, device, repeats))

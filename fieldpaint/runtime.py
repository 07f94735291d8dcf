"""Where the training runs: device choice, precision, seeds, determinism, and DistributedDataParallel setup.

`torchrun --nproc_per_node N -m fieldpaint train ...` sets RANK/WORLD_SIZE/LOCAL_RANK; a plain
run has none and is rank 0 of 1. NCCL is used on GPUs, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from fieldpaint.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' prefers CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} was asked for but MPS is not available")
    return device


@dataclass(frozen=True)
class Precision:
    """How the training runs on its device: `train.precision` and `train.channels_last` resolved."""

    name: str  # "bf16" (autocast of forward and loss; fp32 weights, optimizer and EMA) or "fp32"
    channels_last: bool  # model and activations stored NHWC
    reason: str  # why, for the run header

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.name == "bf16" else None

    def describe(self) -> str:
        layout = " + channels_last" if self.channels_last else ""
        return f"{'bf16 autocast' if self.name == 'bf16' else 'fp32'}{layout} ({self.reason})"


def bf16_native(device: torch.device) -> tuple[bool, str]:
    """(whether `device` computes bf16 natively, the hardware feature that says so).

    CPUs: AVX512-BF16 or AMX tiles, as torch's own dispatch reports them; without them torch
    emulates bf16 and autocast is slower than fp32. CUDA: a GPU with native bf16 (Ampere or
    later). Apple's MPS and other devices: no (fp32 there)."""
    if device.type == "cpu":
        cpu = torch.cpu
        if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
            return True, "this CPU has AMX"
        if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
            return True, "this CPU has AVX512-BF16"
        return False, "this CPU has neither AVX512-BF16 nor AMX"
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before the including_emulation argument
            native = torch.cuda.is_bf16_supported()
        return native, f"{torch.cuda.get_device_name(device)} {'has' if native else 'lacks'} native bf16"
    return False, f"no native bf16 on {device.type}"


def resolve_precision(precision: str, channels_last: bool | str, device: torch.device) -> Precision:
    """train.precision 'auto' is bf16 where `bf16_native(device)`, fp32 elsewhere; 'fp32' and
    'bf16' are taken as given. train.channels_last 'auto' follows the precision: on with bf16
    (where NHWC makes bf16 convolutions ~3x and GroupNorm several times faster on CPU), off
    with fp32, which thereby computes exactly as it always did."""
    if precision == "auto":
        native, why = bf16_native(device)
        name, reason = ("bf16" if native else "fp32"), f"train.precision auto: {why}"
    else:
        name, reason = precision, f"train.precision {precision}"
    layout = name == "bf16" if channels_last == "auto" else bool(channels_last)
    return Precision(name, layout, reason)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Bitwise-repeatable kernels where PyTorch has them (CUDA needs the cuBLAS workspace setting)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not enabled
        torch.backends.cudnn.deterministic = enabled


def setup_runtime(device_name: str = "auto") -> Runtime:
    """Initialise the process group when launched by torchrun; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Runtime(select_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, rank, world_size)


def teardown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.distributed:
        value = value.clone()
        dist.all_reduce(value)
        value /= runtime.world_size
    return value


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with n intra-op threads, then restore. Small dense problems (the GP's Cholesky
    factorisations, per-trajectory FFTs) run fastest on one thread and slow down many-fold when
    threads compete for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock time measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()

"""`fieldpaint demo`: the main job on built-in data, in one command.

Generate Kolmogorov-flow turbulence, train an unconditional model (RePaint/DDNM) and a
conditional Palette model with the notes' recipe (AdamW, cosine LR with warmup, EMA with
warmup) within a time budget, evaluate both against the per-field fitted GP and linear
interpolation across coverages and two mask families, and write `report.md`.

Every stage keeps its output in DIR, so a rerun skips what is done and resumes what is not.
On a CUDA machine the same command trains the full-size slim configuration at 64x128.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fieldpaint.config import Config, from_dict, load_config, to_dict
from fieldpaint.errors import FieldpaintError


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo: data, models, training budget, evaluation."""

    height: int
    width: int
    n_train: int
    n_test: int
    channels: tuple[int, ...]
    norm_groups: int
    batch_size: int
    timesteps: int
    minutes_per_model: float
    eval_fields: int
    coverages: tuple[float, ...]
    families: tuple[str, ...]
    samples: int
    ddnm_steps: int
    conditional_steps: int


def make_plan(minutes: float, device: torch.device, quick: bool = False) -> DemoPlan:
    """CPU: 32x64 fields and a three-level UNet at half the slim widths; CUDA: the notes' 64x128
    slim models.

    Half the budget trains the two models; the rest generates data (simulated at 64x128 and cut
    to 32x64, ~3 min on 2 cores) and evaluates.
    """
    coverages = (0.5, 0.8, 0.9, 0.95, 0.99)
    families = ("random", "tracks")
    if quick:  # a smoke test of every stage, whatever the budget
        return DemoPlan(16, 32, 96, 16, (8, 16), 4, 16, 100, 0.25, 4, (0.5, 0.9, 0.99), families, 2, 10, 10)
    if device.type == "cuda":
        return DemoPlan(64, 128, 9180, 1020, (32, 64, 128, 128), 32, 64, 1000, minutes * 0.35, 50,
                        (0.5, 0.8, 0.9, 0.92, 0.95, 0.98, 0.99), families, 8, 100, 50)
    # Half the slim widths: ~1 M parameters, so a few minutes of CPU buy several hundred steps.
    return DemoPlan(32, 64, 1600, 160, (16, 32, 64), 8, 32, 1000, minutes * 0.25, 8, coverages, families,
                    4, 50, 25)


def demo_config(plan: DemoPlan, data_path: Path, preset: str, epochs: int, steps_per_epoch: int,
                device: str) -> Config:
    """The slim preset, resized to the plan; warmups keep the notes' proportions
    (10 of 100 epochs for the LR; 2000 of ~14,300 steps, 14 %, for the EMA's decay ramp)."""
    values = to_dict(load_config(preset))
    values["name"] = f"demo_{preset}"
    values["data"].update(path=str(data_path), variables=["u", "v"], height=plan.height, width=plan.width)
    values["model"].update(channels=list(plan.channels), norm_groups=plan.norm_groups,
                           attention_levels=["bottleneck"])
    values["diffusion"].update(timesteps=plan.timesteps)
    total_steps = epochs * steps_per_epoch
    # EMA: the notes' 0.9999 averages over ~10k steps, most of their ~14k; a run of a few hundred
    # steps needs a horizon of ~10 % of its steps, or the EMA would still be its initial weights.
    values["train"].update(epochs=epochs, batch_size=plan.batch_size, warmup_epochs=max(epochs / 10, 0.5),
                           ema_decay=min(0.9999, 1.0 - 10.0 / max(total_steps, 20)),
                           ema_warmup_steps=max(1, round(0.14 * total_steps)),
                           eval_train_samples=min(256, plan.n_test), device=device)
    return from_dict(values)


EPOCH_OVERHEAD_S = 1.0  # checkpoints, metrics and progress bars per epoch
MAX_EPOCHS = 200


def epochs_for_budget(seconds: float, step_seconds: float, steps_per_epoch: int, eval_batches: int) -> int:
    """Whole epochs that fit the budget; an epoch is its steps, an evaluation (~1/3 step per batch)
    and a fixed overhead."""
    per_epoch = steps_per_epoch * step_seconds + eval_batches * step_seconds / 3 + EPOCH_OVERHEAD_S
    return int(min(MAX_EPOCHS, max(2, seconds / per_epoch)))


def _finished(run_dir: Path) -> bool:
    from fieldpaint.runlog import read_metrics

    rows = read_metrics(run_dir)
    if not rows or not (run_dir / "config.yaml").exists():
        return False
    epochs = load_config(str(run_dir / "config.yaml")).train.epochs
    return rows[-1]["epoch"] >= epochs


def train_stage(plan: DemoPlan, data_path: Path, run_dir: Path, preset: str, device: torch.device,
                progress: bool) -> None:
    from fieldpaint.runfolder import prepare_run
    from fieldpaint.train import time_train_steps, train

    if _finished(run_dir):
        tqdm.write(f"[demo] {run_dir} is trained; skipping")
        return
    if (run_dir / "checkpoints" / "last.safetensors").exists():
        tqdm.write(f"[demo] resuming {run_dir}")
        train(prepare_run(resume=run_dir).config, run_dir, resume=True, progress=progress)
        return
    steps_per_epoch = max(1, plan.n_train // plan.batch_size)
    probe = demo_config(plan, data_path, preset, 10, steps_per_epoch, str(device))
    step = time_train_steps(probe, device)
    eval_batches = math.ceil(plan.n_test / 64) + math.ceil(min(256, plan.n_test) / 64)
    epochs = epochs_for_budget(plan.minutes_per_model * 60, step, steps_per_epoch, eval_batches)
    config = demo_config(plan, data_path, preset, epochs, steps_per_epoch, str(device))
    tqdm.write(f"[demo] {preset}: {step:.2f} s per step of {plan.batch_size} -> {epochs} epochs "
               f"in about {plan.minutes_per_model:.1f} min")
    train(config, run_dir, progress=progress)


class _Clock:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def say(self, what: str) -> None:
        now = time.perf_counter()
        tqdm.write(f"[demo] {what} in {now - self.last:.0f} s ({now - self.start:.0f} s in all)")
        self.last = now


def run_demo(out: Path, *, minutes: float = 15.0, device_name: str = "auto", quick: bool = False,
             progress: bool = True) -> Path:
    """Every stage of the demo into `out`; returns the report's path."""
    from fieldpaint.data.io import write_dataset
    from fieldpaint.data.kolmogorov import generate_kolmogorov
    from fieldpaint.evaluate import evaluate_and_report
    from fieldpaint.runtime import select_device

    if minutes <= 0:
        raise FieldpaintError(f"--minutes must be positive, got {minutes}")
    device = select_device(device_name)
    plan = make_plan(minutes, device, quick)
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    data_path = out / "data" / "kolmogorov.nc"
    if not data_path.exists():
        tqdm.write(f"[demo] generating {plan.n_train} + {plan.n_test} Kolmogorov snapshots at "
                   f"{plan.height}x{plan.width}")
        data_path.parent.mkdir(exist_ok=True)
        channels, split, attrs = generate_kolmogorov(plan.n_train, plan.n_test, plan.height, plan.width,
                                                     seed=0, progress=progress)
        write_dataset(data_path, channels, split, attrs)
        clock.say("generated the data")
    runs = [out / "runs" / "unconditional", out / "runs" / "conditional"]
    train_stage(plan, data_path, runs[0], "standard_attn_slim", device, progress)
    clock.say("trained the unconditional model")
    train_stage(plan, data_path, runs[1], "palette_slim", device, progress)
    clock.say("trained the conditional model")

    from fieldpaint.runs import load_run

    trained = [load_run(run) for run in runs]
    header = {"what": "fieldpaint demo: Kolmogorov-flow turbulence (u, v), diffusion models vs kriging",
              "plan": ", ".join(f"{k}={v}" for k, v in asdict(plan).items()),
              "kriging": "gp: Matérn ν chosen per field by likelihood, ARD, nugget, ordinary kriging, "
                         "hyperparameters from at most 500 observations per field; gp-dataset: one kernel per "
                         "channel fitted on training fields around the training-mean field, torus distances",
              "device": str(device), "written": datetime.datetime.now().isoformat(timespec="seconds")}
    # The per-field GP's hyperparameters come from at most 500 random observations of each field (its
    # prediction uses them all): at 50 % hidden a full fit of every field would take most of the budget.
    report = evaluate_and_report(
        out, runs=trained, methods=["gp", "gp-dataset", "linear", "ddnm", "conditional"],
        families=list(plan.families), coverages=list(plan.coverages), n=plan.eval_fields, samples=plan.samples,
        seed=0, sampler={"device": str(device), "batch_size": 32}, gp={"max_points": 500},
        per_method={"ddnm": {"steps": plan.ddnm_steps}, "conditional": {"steps": plan.conditional_steps}},
        validation_fields=max(2, plan.eval_fields // 2), resume=True, progress=progress, header=header)
    clock.say("evaluated")
    return report

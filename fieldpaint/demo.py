"""`fieldpaint demo`: the main job on built-in data, in one command.

Generate Kolmogorov-flow turbulence, train a conditional Palette model (most of the budget) and an
unconditional model with the notes' recipe (AdamW, cosine LR with warmup, EMA with warmup),
evaluate them against the strongest kriging (chosen on training fields) and linear
interpolation at 90, 95 and 99 % hidden on random and along-track masks, with the conditional
model sampled by DPM-Solver++(2M) and the unconditional one by MMPS, and write `report.md`.

Every stage keeps its output in DIR, so a rerun skips what is done and resumes what is not.
`--minutes` scales every stage: data, training and the number of test fields. On a CUDA machine
the same command trains the full-size slim configuration at 64x128.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fieldpaint.config import Config, from_dict, load_config, to_dict
from fieldpaint.errors import FieldpaintError


@dataclass(frozen=True)
class ModelPlan:
    """One model of the demo: its preset, widths, training minutes and the sampler it is shown with
    (method, steps, members per field, MMPS's CG iterations)."""

    preset: str
    channels: tuple[int, ...]
    norm_groups: int
    minutes: float
    method: str
    steps: int
    samples: int
    cg_iterations: int | None = None
    num_res_blocks: int = 2


@dataclass(frozen=True)
class CpuSizing:
    """What a CPU plan sizes by its arithmetic: the conditional model's widths, the training snapshots
    of a 15-minute run, the batch, the conditional model's members per field, the unconditional
    model's share of the minutes, MMPS's steps and members, and the evaluation's cost per test
    field in conditional training steps of the probe (what `conditional_seconds` holds back)."""

    widths: tuple[int, ...]
    n_train: int
    batch_size: int
    conditional_members: int
    unconditional_share: float
    mmps_steps: int
    mmps_members: int
    eval_steps_per_field: float


# Native bf16 (AVX512-BF16 or AMX). Evaluation cost measured on the default demo (24 test and 12
# validation fields, every method): 265 and 349 s at a probe of 0.44 s per step, 374 s at 0.59 s
# (25.1, 33.0, 26.4 steps per field); on --minutes 60 (48 + 24 fields) 26.5. The median: the spread
# is the machine's speed drifting between probe and evaluation.
BF16_CPU = CpuSizing((32, 64, 128), 1600, 32, 10, 0.09, 20, 3, 26.5)
# fp32 (2 cores without native bf16; see make_plan). On 2 AVX512 cores (Xeon, no BF16) the default
# demo's evaluation took 374 s with 10 conditional members at a step of 0.41 s (38 steps per
# field), and 299 s with 6 at the run's mean pace of 0.40 s (31): with per-field GP fits 40 s,
# the dataset kernel's fit 50 s, MMPS 77 s, the conditional model 57 s on test and ~30 s on
# validation fields.
FP32_CPU = CpuSizing((16, 32, 64), 800, 16, 6, 0.06, 10, 2, 32.0)
EVAL_STEPS_PER_FIELD = BF16_CPU.eval_steps_per_field


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo: data, models, training budget, evaluation."""

    height: int
    width: int
    n_train: int
    n_test: int
    batch_size: int
    timesteps: int
    conditional: ModelPlan
    unconditional: ModelPlan
    eval_fields: int
    coverages: tuple[float, ...]
    families: tuple[str, ...]
    # The evaluation's cost per test field, in training steps of the conditional model's probe (CPU):
    # what `conditional_seconds` holds back for it.
    eval_steps_per_field: float = EVAL_STEPS_PER_FIELD


COVERAGES = (0.9, 0.95, 0.99)  # where users are (1-10 % observed) and where the notes' RePaint collapsed
FAMILIES = ("random", "tracks")


def make_plan(minutes: float, device: torch.device, quick: bool = False, bf16: bool | None = None) -> DemoPlan:
    """CPU: 32x64 fields; the unconditional model (1 M parameters, [16, 32, 64]) gets a small share
    of the budget (9 %, 6 % in fp32) and the conditional one what data (1-3 min), the unconditional
    model and the evaluation's estimate leave (`conditional_seconds`: 42 % in a 15-minute run at a
    slow hour, 55 % at 60 minutes; the plan's 47 % is only the nominal share). The evaluation
    draws the conditional model's members on the test and the validation fields and MMPS's on the
    test fields, both sampled with --precision auto. More minutes buy more data (up to 4x),
    training and test fields (up to 96). CUDA: the notes' 64x128 slim models, on the plan's shares.

    The plan is sized for the arithmetic the CPU has (`bf16`: whether it computes bf16 natively,
    `runtime.bf16_native` by default; BF16_CPU and FP32_CPU). With AVX512-BF16 or AMX the
    conditional model is 3.85 M parameters ([32, 64, 128], 2 ResBlocks per level, 158 GFLOP per
    training step of 32) on 1,600 snapshots. In fp32 (AVX2 only) the same model runs at the core's
    peak arithmetic and still takes 1.7 s a step, four times as long; 15 minutes then buy 3 epochs,
    and the model lost to kriging at random 90 % hidden (MSE ratio 1.59). So there it is 0.97 M
    ([16, 32, 64], 40 GFLOP), the smallest of three trained for the same ~6 minutes on 2 AVX2
    cores, and the best: 13 epochs reached 0.80 / 0.53 / 0.74 on random masks and 0.82 / 0.85 /
    0.96 along tracks at 90 / 95 / 99 % hidden, where [24, 48, 96] with 1 ResBlock per level (57
    GFLOP) gave 0.83 / 0.56 / 0.75 and 0.84 / 0.87 / 0.97, [16, 32, 64, 128] (54 GFLOP) 0.90 /
    0.59 / 0.75 and 0.86 / 0.87 / 0.97, and 3 epochs of the bf16 plan's model 1.59 / 0.91 / 0.84
    and 0.99 / 0.97 / 0.98. Batch 16 learned more in the same time (random 0.65 / 0.48 / 0.74),
    and 800 snapshots as much as 1,600 at the same steps. Even so, a whole fp32 demo with 1,600
    snapshots and the bf16 plan's evaluation (10 members, MMPS 3 x 20 steps) took 15.7 minutes on 2
    AVX512 cores and left the conditional model 2 epochs (random 90 % hidden 2.38, worse): data
    188 s, evaluation 577 s. The fp32 plan therefore halves the data (60-95 s), takes 6 members
    of the conditional model and MMPS 2 of 10 steps; its demo took 14.2 minutes, trained 17 epochs
    of batch 16 and reached random 0.83 / 0.57 / 0.78 and tracks 0.84 / 0.86 / 0.97 (24 epochs
    at a faster hour: 0.69 / 0.51 / 0.76 and 0.81 / 0.83 / 0.96, but 18 s past 15 minutes).

    The conditional model draws 10 DPM-Solver++ steps and its mean comes from the sampling step
    chosen on validation fields (fieldpaint.mean_step): on the bf16 demo's model that mean scored
    the same with 10 members as with 14 (tracks at 90 / 95 / 99 % hidden, MSE over kriging's: 0.79
    / 0.84 / 0.96 both), where the members' own average needed many more (4 of 20 steps 0.96 /
    1.04 / 1.18, 14 of 10 steps 0.80 / 0.89 / 1.06)."""
    if quick:  # a smoke test of every stage, whatever the budget
        return DemoPlan(16, 32, 96, 16, 16, 100,
                        ModelPlan("palette_slim", (8, 16), 4, 0.15, "conditional-dpm", 6, 3),
                        ModelPlan("standard_attn_slim", (8, 16), 4, 0.1, "mmps", 4, 2, 2), 4, (0.5, 0.9, 0.99),
                        FAMILIES)
    scale = max(1.0, minutes / 15.0)
    if device.type == "cuda":
        return DemoPlan(64, 128, 9180, 1020, 64, 1000,
                        ModelPlan("palette_slim", (32, 64, 128, 128), 32, minutes * 0.4, "conditional-dpm", 10, 32),
                        ModelPlan("standard_attn_slim", (32, 64, 128, 128), 32, minutes * 0.3, "mmps", 50, 8, 10),
                        min(200, round(50 * scale)), COVERAGES, FAMILIES)
    if bf16 is None:
        from fieldpaint.runtime import bf16_native

        bf16 = bf16_native(device)[0]
    cpu = BF16_CPU if bf16 else FP32_CPU
    return DemoPlan(32, 64, round(cpu.n_train * min(scale, 4.0)), 160, cpu.batch_size, 1000,
                    ModelPlan("palette_slim", cpu.widths, 8, minutes * 0.47, "conditional-dpm", 10, cpu.conditional_members),
                    ModelPlan("standard_attn_slim", (16, 32, 64), 8, minutes * cpu.unconditional_share, "mmps",
                              cpu.mmps_steps, cpu.mmps_members, 3),
                    min(96, round(24 * math.sqrt(scale))), COVERAGES, FAMILIES, cpu.eval_steps_per_field)


# Conditional training masks for the demo's question (random and along-track masks, 90-99 % hidden):
# coverage drawn in [0.85, 0.995] rather than the preset's [0.5, 0.995], and family mixed weighted
# random 35 %, stations 10 %, tracks 45 %, boxes 10 %, so that every family is still seen.
DEMO_MASKS = {"family": "mixed", "coverage": [0.85, 0.995], "mixed_weights": [7, 2, 9, 2]}
# Half of each conditional batch at t = T-1, where x̂0 is the network's regression E[x0 | y] that the
# chosen mean steps read (diffusion.terminal_fraction). Measured on the demo's 17-epoch model, tracks
# at 90 / 95 / 99 % hidden against kriging: 0.81 / 0.85 / 0.96 uniform, 0.78 / 0.82 / 0.96 at 0.25,
# 0.76 / 0.80 / 0.95 at 0.5; random 0.50 / 0.44 / 0.75 -> 0.50 / 0.42 / 0.71.
DEMO_TERMINAL_FRACTION = 0.5


def demo_config(plan: DemoPlan, model: ModelPlan, data_path: Path, epochs: int, steps_per_epoch: int,
                device: str) -> Config:
    """The slim preset, resized to the plan; warmups keep the notes' proportions
    (10 of 100 epochs for the LR; 2000 of ~14,300 steps, 14 %, for the EMA's decay ramp). No
    dropout: a run of ~20 epochs does not overfit (test loss stays below train loss) and dropout
    slowed learning per step (measured: random 0.62 -> 0.55, tracks 0.96 -> 0.94 at 90 % hidden)."""
    values = to_dict(load_config(model.preset))
    values["name"] = f"demo_{model.preset}"
    values["data"].update(path=str(data_path), variables=["u", "v"], height=plan.height, width=plan.width)
    values["model"].update(channels=list(model.channels), norm_groups=model.norm_groups,
                           num_res_blocks=model.num_res_blocks,
                           attention_levels=["bottleneck"], dropout=0.0)
    if values["model"]["conditioning"] != "none":
        values["masks"].update(DEMO_MASKS)
        values["diffusion"].update(terminal_fraction=DEMO_TERMINAL_FRACTION)
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
# Of the whole budget: probes, checkpoints, figures, the report and the machine's drift (a slow-hour
# run with 3 % ended 6 s over 15 minutes).
BUDGET_MARGIN = 0.05


def conditional_seconds(budget_s: float, elapsed_s: float, step_s: float, eval_fields: int,
                        eval_steps_per_field: float = EVAL_STEPS_PER_FIELD) -> float:
    """The conditional model's training seconds on a CPU: the whole budget less its margin, the
    stages already run (`elapsed_s`: data, the unconditional model) and the evaluation's estimate
    (`eval_steps_per_field` steps of `step_s` per test field). Longer budgets spend everything the
    fixed stages leave here; a slower machine trains fewer epochs rather than finishing late."""
    return budget_s * (1 - BUDGET_MARGIN) - elapsed_s - eval_steps_per_field * step_s * eval_fields


MIN_EPOCHS = 2  # a run shorter than this has no LR decay worth the name; a slow machine runs late instead


def epochs_for_budget(seconds: float, step_seconds: float, steps_per_epoch: int, eval_batches: int,
                      minimum: int = MIN_EPOCHS) -> int:
    """Whole epochs of `epoch_seconds` that fit the budget (at least `minimum`)."""
    return int(min(MAX_EPOCHS, max(minimum, seconds / epoch_seconds(step_seconds, steps_per_epoch, eval_batches))))


def epoch_seconds(step_seconds: float, steps_per_epoch: int, eval_batches: int) -> float:
    """The epoch model: the steps, an evaluation of ~1/3 step per batch and a fixed overhead."""
    return steps_per_epoch * step_seconds + eval_batches * step_seconds / 3 + EPOCH_OVERHEAD_S


def step_from_epoch(measured_s: float, steps_per_epoch: int, eval_batches: int) -> float:
    """Seconds per training step implied by a measured epoch (its steps and evaluation): the
    inverse of `epoch_seconds`, whose fixed overhead the epoch had not yet paid."""
    return measured_s / (steps_per_epoch + eval_batches / 3)


def _finished(run_dir: Path) -> bool:
    from fieldpaint.runlog import read_metrics

    rows = read_metrics(run_dir)
    if not rows or not (run_dir / "config.yaml").exists():
        return False
    epochs = load_config(str(run_dir / "config.yaml")).train.epochs
    return rows[-1]["epoch"] >= epochs


def train_stage(plan: DemoPlan, model: ModelPlan, data_path: Path, run_dir: Path, device: torch.device,
                progress: bool, seconds_for: Callable[[float], float] | None = None) -> None:
    """Train `model` into `run_dir` (or resume it, or skip it when done) for whole epochs within
    `seconds_for(step seconds)` (default: the plan's minutes), the step timed on this machine.

    With `seconds_for`, the epochs are planned from a probe of a few steps and again after every
    epoch from the run's pace so far (`train(replan=)`): either way in the first half of the run,
    only shorter after it. The machine's speed drifts by 1.2x within minutes: a probe at 0.57 s
    per step once planned an epoch that then ran at 0.48 s, leaving 11 of 60 minutes unspent; a
    first epoch at 0.36 s planned 24 epochs that then ran at 0.42 s, and the demo ended 63 s late;
    another first epoch ran at 0.70 s, the next at 0.46."""
    from fieldpaint.runfolder import prepare_run
    from fieldpaint.steptimes import time_train_steps
    from fieldpaint.train import train

    if _finished(run_dir):
        tqdm.write(f"[demo] {run_dir} is trained; skipping")
        return
    if (run_dir / "checkpoints" / "last.safetensors").exists():
        tqdm.write(f"[demo] resuming {run_dir}")
        train(prepare_run(resume=run_dir).config, run_dir, resume=True, progress=progress)
        return
    steps_per_epoch = max(1, plan.n_train // plan.batch_size)
    probe = demo_config(plan, model, data_path, 10, steps_per_epoch, str(device))
    step = time_train_steps(probe, device)
    eval_batches = math.ceil(plan.n_test / 64) + math.ceil(min(256, plan.n_test) / 64)
    seconds = model.minutes * 60 if seconds_for is None else seconds_for(step)
    epochs = epochs_for_budget(seconds, step, steps_per_epoch, eval_batches)
    config = demo_config(plan, model, data_path, epochs, steps_per_epoch, str(device))
    per_epoch = epoch_seconds(step, steps_per_epoch, eval_batches)
    tqdm.write(f"[demo] {model.preset} {list(model.channels)}: {step:.2f} s per step of {plan.batch_size} -> "
               f"{epochs} epochs in about {epochs * per_epoch / 60:.1f} min")
    if epochs * per_epoch > seconds + per_epoch:
        tqdm.write(f"[demo] this machine leaves {max(0.0, seconds) / 60:.1f} min for this model after the other "
                   f"stages: it trains the minimum {epochs} epochs and the demo runs late")

    planned = [epochs]

    def replan(epochs_done: int, run_s: float) -> Config:
        measured = step_from_epoch(run_s / epochs_done, steps_per_epoch, eval_batches)
        # The epochs still to come: none when the budget is spent (the minimum is for the whole run).
        later = epochs_for_budget(seconds_for(measured), measured, steps_per_epoch, eval_batches, minimum=0)
        total = min(MAX_EPOCHS, max(MIN_EPOCHS, epochs_done + later))
        if epochs_done == 1:
            tqdm.write(f"[demo] the first epoch ran at {measured:.2f} s per step")
        if 2 * epochs_done > planned[-1]:  # past half the run only shorter: longer would raise a decayed LR
            total = min(total, planned[-1])
        planned.append(total)
        return demo_config(plan, model, data_path, total, steps_per_epoch, str(device))

    train(config, run_dir, progress=progress, replan=None if seconds_for is None else replan)


def _arithmetic(device: torch.device) -> str:
    from fieldpaint.runtime import bf16_native

    native, why = bf16_native(device)
    return f"{'bf16' if native else 'fp32'} ({why})"


class _Clock:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

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
    train_stage(plan, plan.unconditional, data_path, runs[0], device, progress)
    clock.say("trained the unconditional model")

    def conditional_budget(step: float) -> float:
        return conditional_seconds(minutes * 60, clock.elapsed(), step, plan.eval_fields, plan.eval_steps_per_field)

    # CUDA and --quick keep the plan's minutes: the evaluation's CPU calibration does not hold there
    adaptive = device.type == "cpu" and not quick
    train_stage(plan, plan.conditional, data_path, runs[1], device, progress, conditional_budget if adaptive else None)
    clock.say("trained the conditional model")

    from fieldpaint.runs import load_run

    trained = [load_run(run) for run in runs]
    header = {"what": "fieldpaint demo: Kolmogorov-flow turbulence (u, v), diffusion models vs kriging",
              "plan": ", ".join(f"{k}={v}" for k, v in asdict(plan).items()),
              "kriging": "gp: Matérn ν chosen per field by likelihood, ARD, nugget, ordinary kriging, "
                         "hyperparameters from at most 500 observations per field; gp-dataset: one kernel per "
                         "channel fitted on training fields around the training-mean field, torus distances; "
                         "both predict from the 64 nearest observations",
              "device": str(device), "written": datetime.datetime.now().isoformat(timespec="seconds")}
    if device.type == "cpu" and not quick:
        header["conditional model"] = (f"{list(plan.conditional.channels)}, {plan.conditional.num_res_blocks} "
                                       f"ResBlock(s) per level, sized for {_arithmetic(device)}")
    if plan.unconditional.cg_iterations:
        header["MMPS CG iterations per step"] = plan.unconditional.cg_iterations
    # The per-field GP's hyperparameters come from at most 500 random observations of each field (its
    # prediction uses them all).
    shown = (plan.unconditional, plan.conditional)
    report = evaluate_and_report(
        out, runs=trained, methods=["gp", "gp-dataset", "linear", *(m.method for m in shown)],
        families=list(plan.families), coverages=list(plan.coverages), n=plan.eval_fields,
        samples=max(m.samples for m in shown), seed=0, sampler={"device": str(device), "batch_size": 32, "precision": "auto"},
        gp={"max_points": 500},
        per_method={m.method: {"steps": m.steps, "samples": m.samples,
                               **({"cg_iterations": m.cg_iterations} if m.cg_iterations else {})} for m in shown},
        validation_fields=max(2, plan.eval_fields // 2), resume=True, progress=progress, header=header)
    clock.say("evaluated")
    return report

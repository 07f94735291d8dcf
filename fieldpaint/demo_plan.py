"""The demo's sizes: data, models, samplers and test fields for a budget and a machine, and the
budget rule that gives the conditional model what the other stages leave (`fieldpaint.demo` runs
them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
    model's share of the minutes, and MMPS's steps and members."""

    widths: tuple[int, ...]
    n_train: int
    batch_size: int
    conditional_members: int
    unconditional_share: float
    mmps_steps: int
    mmps_members: int


# Native bf16 (AVX512-BF16 or AMX).
BF16_CPU = CpuSizing((32, 64, 128), 1600, 32, 10, 0.09, 20, 3)
# fp32 (2 cores without native bf16; see make_plan).
FP32_CPU = CpuSizing((16, 32, 64), 800, 16, 6, 0.06, 10, 2)
# The fp32 plan's models and samplers on a bf16 machine too slow for BF16_CPU's model (`fit_to_pace`),
# on the data already generated.
SLOW_BF16_CPU = CpuSizing(FP32_CPU.widths, BF16_CPU.n_train, FP32_CPU.batch_size, FP32_CPU.conditional_members,
                          FP32_CPU.unconditional_share, FP32_CPU.mmps_steps, FP32_CPU.mmps_members)
# BF16_CPU's model only where its budget buys this many epochs: at 13 it reached tracks 0.78 / 0.82 at
# 90 / 95 % hidden, about what FP32_CPU's model gave at 17-24 epochs in fp32 (0.84 / 0.86, 0.81 / 0.83);
# at 2 (0.77 s a step at a slow hour) it lost to kriging at random 90 % hidden (2.0).
LARGE_MIN_EPOCHS = 10
# ... of the 15-minute plan's data: what counts is the training steps, so a longer run on more data
# (4x at 60 minutes) keeps the model at fewer epochs (9 there were 1,800 steps of 32).
LARGE_MIN_STEPS = LARGE_MIN_EPOCHS * (BF16_CPU.n_train // BF16_CPU.batch_size)


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

    @property
    def validation_fields(self) -> int:
        """Training fields the evaluation chooses the reference and the mean steps on."""
        return max(2, self.eval_fields // 2)


COVERAGES = (0.9, 0.95, 0.99)  # where users are (1-10 % observed) and where the notes' RePaint collapsed
FAMILIES = ("random", "tracks")


def make_plan(minutes: float, device: torch.device, quick: bool = False, bf16: bool | None = None) -> DemoPlan:
    """CPU: 32x64 fields; the unconditional model (1 M parameters, [16, 32, 64]) gets a small share
    of the budget (9 %, 6 % in fp32) and the conditional one what data (1-3 min), the unconditional
    model, the kriging (scored first) and the estimate of the diffusion models' evaluation leave
    (`conditional_seconds`: 42 % in a 15-minute run at a slow hour, 55 % at 60 minutes, 61 % in
    fp32 on 2 AVX2 cores; the plan's 47 % is only the nominal share). The evaluation
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

    A bf16 machine can be slow too (the same 2 AMX cores ran the bf16 model at 0.40 s a step one day
    and 0.71-0.79 s another, when its plan left the model 2 epochs): `fit_to_pace` then moves the
    conditional model and the samplers to FP32_CPU's sizes before the conditional stage.

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
    return cpu_plan(minutes, BF16_CPU if bf16 else FP32_CPU)


def cpu_plan(minutes: float, cpu: CpuSizing, n_train: int | None = None) -> DemoPlan:
    """The CPU demo sized by `cpu` for `minutes` (n_train: the data's size when it exists already)."""
    scale = max(1.0, minutes / 15.0)
    n_train = round(cpu.n_train * min(scale, 4.0)) if n_train is None else n_train
    # The unconditional model's minutes are a fixed share of the budget's. Grown as the square root
    # of the budget instead (2.7 of 60 minutes: 2 epochs, not 5), MMPS at random 90 % hidden went from
    # 0.084 of kriging's MSE to 0.334, for about one more epoch of the conditional model (11 at 0.83 s
    # a step) and no gain along tracks (0.584 / 0.649 at 90 / 95 % hidden, 0.562 / 0.629 before).
    unconditional_minutes = minutes * cpu.unconditional_share
    return DemoPlan(32, 64, n_train, 160, cpu.batch_size, 1000,
                    ModelPlan("palette_slim", cpu.widths, 8, minutes * 0.47, "conditional-dpm", 10, cpu.conditional_members),
                    ModelPlan("standard_attn_slim", (16, 32, 64), 8, unconditional_minutes, "mmps",
                              cpu.mmps_steps, cpu.mmps_members, 3),
                    min(96, round(24 * math.sqrt(scale))), COVERAGES, FAMILIES)


EPOCH_OVERHEAD_S = 1.0  # checkpoints, metrics and progress bars per epoch
MAX_EPOCHS = 200
# Held back of the whole budget: a fixed part for probes, checkpoints, figures and the report, and a
# share for the machine's drift. A slow-hour 15-minute run with 3 % (27 s) ended 6 s over; 5 % of the
# hour (180 s) ended it 5.8 minutes early, so the margin grows less than the budget: 48 s at 15
# minutes, 102 s at 60.
BUDGET_MARGIN_S = 30.0
BUDGET_MARGIN = 0.02


def budget_margin_s(budget_s: float) -> float:
    """Seconds of a `budget_s` demo that no stage is planned to spend."""
    return BUDGET_MARGIN_S + BUDGET_MARGIN * budget_s


# What sampling costs in training samples of the conditional model (one sample's share of a training
# step, forward and backward, in the same precision): a network evaluation of one field by the
# conditional model, and a forward-equivalent of MMPS (a forward, and 2 per CG iteration's
# vector-Jacobian product) by the unconditional one. Measured on the fp32 demo (2 AVX2 cores, a pace of
# 0.34 s per training step of 16): the conditional model's 6 members x 10 steps on 24 test and 12
# validation fields x 6 groups (12,960 evaluations) took 50 + 27 s (3.6 per training sample); MMPS's
# 2 members x 10 steps x (1 + 2 x 3) on the 24 test fields x 6 groups (20,160) took 63 s (6.8).
SAMPLE_NFE_PER_TRAIN_SAMPLE = 3.6
MMPS_FORWARDS_PER_TRAIN_SAMPLE = 6.8
REPORT_SECONDS = 30.0  # the report's figures after the last scores (measured 25-33 s on 2 cores)


DEMO_PERIODIC = (True, True)  # (y, x): the Kolmogorov generator's box, recorded in its file as periodic 'xy'
# The members' frames are chosen among the fixed one and rolls along x: the flow's statistics are the
# same at every x but not at every y, where the forcing is a sine (rolls by k/K of the box along y are
# no symmetry of it). With y among the candidates, the validation pass never chose it in 4 runs x 6
# groups (on one model: 0.77-1.07 of kriging's MSE, the fixed frame 0.45-0.96), and it cost a third
# of that pass.
DEMO_FRAME_AXES = ("x",)


def diffusion_eval_seconds(plan: DemoPlan, step_s: float) -> float:
    """The diffusion models' share of the evaluation, for a conditional training step of `step_s`:
    the conditional model's members on the test fields and on the validation fields once per frame
    candidate (fixed and x, DEMO_FRAME_AXES; fieldpaint.mean_step), MMPS's on the test fields,
    every group, then the report. The kriging runs before the conditional model trains, so its time
    is measured, not estimated."""
    from fieldpaint.mean_step import frame_candidates

    groups = len(plan.families) * len(plan.coverages)
    model, mmps = plan.conditional, plan.unconditional
    fields = plan.eval_fields + len(frame_candidates(DEMO_PERIODIC, DEMO_FRAME_AXES)) * plan.validation_fields
    nfe = model.samples * model.steps * fields * groups
    forwards = mmps.samples * mmps.steps * (1 + 2 * (mmps.cg_iterations or 0)) * plan.eval_fields * groups
    per_sample = step_s / plan.batch_size
    return (nfe / SAMPLE_NFE_PER_TRAIN_SAMPLE + forwards / MMPS_FORWARDS_PER_TRAIN_SAMPLE) * per_sample + REPORT_SECONDS


def conditional_seconds(budget_s: float, elapsed_s: float, step_s: float, plan: DemoPlan) -> float:
    """The conditional model's training seconds on a CPU: the whole budget less its margin, the
    stages already run (`elapsed_s`: data, the unconditional model, the kriging scored) and the
    estimate of what is left after it (`diffusion_eval_seconds`). Longer budgets spend
    everything the fixed stages leave here; a slower machine trains fewer epochs rather than
    finishing late."""
    return budget_s - budget_margin_s(budget_s) - elapsed_s - diffusion_eval_seconds(plan, step_s)


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


def fit_to_pace(plan: DemoPlan, minutes: float, elapsed_s: float, step_s: float | None,
                trained: tuple[int, ...] | None = None) -> tuple[DemoPlan, str | None]:
    """BF16_CPU's plan, or SLOW_BF16_CPU's on the same data where BF16_CPU's conditional model,
    at `step_s` seconds a step (its probe), would train fewer than LARGE_MIN_STEPS steps in what
    the budget leaves after `elapsed_s`. A conditional run already begun keeps its widths
    (`trained`). Returns the plan and, when it changed, why (for the log and the report)."""
    if trained is not None:
        if tuple(trained) != SLOW_BF16_CPU.widths:
            return plan, None
        return cpu_plan(minutes, SLOW_BF16_CPU, plan.n_train), f"{list(trained)} as the run begun"
    steps_per_epoch = max(1, plan.n_train // plan.batch_size)
    seconds = conditional_seconds(minutes * 60, elapsed_s, step_s, plan)
    epochs = epochs_for_budget(seconds, step_s, steps_per_epoch, epoch_eval_batches(plan), minimum=0)
    if epochs * steps_per_epoch >= LARGE_MIN_STEPS:
        return plan, None
    return cpu_plan(minutes, SLOW_BF16_CPU, plan.n_train), (
        f"{list(SLOW_BF16_CPU.widths)}: the {list(plan.conditional.channels)} model ran at {step_s:.2f} s a step, "
        f"which leaves it {epochs} epochs, {epochs * steps_per_epoch} steps (fewer than {LARGE_MIN_STEPS})")


def epoch_eval_batches(plan: DemoPlan) -> int:
    """Batches of the per-epoch evaluation: the test split and the scored train subset, 64 a batch."""
    return math.ceil(plan.n_test / 64) + math.ceil(min(256, plan.n_test) / 64)

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
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fieldpaint.config import Config, from_dict, load_config, to_dict
# The plan's names are the demo's too (callers and tests read them here).
from fieldpaint.demo_plan import (BF16_CPU, BUDGET_MARGIN, DEMO_FRAME_AXES, EPOCH_OVERHEAD_S,  # noqa: F401
                                  FP32_CPU, LARGE_MIN_EPOCHS, LARGE_MIN_STEPS, MAX_EPOCHS, MIN_EPOCHS, SLOW_BF16_CPU,
                                  CpuSizing, DemoPlan, ModelPlan, conditional_seconds, cpu_plan, diffusion_eval_seconds,
                                  epoch_eval_batches, epoch_seconds, epochs_for_budget, fit_to_pace, make_plan,
                                  step_from_epoch)
from fieldpaint.errors import FieldpaintError


# Conditional training masks for the demo's question (random and along-track masks, 90-99 % hidden):
# coverage drawn in [0.85, 0.995] rather than the preset's [0.5, 0.995], and family mixed weighted
# random 35 %, stations 10 %, tracks 45 %, boxes 10 %, so that every family is still seen.
DEMO_MASKS = {"family": "mixed", "coverage": [0.85, 0.995], "mixed_weights": [7, 2, 9, 2]}
KRIGING = ("gp", "gp-dataset", "linear")  # the baselines, scored before the conditional model trains
# 90 % of each conditional batch at t = T-1, where x̂0 is the network's regression E[x0 | y] that the
# chosen mean steps read (diffusion.terminal_fraction). Measured on the demo's 17-epoch model, tracks
# at 90 / 95 / 99 % hidden against kriging: 0.81 / 0.85 / 0.96 uniform, 0.78 / 0.82 / 0.96 at 0.25,
# 0.76 / 0.80 / 0.95 at 0.5; random 0.50 / 0.44 / 0.75 -> 0.50 / 0.42 / 0.71. Retrained 25 epochs
# each on the 15-minute demo's data, 48 test fields: 0.5 -> 0.75 -> 0.9 gave random 0.301 / 0.273 /
# 0.661 -> 0.282 / 0.258 / 0.654 -> 0.281 / 0.256 / 0.651, tracks 0.630 / 0.730 / 0.920 -> 0.613 /
# 0.720 / 0.916 -> 0.607 / 0.709 / 0.914 (0.9 against 0.5, paired per field: 36-43 of 48 better at
# 90 and 95 % hidden), the members' spread/skill still 1.01-1.02.
DEMO_TERMINAL_FRACTION = 0.9
# The models' convolutions wrap around both axes of the Kolmogorov box, so that the pixels at the
# edges see their neighbours across them, as the kriging's torus distances do. The flow is invariant
# to any shift along x and to shifts by a forcing period along y (H/4 rows); a UNet of L levels wrapped
# along y commutes exactly with shifts by 2^L rows, at the demo's grids that period, and the
# observations place the phase within it. One 15-minute run each on 2 AVX512-BF16 cores, the same
# test cases, at 90 / 95 / 99 % hidden against gp-dataset: zero padding (23 epochs) random 0.45 /
# 0.38 / 0.67, tracks 0.71 / 0.77 / 0.95; wrapped along x (23 epochs) 0.42 / 0.36 / 0.66, 0.69 /
# 0.76 / 0.94; along x and y (20 epochs: its step costs more) 0.38 / 0.32 / 0.65, 0.68 / 0.74 / 0.94.
DEMO_WRAP = "xy"


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
                           attention_levels=["bottleneck"], dropout=0.0, wrap=DEMO_WRAP)
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


def _finished(run_dir: Path) -> bool:
    from fieldpaint.runlog import read_metrics

    rows = read_metrics(run_dir)
    if not rows or not (run_dir / "config.yaml").exists():
        return False
    epochs = load_config(str(run_dir / "config.yaml")).train.epochs
    return rows[-1]["epoch"] >= epochs


def train_stage(plan: DemoPlan, model: ModelPlan, data_path: Path, run_dir: Path, device: torch.device,
                progress: bool, seconds_for: Callable[[float], float] | None = None,
                probed_step: float | None = None) -> None:
    """Train `model` into `run_dir` (or resume it, or skip it when done) for whole epochs within
    `seconds_for(step seconds)` (default: the plan's minutes), the step timed on this machine.

    With `seconds_for`, the epochs are planned from a probe of a few steps and again after every
    epoch from the run's pace so far (`train(replan=)`): either way in the first half of the run,
    only shorter after it. The machine's speed drifts by 1.2x within minutes: a probe at 0.57 s
    per step once planned an epoch that then ran at 0.48 s, leaving 11 of 60 minutes unspent; a
    first epoch at 0.36 s planned 24 epochs that then ran at 0.42 s, and the demo ended 63 s late;
    another first epoch ran at 0.70 s, the next at 0.46."""
    from fieldpaint.runfolder import prepare_run
    from fieldpaint.train import train

    if _finished(run_dir):
        tqdm.write(f"[demo] {run_dir} is trained; skipping")
        return
    if (run_dir / "checkpoints" / "last.safetensors").exists():
        tqdm.write(f"[demo] resuming {run_dir}")
        train(prepare_run(resume=run_dir).config, run_dir, resume=True, progress=progress)
        return
    steps_per_epoch = max(1, plan.n_train // plan.batch_size)
    step = probe_step(plan, model, data_path, device) if probed_step is None else probed_step
    eval_batches = epoch_eval_batches(plan)
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


def _conditional_probe(plan: DemoPlan, run_dir: Path, data_path: Path, device: torch.device
                       ) -> tuple[float | None, tuple[int, ...] | None]:
    """(the plan's conditional model's probe seconds per step, None) for a new run; (None, its
    widths) for a run already begun."""
    if (run_dir / "config.yaml").exists():
        return None, tuple(load_config(str(run_dir / "config.yaml")).model.channels)
    return probe_step(plan, plan.conditional, data_path, device), None


def probe_step(plan: DemoPlan, model: ModelPlan, data_path: Path, device: torch.device) -> float:
    """Seconds per training step of `model` as the plan trains it, timed on this machine."""
    from fieldpaint.steptimes import time_train_steps

    steps_per_epoch = max(1, plan.n_train // plan.batch_size)
    return time_train_steps(demo_config(plan, model, data_path, 10, steps_per_epoch, str(device)), device)


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
    from fieldpaint.runs import load_run

    # The kriging first, while the conditional model waits: its time is then measured, not estimated,
    # and the budget gives the conditional model what is left. The final evaluation resumes it.
    # The per-field GP's hyperparameters come from at most 500 random observations of each field (its
    # prediction uses them all).
    evaluation = dict(families=list(plan.families), coverages=list(plan.coverages), n=plan.eval_fields, seed=0,
                      gp={"max_points": 500}, validation_fields=plan.validation_fields,
                      frame_axes=DEMO_FRAME_AXES, resume=True, progress=progress)
    evaluate_and_report(out, runs=[load_run(runs[0])], methods=list(KRIGING), samples=1, report=False, **evaluation)
    clock.say("scored the kriging")

    def conditional_budget(step: float) -> float:
        return conditional_seconds(minutes * 60, clock.elapsed(), step, plan)

    # CUDA and --quick keep the plan's minutes: the evaluation's CPU calibration does not hold there
    adaptive = device.type == "cpu" and not quick
    downsized = probed = None
    if adaptive and plan.conditional.channels == BF16_CPU.widths:
        probed, trained = _conditional_probe(plan, runs[1], data_path, device)
        plan, downsized = fit_to_pace(plan, minutes, clock.elapsed(), probed, trained)
        if downsized:
            tqdm.write(f"[demo] the conditional model is {downsized}")
            probed = None  # another model: train_stage times it
    train_stage(plan, plan.conditional, data_path, runs[1], device, progress, conditional_budget if adaptive else None,
                probed)
    clock.say("trained the conditional model")

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
                                       f"ResBlock(s) per level, sized for {_arithmetic(device)}"
                                       + (f"; {downsized}" if downsized else ""))
    if plan.unconditional.cg_iterations:
        header["MMPS CG iterations per step"] = plan.unconditional.cg_iterations
    shown = (plan.unconditional, plan.conditional)
    report = evaluate_and_report(
        out, runs=trained, methods=[*KRIGING, *(m.method for m in shown)], samples=max(m.samples for m in shown),
        sampler={"device": str(device), "batch_size": 32, "precision": "auto"},
        per_method={m.method: {"steps": m.steps, "samples": m.samples,
                               **({"cg_iterations": m.cg_iterations} if m.cg_iterations else {})} for m in shown},
        header=header, **evaluation)
    clock.say("evaluated")
    return report

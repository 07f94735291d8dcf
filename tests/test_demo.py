"""`fieldpaint demo --quick`: every stage runs, every report file exists, the numbers are finite."""

import math

import pandas as pd
import pytest
import torch

from fieldpaint.cli import main


def test_quick_demo_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    for name in ("report.md", "cases.csv", "summary.csv", "summary.json", "reference.json", "mean_step.json",
                 "data/kolmogorov.nc",
                 "runs/unconditional/checkpoints/best.safetensors", "runs/conditional/checkpoints/best.safetensors",
                 "figures/ratio_vs_coverage.png", "figures/training_unconditional.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["method"]) == {"kriging", "gp", "gp-dataset", "linear", "unconditional:mmps",
                                      "conditional:conditional-dpm"}
    assert (summary["failures"] == 0).all() and set(summary["verdict"]) <= {
        "better", "worse", "indistinguishable", "reference"}
    assert all(math.isfinite(v) for v in summary[["mse_mean", "crps_mean", "ratio_gmean"]].to_numpy().ravel())
    members = summary.groupby("method")["members"].first()  # each model's own count (make_plan, quick)
    assert members["conditional:conditional-dpm"] == 3 and members["unconditional:mmps"] == 2
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "nan" not in report.split("## Tables")[1].split("## Example")[0]
    assert "## Where the conditional models' means come from" in report  # the step chosen on validation fields
    # A rerun skips every finished stage and leaves the results as they were.
    before = (out / "cases.csv").read_text()
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert (out / "cases.csv").read_text() == before


def test_demo_trains_the_conditional_model_on_the_masks_it_is_scored_on(tmp_path):
    """The conditional config draws 85-99.5 % hidden, mixed weighted toward tracks, without dropout;
    the unconditional one keeps the preset's masks; both plans give each model its own members. Both
    wrap around along both axes, on which the demo's data is periodic at the model's own grid."""
    import torch

    from fieldpaint.data.fields import check_wrap
    from fieldpaint.demo import DEMO_MASKS, demo_config, make_plan
    from fieldpaint.demo_plan import DEMO_PERIODIC

    plan = make_plan(15.0, torch.device("cpu"), bf16=True)
    conditional = demo_config(plan, plan.conditional, tmp_path / "d.nc", 20, 50, "cpu")
    unconditional = demo_config(plan, plan.unconditional, tmp_path / "d.nc", 6, 50, "cpu")
    assert conditional.masks.coverage == tuple(DEMO_MASKS["coverage"]) == (0.85, 0.995)
    assert conditional.masks.mixed_weights == (7.0, 2.0, 9.0, 2.0)
    assert unconditional.masks.mixed_weights is None
    assert conditional.model.dropout == unconditional.model.dropout == 0.0
    assert conditional.diffusion.terminal_fraction == 0.9 and unconditional.diffusion.terminal_fraction == 0.0
    assert (plan.conditional.samples, plan.conditional.steps) == (10, 10)
    assert plan.unconditional.samples == 3
    assert conditional.model.wrap == unconditional.model.wrap == "xy"
    check_wrap(conditional.model.wrap, DEMO_PERIODIC, (plan.height, plan.width),
               (conditional.data.height, conditional.data.width))


def test_the_conditional_budget_holds_back_what_the_diffusion_evaluation_costs():
    """The CPU demo's conditional model trains for what the budget leaves after the stages already
    run (the kriging among them, scored before it trains) and the estimate of the diffusion models'
    evaluation. Closed form of that estimate for the fp32 plan at 0.34 s per step of 16 (6 members x
    10 steps on 24 test fields + 12 validation fields for each of 2 frame candidates, fixed and x,
    x 6 groups; MMPS 2 x 10 x (1 + 2 x 3) on 24 x 6), checked against the fp32 demo it was measured on
    (conditional 50 s on test and 27 s on validation fields, which the frame candidates now sample
    twice, MMPS 63 s, the report ~30 s: 197 s). The planned epochs then end the run within 15 minutes
    less the margin (30 s + 2 %: 48 s); a longer budget spends its extra minutes there, a slower step
    trains fewer epochs."""
    from fieldpaint.demo import (EPOCH_OVERHEAD_S, FP32_CPU, conditional_seconds, cpu_plan, diffusion_eval_seconds,
                                 epochs_for_budget)

    plan, step = cpu_plan(15, FP32_CPU), 0.34
    estimate = diffusion_eval_seconds(plan, step)
    assert estimate == pytest.approx((6 * 10 * 48 * 6 / 3.6 + 2 * 10 * 7 * 24 * 6 / 6.8) * step / 16 + 30)
    assert estimate == pytest.approx(50 + 2 * 27 + 63 + 30, rel=0.1)
    elapsed, steps_per_epoch, eval_batches = 290.0, 50, 6  # data 72 s, unconditional 41 s, kriging ~150 s
    seconds = conditional_seconds(900, elapsed, step, plan)
    assert seconds + elapsed + estimate == pytest.approx(900 - 48)
    epochs = epochs_for_budget(seconds, step, steps_per_epoch, eval_batches)
    per_epoch = steps_per_epoch * step + eval_batches * step / 3 + EPOCH_OVERHEAD_S
    assert elapsed + epochs * per_epoch + estimate <= 900
    assert conditional_seconds(3600, elapsed, step, cpu_plan(60, FP32_CPU)) > 4 * seconds  # fixed stages once
    assert conditional_seconds(900, elapsed, 1.2 * step, plan) < seconds


def test_the_first_epoch_replans_the_conditional_model(tmp_path, monkeypatch):
    """With a budget (`seconds_for`), train_stage hands train() a re-plan: an epoch measured faster
    than the probe buys the epochs the same budget fits at the measured speed, and the new config
    differs from the planned one only where train() lets it."""
    import fieldpaint.steptimes as S
    import fieldpaint.train as T
    from fieldpaint.demo import epochs_for_budget, make_plan, step_from_epoch, train_stage

    assert step_from_epoch(50 * 0.4 + 4 * 0.4 / 3, 50, 4) == pytest.approx(0.4)  # the epoch model's inverse
    plan = make_plan(15, torch.device("cpu"))
    calls = {}
    monkeypatch.setattr(S, "time_train_steps", lambda config, device: 0.6)
    monkeypatch.setattr(T, "train", lambda config, run_dir, progress, replan: calls.update(config=config, replan=replan))
    budget = 400.0
    train_stage(plan, plan.conditional, tmp_path / "data.nc", tmp_path / "run", torch.device("cpu"), False,
                seconds_for=lambda step: budget)
    spe, eval_batches = plan.n_train // plan.batch_size, 6  # 160 test fields and 160 scored train fields, 64 a batch
    planned = calls["config"]
    assert planned.train.epochs == epochs_for_budget(budget, 0.6, spe, eval_batches)
    first_epoch = 0.4 * (spe + eval_batches / 3)  # the epoch ran at 0.4 s per step
    new = calls["replan"](1, first_epoch)
    assert new.train.epochs == 1 + epochs_for_budget(budget, 0.4, spe, eval_batches) > planned.train.epochs
    assert T.replanned(planned, new) is new
    assert new.train.ema_decay > planned.train.ema_decay  # the EMA horizon follows the longer run


def test_every_epoch_replans_and_past_half_the_run_only_shorter(tmp_path, monkeypatch):
    """After each epoch the pace of the epochs so far (their mean) re-plans the rest. In the first
    half of the run either way (a first epoch once ran at 0.70 s per step, the next at 0.46, and
    the run kept the 4 epochs the first had planned); past half only shorter, since a longer plan
    would raise an LR that has decayed along the last one. Measured: a first epoch at 0.36 s
    planned 24 epochs, the rest ran at 0.42 s, and the demo ended 63 s late."""
    import fieldpaint.steptimes as S
    import fieldpaint.train as T
    from fieldpaint.demo import epoch_seconds, epochs_for_budget, make_plan, train_stage

    plan, calls, remaining = make_plan(15, torch.device("cpu")), {}, {"s": 500.0}
    monkeypatch.setattr(S, "time_train_steps", lambda config, device: 0.4)
    monkeypatch.setattr(T, "train", lambda config, run_dir, progress, replan: calls.update(replan=replan))
    train_stage(plan, plan.conditional, tmp_path / "data.nc", tmp_path / "run", torch.device("cpu"), False,
                seconds_for=lambda step: remaining["s"])
    spe, eval_batches = plan.n_train // plan.batch_size, 6

    def epoch(step):  # wall seconds of one epoch at `step` s per step (no fixed overhead)
        return epoch_seconds(step, spe, eval_batches) - epoch_seconds(0.0, spe, eval_batches)

    def replanned(done, steps, left):  # the re-plan after `done` epochs at these step seconds
        remaining["s"] = left
        return calls["replan"](done, sum(epoch(s) for s in steps)).train.epochs

    def fits(done, step, left):
        return done + epochs_for_budget(left, step, spe, eval_batches, minimum=0)

    slow_start = replanned(1, [0.7], 500.0)
    assert slow_start == fits(1, 0.7, 500.0) == 14
    # epoch 2 of 14, in the first half: the faster pace (mean 0.5 s) buys the epochs it fits
    assert replanned(2, [0.7, 0.3], 470.0) == fits(2, 0.5, 470.0) == 19 > slow_start
    # epoch 12 of 19, past half: a slower pace shortens the run, a faster one does not lengthen it
    assert replanned(12, [0.5] * 12, 100.0) == fits(12, 0.5, 100.0) == 15
    assert replanned(12, [0.3] * 12, 200.0) == 15 < fits(12, 0.3, 200.0)


def test_a_spent_budget_replans_no_epochs_beyond_the_minimum(tmp_path, monkeypatch, capsys):
    """When the evaluation's estimate leaves no training time, the plan is the minimum and the
    first epoch's re-plan adds none (it once added the minimum again, 3 epochs where 2 were due)."""
    import fieldpaint.steptimes as S
    import fieldpaint.train as T
    from fieldpaint.demo import MIN_EPOCHS, make_plan, train_stage

    plan, calls = make_plan(15, torch.device("cpu")), {}
    monkeypatch.setattr(S, "time_train_steps", lambda config, device: 1.7)
    monkeypatch.setattr(T, "train", lambda config, run_dir, progress, replan: calls.update(config=config, replan=replan))
    train_stage(plan, plan.conditional, tmp_path / "data.nc", tmp_path / "run", torch.device("cpu"), False,
                seconds_for=lambda step: -440.0)  # what a 1.7 s step left in a measured 15-minute run
    assert "trains the minimum 2 epochs and the demo runs late" in capsys.readouterr().out
    assert calls["config"].train.epochs == MIN_EPOCHS == 2
    assert calls["replan"](1, 2.0 * 52).train.epochs == MIN_EPOCHS


def test_without_a_budget_the_plan_is_not_replanned(tmp_path, monkeypatch):
    import fieldpaint.steptimes as S
    import fieldpaint.train as T
    from fieldpaint.demo import make_plan, train_stage

    plan, calls = make_plan(15, torch.device("cpu"), quick=True), {}
    monkeypatch.setattr(S, "time_train_steps", lambda config, device: 0.01)
    monkeypatch.setattr(T, "train", lambda config, run_dir, progress, replan: calls.update(replan=replan))
    train_stage(plan, plan.unconditional, tmp_path / "data.nc", tmp_path / "run", torch.device("cpu"), False)
    assert calls["replan"] is None


def _training_flops(config) -> int:
    """Multiply-adds x 2 of one forward and backward of a single field, as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    from fieldpaint.train import build_training_model

    model = build_training_model(config, torch.device("cpu"), None).train()
    h, w = config.data.height, config.data.width
    x, cond, t = torch.randn(1, 2, h, w), torch.randn(1, 3, h, w), torch.tensor([500])
    with FlopCounterMode(display=False) as counter:
        model(x, t, cond=cond).square().mean().backward()
    return counter.get_total_flops()


def test_without_native_bf16_the_conditional_model_is_sized_for_fp32(tmp_path, monkeypatch):
    """A CPU without AVX512-BF16 or AMX runs the bf16 plan's model at its peak fp32 arithmetic and
    still 4x slower (1.7 s a step on 2 AVX2 cores, against 0.40 in bf16 on AMX), so its plan trains
    a model of at most 30 % of the multiply-adds per step (measured: 40 of 158 GFLOP): its 0.51 s
    step is then within 1.3x of the bf16 plan's. The plan follows runtime.bf16_native unless told."""
    import fieldpaint.runtime as R
    from fieldpaint.demo import demo_config, make_plan

    cpu = torch.device("cpu")
    fp32, bf16 = make_plan(15, cpu, bf16=False), make_plan(15, cpu, bf16=True)
    small, large = (demo_config(p, p.conditional, tmp_path / "d.nc", 10, 50, "cpu") for p in (fp32, bf16))
    assert (small.model.channels, small.model.num_res_blocks) == ((16, 32, 64), 2)
    assert (large.model.channels, large.model.num_res_blocks) == ((32, 64, 128), 2)
    assert _training_flops(small) <= 0.3 * _training_flops(large)
    assert fp32.eval_fields == bf16.eval_fields == 24
    # The same unconditional model; on fp32 both samplers take half the steps per test field (members
    # x steps: conditional 6 x 10 and MMPS 2 x 10 against 10 x 10 and 3 x 20), and the training
    # data is halved (800 snapshots, generated in 60-95 s rather than 160-188 s).
    assert (fp32.unconditional.preset, fp32.unconditional.channels) == (bf16.unconditional.preset,
                                                                       bf16.unconditional.channels)

    def sampling_steps(p):
        return sum(m.samples * m.steps for m in (p.conditional, p.unconditional))

    assert sampling_steps(fp32) == 0.5 * sampling_steps(bf16) == 80
    assert (fp32.n_train, fp32.batch_size, bf16.n_train, bf16.batch_size) == (800, 16, 1600, 32)
    for native in (False, True):
        monkeypatch.setattr(R, "bf16_native", lambda device, native=native: (native, "told"))
        assert make_plan(15, cpu) == (bf16 if native else fp32)


def test_a_bf16_machine_too_slow_for_the_large_model_trains_the_small_one():
    """BF16_CPU's model only where its budget buys LARGE_MIN_STEPS steps (LARGE_MIN_EPOCHS epochs of the
    15-minute plan's data). Measured at a slow hour on
    2 AMX cores: data and the unconditional model 257 s, the large model's probe 0.77 s a step; the
    model got 2 epochs and lost to kriging at random 90 % hidden. With the kriging scored first
    (~100 s more elapsed) and the validation fields sampled once per frame candidate (fixed and x),
    that hour leaves 852 - 357 - 437 s of diffusion evaluation = 58 s, one epoch of 41 s; a normal
    hour (139 + 60 s, 0.40 s) leaves 852 - 199 - 241 = 412 s, 18 epochs of 21.8 s."""
    from fieldpaint.demo import (FP32_CPU, LARGE_MIN_EPOCHS, LARGE_MIN_STEPS, SLOW_BF16_CPU, conditional_seconds,
                                 cpu_plan, diffusion_eval_seconds, epoch_seconds, epochs_for_budget, fit_to_pace,
                                 make_plan)

    plan = make_plan(15, torch.device("cpu"), bf16=True)
    spe, eval_batches = 50, 6

    def large_epochs(elapsed, step):  # closed form of the budget rule (conditional_seconds)
        left = 900 - (30 + 0.02 * 900) - elapsed - diffusion_eval_seconds(plan, step)
        return int(left / epoch_seconds(step, spe, eval_batches))

    assert (large_epochs(357, 0.77), large_epochs(199, 0.40)) == (1, 18)
    assert fit_to_pace(plan, 15, 199, 0.40) == (plan, None)
    slow, why = fit_to_pace(plan, 15, 357, 0.77)
    assert why == ("[16, 32, 64]: the [32, 64, 128] model ran at 0.77 s a step, which leaves it 1 epochs, 50 steps "
                   "(fewer than 500)")
    assert slow.conditional.channels == SLOW_BF16_CPU.widths == (16, 32, 64)
    assert (slow.n_train, slow.batch_size, slow.eval_fields) == (plan.n_train, 16, plan.eval_fields)  # the data made
    assert (slow.conditional.samples, slow.unconditional.samples, slow.unconditional.steps) == (6, 2, 10)
    assert diffusion_eval_seconds(slow, 0.25) == diffusion_eval_seconds(cpu_plan(15, FP32_CPU), 0.25)  # its samplers
    # The threshold itself: the slowest step that still buys LARGE_MIN_EPOCHS keeps the large model.
    steps = [s / 1000 for s in range(300, 800)]
    edge = max(s for s in steps if large_epochs(199, s) >= LARGE_MIN_EPOCHS)
    assert fit_to_pace(plan, 15, 199, edge)[1] is None and fit_to_pace(plan, 15, 199, edge + 0.001)[1] is not None
    # The hour's run: 4x the data, so 10 epochs at 0.83 s a step (measured with model.wrap xy: data,
    # unconditional model and kriging 754 s) are 2,000 steps, more than 10 epochs of the 15-minute data.
    hour = make_plan(60, torch.device("cpu"), bf16=True)
    assert epochs_for_budget(conditional_seconds(3600, 754, 0.83, hour), 0.83, 200, 6, minimum=0) == 10
    assert fit_to_pace(hour, 60, 754, 0.83) == (hour, None)
    assert LARGE_MIN_STEPS == LARGE_MIN_EPOCHS * 50
    # The unconditional model's minutes are 9 % of the budget's, at 15 minutes as at 60.
    assert (plan.unconditional.minutes, hour.unconditional.minutes) == pytest.approx((15 * 0.09, 60 * 0.09))
    # A conditional run already begun keeps its widths, whatever the pace now.
    assert fit_to_pace(plan, 15, 0, None, (32, 64, 128)) == (plan, None)
    assert fit_to_pace(plan, 15, 0, None, (16, 32, 64))[0] == slow


def test_the_demo_evaluates_the_small_model_with_its_own_samplers(tmp_path, monkeypatch):
    """run_demo hands the downsized plan to the conditional stage and to the evaluation (members,
    MMPS steps) and says why in the report's header."""
    import fieldpaint.demo as D
    import fieldpaint.evaluate as E
    import fieldpaint.runs as R
    import fieldpaint.runtime as RT

    out = tmp_path / "demo"
    (out / "data").mkdir(parents=True)
    (out / "data" / "kolmogorov.nc").write_bytes(b"")  # generated already: the stage is skipped
    trained, evaluated = [], {}
    monkeypatch.setattr(RT, "bf16_native", lambda device: (True, "told"))
    monkeypatch.setattr(D, "_conditional_probe", lambda plan, run_dir, data_path, device: (5.0, None))
    order = []
    monkeypatch.setattr(D, "train_stage", lambda plan, model, *a, **k: order.append("train")
                        or trained.append((model, a[-1] if a else None)))
    monkeypatch.setattr(R, "load_run", lambda run: run)
    monkeypatch.setattr(E, "evaluate_and_report", lambda out, **k: order.append((tuple(k["methods"]), k.get("report", True)))
                        or evaluated.update(k) or out / "report.md")
    D.run_demo(out, minutes=15, progress=False)
    # the kriging is scored (no report) before the conditional model trains; the last call resumes it
    kriging = ("gp", "gp-dataset", "linear")
    assert order == ["train", (kriging, False), "train", (kriging + ("mmps", "conditional-dpm"), True)]
    assert evaluated["resume"] is True
    assert [m.channels for m, _ in trained] == [(16, 32, 64), (16, 32, 64)]  # unconditional, then the small conditional
    assert trained[1][1] is None  # the large model's probe does not time the small one
    assert evaluated["per_method"]["conditional-dpm"]["samples"] == 6
    assert evaluated["per_method"]["mmps"] == {"steps": 10, "samples": 2, "cg_iterations": 3}
    assert "the [32, 64, 128] model ran at 5.00 s a step" in evaluated["header"]["conditional model"]
    # the members' frames are chosen among the fixed one and rolls along x (the box's forcing varies along y)
    assert evaluated["frame_axes"] == ("x",)

"""Which sampling step a conditional model's mean is taken from: chosen per group on training fields.

The average of K posterior samples carries their Monte-Carlo error (a variance of σ²/K per pixel on
top of the posterior's σ²). The denoiser's x̂_0 at an intermediate step estimates E[x_0 | x_t, y];
averaged over the members' x_t it estimates E[x_0 | y] with part of that error integrated out (a
Rao-Blackwellised mean), but through a network that is less accurate at high noise. Which step
balances the two depends on the model, the mask family, the coverage and K, so, like the reference
kriging (fieldpaint.reference), it is chosen per (mask family, coverage): the step with the lowest
geometric-mean MSE on validation cases drawn from the train split, with the same masks and member
count as the test. Test scores never take part. Step S, the last, is the members' own average, so the
choice can only fall back to it, never below it on the validation cases.

On periodic data the members can also be drawn in frames rolled along a periodic axis
(DiffusionReconstructor's `frames`): the network's borders, across which it sees nothing, then lie
elsewhere for each member. Whether that helps depends on whether the field's statistics are the same
everywhere along the axis (the Kolmogorov flow's are along x, not along y, where the forcing is a
sine), so the frames are chosen with the step: per group, the (frames, step) pair with the lowest
validation error, the fixed frame first, so a tie keeps it.

The same validation run calibrates the members' spread: a model trained for minutes draws members
more diverse (or less) than its posterior, so their std misstates the mean's error. The factor that
brings the validation cases' mean spread/skill to 1 (`spread_scale`) scales each member's deviation
from the members' average, and the std, on the test, the members recentred on the chosen mean
(member-by-member post-processing, DiffusionReconstructor's `scaled_spread`), so that their CRPS
scores the ensemble the reported mean and std describe; it costs no network evaluation.
"""

from __future__ import annotations

import numpy as np

from fieldpaint.data.fields import FieldSplit
from fieldpaint.errors import FieldpaintError
from fieldpaint.evaluate import draw_case_masks
from fieldpaint.metrics import mse, scored_pixels
from fieldpaint.reconstruct import Reconstructor
from fieldpaint.reference import VALIDATION_SEED, geometric_mean


def step_errors(method, fields: FieldSplit, masks, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """((S, n), (n,)): the MSE of every sampling step's mean (`DiffusionReconstructor.step_means`)
    on each case's hidden valid pixels, and the members' RMS std there; NaN for a case with none."""
    rec, means = method.step_means(fields.x * masks, masks, fields.valid, samples=samples, seed=seed)
    means, truth, std = means.double().numpy(), fields.x.double().numpy(), rec.std.double().numpy()
    errors, spreads = np.full(means.shape[:2], np.nan), np.full(len(fields), np.nan)
    for i in range(len(fields)):
        scored = scored_pixels(masks[i].numpy(), fields.valid[i].numpy())
        if scored.any():
            errors[:, i] = [mse(step[i], truth[i], scored) for step in means]
            spreads[i] = np.sqrt(np.mean(std[i][:, scored] ** 2))
    return errors, spreads


def spread_scale(errors: np.ndarray, spreads: np.ndarray, members: int | None = None) -> float:
    """The factor on the members' spread that brings the validation cases' mean spread/skill (the
    report's statistic, fieldpaint.metrics.spread_skill: RMS spread / RMSE of the mean, per case) to
    1, from the chosen mean's (n,) MSEs and the members' (n,) RMS spreads; `members`: K when the mean
    is the members' own average, whose spread/skill carries the sqrt((K + 1) / K) correction. A
    case with an exact mean or no spread is left out; 1.0 when none is left."""
    correction = np.sqrt((members + 1) / members) if members is not None and members > 1 else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = spreads * correction / np.sqrt(errors)
    ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
    return float(1.0 / np.mean(ratios)) if len(ratios) else 1.0


def best_step(errors: np.ndarray) -> tuple[int, list[float]]:
    """(the 1-based step with the lowest geometric-mean MSE over cases, every step's), from (S, n)
    errors; a tie goes to the later step (the last is the members' average). A case with nothing to
    score (NaN at every step) is left out; a non-finite error elsewhere rules its step out."""
    scoreable = ~np.isnan(errors).all(axis=0)
    scores = [geometric_mean(e[scoreable]) for e in errors]
    best = min(range(len(scores)), key=lambda s: (scores[s], -s))
    return best + 1, scores


FRAME_AXES = ("x", "y")  # the axes a candidate frame rolls the members along


def frame_candidates(periodic: tuple[bool, bool], axes: str | tuple[str, ...] = "auto") -> tuple[str, ...]:
    """The members' frames to choose among for data periodic along (y, x): fixed, and each periodic
    axis alone ('auto'), or each of `axes` (() for the fixed frame alone). An axis along which the
    data is not periodic is an error: a roll there would join the field's opposite edges."""
    along = {"x": periodic[1], "y": periodic[0]}
    if axes == "auto":
        return ("fixed",) + tuple(a for a in FRAME_AXES if along[a])
    for axis in axes:
        if axis not in along:
            raise FieldpaintError(f"frame candidate {axis!r}: expected one of {', '.join(FRAME_AXES)}")
        if not along[axis]:
            raise FieldpaintError(f"frame candidate {axis!r}: the data is not periodic along {axis}")
    return ("fixed",) + tuple(a for a in FRAME_AXES if a in axes)


def choose_mean_steps(methods: dict[str, tuple[object, int]], validation: FieldSplit, families: list[str],
                      coverages: list[float], *, seed: int = 0,
                      frames: tuple[str, ...] = ("fixed",)) -> dict[tuple[str, float], dict[str, dict]]:
    """For each (family, coverage) and each method label: the chosen frames and step, and every step's
    validation geometric-mean MSE in those frames.

    methods: label -> (a conditional DiffusionReconstructor on the validation fields' grid, its members);
    frames: the candidates (`frame_candidates`), the first kept on a tie.
    Returns {(family, coverage): {label: {"chosen": step, "steps": S, "frames": f, "validation_gmean_mse":
    [...], "frames_validation_gmean_mse": {f: best step's}, "fields": n}}}; chosen == S means the
    members' average.
    """
    choices: dict[tuple[str, float], dict[str, dict]] = {}
    for family in families:
        for coverage in coverages:
            masks = draw_case_masks(validation, family, coverage, seed + VALIDATION_SEED)
            group = {}
            for label, (method, samples) in methods.items():
                runs = {f: step_errors(method.with_frames(f), validation, masks, samples, seed + VALIDATION_SEED)
                        for f in frames}
                tried = {f: best_step(errors) for f, (errors, _) in runs.items()}
                best = min(frames, key=lambda f: tried[f][1][tried[f][0] - 1])  # min keeps the first of equals
                chosen, scores = tried[best]
                errors, spreads = runs[best]
                group[label] = {"chosen": chosen, "steps": len(scores), "frames": best,
                                "spread_scale": spread_scale(errors[chosen - 1], spreads,
                                                             samples if chosen == len(scores) else None),
                                "symmetric_frames": max(1, len(getattr(method, "symmetries", ()))),
                                "validation_gmean_mse": scores,
                                "frames_validation_gmean_mse": {f: s[c - 1] for f, (c, s) in tried.items()},
                                "fields": len(validation)}
            choices[(family, coverage)] = group
    return choices


def with_symmetric_frames(methods: dict[str, Reconstructor], symmetries, grid: tuple[int, int]
                          ) -> tuple[dict[str, Reconstructor], list[str], tuple]:
    """`methods` with every diffusion method on `grid` (the data's, so the symmetries' pixels are its)
    drawing member k in the frame of symmetries[k mod their number] (DiffusionReconstructor's
    `with_symmetries`), the labels of those methods and the symmetries; unchanged with the identity
    alone. `symmetries()` gives them, called only when a diffusion method is on that grid (a
    baselines-only evaluation never reads the declaration)."""
    from fieldpaint.reconstruct import innermost, on_innermost

    changed = [label for label, m in methods.items() if hasattr(innermost(m), "with_symmetries")
               and (innermost(m).config.data.height, innermost(m).config.data.width) == tuple(grid)]
    frames = symmetries() if changed else ()
    if len(frames) < 2:
        return methods, [], ()
    return {label: on_innermost(m, lambda core: core.with_symmetries(frames)) if label in changed else m
            for label, m in methods.items()}, changed, frames


def conditional_cores(methods: dict[str, Reconstructor]) -> dict[str, Reconstructor]:
    """label -> the DiffusionReconstructor inside, for the conditional methods among `methods`."""
    from fieldpaint.diffusion.reconstructor import CONDITIONAL
    from fieldpaint.reconstruct import innermost

    cores = {label: innermost(m) for label, m in methods.items()}
    return {label: core for label, core in cores.items() if getattr(core, "method", None) in CONDITIONAL}


def check_fixed_mean_step(methods: dict[str, Reconstructor], mean_step: str | int) -> None:
    """A one-line error for a --mean-step that no evaluated method can take."""
    from fieldpaint.diffusion.reconstructor import check_mean_step

    if mean_step in ("auto", "members"):
        return
    if isinstance(mean_step, str):
        raise FieldpaintError(f"mean step must be auto, members or a sampling step, got {mean_step!r}")
    cores = conditional_cores(methods)
    if not cores:
        raise FieldpaintError(f"--mean-step {mean_step} applies to conditional methods (conditional, "
                              "conditional-dpm), and none is evaluated")
    for core in cores.values():
        check_mean_step(mean_step, core.method, core.steps)


def mean_steps_for(methods: dict[str, Reconstructor], mean_step: str | int, validation: FieldSplit,
                   families: list[str], coverages: list[float], *, samples: int, seed: int,
                   periodic: tuple[bool, bool] = (False, False), frame_axes: str | tuple[str, ...] = "auto"
                   ) -> dict[tuple[str, float], dict[str, dict]]:
    """Per group, the sampling step each conditional method's mean is taken from (see evaluate's
    `mean_steps`): chosen on the validation cases ('auto', with the members' frames among those the
    data's periodic axes allow, or those of `frame_axes`: `frame_candidates`), the members' average
    ('members', an empty choice) or one given step (both in the fixed frame). A model whose grid is
    not the validation fields' keeps its members' average under 'auto'."""
    from fieldpaint.reconstruct import member_count

    check_fixed_mean_step(methods, mean_step)
    conditional = conditional_cores(methods)
    if mean_step == "members" or not conditional:
        return {}
    if mean_step != "auto":
        return {(f, c): {label: {"chosen": mean_step, "steps": core.steps} for label, core in conditional.items()}
                for f in families for c in coverages}
    grid = tuple(validation.x.shape[-2:])
    chooseable = {label: (core, member_count(methods[label], samples)) for label, core in conditional.items()
                  if (core.config.data.height, core.config.data.width) == grid}
    if not chooseable:
        return {}
    return choose_mean_steps(chooseable, validation, families, coverages, seed=seed,
                             frames=frame_candidates(periodic, frame_axes))

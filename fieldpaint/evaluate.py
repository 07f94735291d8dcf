"""The evaluation harness: cases x methods -> a table of scores, summaries against kriging, a report.

A case is (field, mask family, coverage, seed); the same cases, masks included, go to every
method. Cases are processed in groups of one (family, coverage), each group's rows appended to
`cases.csv` as soon as they are scored, so an interrupted evaluation loses nothing and
`--resume` skips the groups already done.

The reference every ratio is taken against is `kriging`: for each (mask family, coverage) the
kriging variant with the lowest error on validation cases drawn from the *training* split
(fieldpaint.reference), never chosen by test scores. Its rows in `cases.csv` repeat those of the
chosen variant, whose name they carry in `reference_variant`.

A conditional method's mean may come from an intermediate sampling step (a Rao-Blackwellised
mean, fieldpaint.mean_step); that step, too, is chosen per group on the same validation cases,
recorded in mean_step.json and in each case's `mean_step` column (empty: the members' average),
and with it, on periodic data, whether the members are drawn in frames rolled along a periodic axis,
and the factor on the members' spread that calibrates it there (mean_step.spread_scale).
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fieldpaint.atomic import check_folder_writable, write_atomic, write_text_atomic
from fieldpaint.data.fields import FieldSplit, FieldStats
from fieldpaint.data.masks import make_masks
from fieldpaint.errors import FieldpaintError
from fieldpaint.metrics import crps, mae, mse, radial_spectrum, scored_pixels, spectrum_error, spread_skill
from fieldpaint.reconstruct import Reconstruction, Reconstructor

REFERENCE = "kriging"  # the strongest kriging variant, chosen per group on training fields
REFERENCE_CANDIDATES = ("gp", "gp-dataset")  # the kriging variants it is chosen from (--reference auto)
OUTPUTS = ("cases.csv", "summary.csv", "summary.json", "reference.json", "mean_step.json", "report.md")


def case_seed(base: int, index: int, family: str, coverage: float) -> int:
    """One mask seed per (field, family, coverage), independent of which methods run."""
    return zlib.crc32(f"{base}:{index}:{family}:{coverage:.6f}".encode())


def draw_case_masks(fields: FieldSplit, family: str, coverage: float, seed: int) -> torch.Tensor:
    masks = [make_masks(family, coverage, 1, *fields.x.shape[-2:], valid=fields.valid[i, 0].numpy() > 0.5,
                        seed=case_seed(seed, int(fields.index[i]), family, coverage)) for i in range(len(fields))]
    return torch.from_numpy(np.concatenate(masks)).float()


def score(truth: np.ndarray, rec_mean: np.ndarray, rec_std: np.ndarray, members: np.ndarray | None,
          mask: np.ndarray, valid: np.ndarray, stats: FieldStats, mean_of_members: bool = True) -> dict:
    """All scores of one case; fields (C, H, W) normalised; physical-unit MSE via the channel stds.

    mean_of_members: whether the mean is the members' average, whose K-member error spread/skill
    corrects for; a mean from an intermediate step (Rao-Blackwellised) has most of it integrated out
    and is compared with the members' spread uncorrected."""
    scored = scored_pixels(mask, valid)
    if not scored.any():
        return {}
    err = rec_mean[:, scored] - truth[:, scored]  # (C, n) normalised
    scale = np.asarray(stats.std, dtype=np.float64)
    land = valid.reshape(valid.shape[-2:]) < 0.5
    filled = np.where(land, 0.0, rec_mean), np.where(land, 0.0, truth)
    return {
        "mse": mse(rec_mean, truth, scored),
        "mae": mae(rec_mean, truth, scored),
        "mse_physical": float(np.mean((err * scale[:, None]) ** 2)),
        "mae_physical": float(np.mean(np.abs(err) * scale[:, None])),
        "crps": crps(truth, scored, mean=rec_mean, std=rec_std, members=members),
        "spread_skill": spread_skill(rec_mean, rec_std, truth, scored,
                                     members=members.shape[0] if members is not None and mean_of_members else None),
        "spectrum_error": spectrum_error(*filled),
        "observed_max_error": float(np.abs(rec_mean - truth)[:, (mask.reshape(scored.shape) > 0.5)].max(initial=0.0)),
    }


def group_file(out: Path, family: str, coverage: float) -> Path:
    return out / "groups" / f"{family}_{coverage:.4f}.npz"


def save_group_outputs(path: Path, fields: FieldSplit, masks: torch.Tensor,
                       outputs: dict[str, Reconstruction]) -> None:
    """Keep what the report draws: the first field's reconstructions and every method's mean spectrum."""
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = dict(np.load(path)) if path.exists() else {}
    land = fields.valid < 0.5
    truth = fields.x.masked_fill(land, 0.0).double().numpy()
    saved.update(truth=truth[0], mask=masks[0].numpy(), valid=fields.valid[0].numpy(),
                 spectrum_truth=np.mean([radial_spectrum(f) for f in truth], axis=0))
    for name, rec in outputs.items():
        mean = rec.mean.cpu().masked_fill(land, 0.0).double().numpy()
        saved[f"mean/{name}"] = mean[0]
        saved[f"std/{name}"] = rec.std[0].cpu().double().numpy()
        saved[f"spectrum/{name}"] = np.mean([radial_spectrum(f) for f in mean], axis=0)
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would add ".npz" to a temporary's name
            np.savez_compressed(f, **saved)

    write_atomic(path, write, overwrite=True)


def run_group(methods: dict[str, Reconstructor], fields: FieldSplit, stats: FieldStats, family: str,
              coverage: float, *, samples: int, seed: int, out: Path | None = None,
              reference: str | None = None) -> list[dict]:
    """Every method on the cases of one (family, coverage): one row per case and method.

    reference: the method whose rows are repeated under the name `kriging` (the group's reference).
    """
    masks = draw_case_masks(fields, family, coverage, seed)
    obs = fields.x * masks
    rows, outputs = [], {}
    for name, method in methods.items():
        started = time.perf_counter()
        rec: Reconstruction = method.reconstruct(obs, masks, fields.valid, samples=samples, seed=seed)
        outputs[name] = rec
        seconds = (rec.seconds or time.perf_counter() - started) / len(fields)
        mean, std = rec.mean.cpu().double().numpy(), rec.std.cpu().double().numpy()
        members = None if rec.members is None else rec.members.cpu().double().numpy()
        for i in range(len(fields)):
            scores = score(fields.x[i].double().numpy(), mean[i], std[i], None if members is None else members[i],
                           masks[i].numpy(), fields.valid[i].numpy(), stats, mean_of_members=rec.mean_step is None)
            rows.append({"method": name, "mask": family, "coverage": coverage, "field": int(fields.index[i]),
                         "seed": case_seed(seed, int(fields.index[i]), family, coverage),
                         "nfe": rec.nfe, "members": 0 if rec.members is None else int(rec.members.shape[1]),
                         "mean_step": rec.mean_step, "seconds": seconds, **scores})
    if reference is not None:
        if reference not in methods:
            raise FieldpaintError(f"the reference {reference!r} was not evaluated")
        rows += [{**r, "method": REFERENCE, "reference_variant": reference} for r in rows if r["method"] == reference]
    if out is not None:
        save_group_outputs(group_file(out, family, coverage), fields, masks, outputs)
    return rows


def check_output_folder(out: Path, resume: bool) -> None:
    """An evaluation never writes over another one: without --resume, `out` must hold none of our files."""
    if out.exists() and not out.is_dir():
        raise FieldpaintError(f"{out} is a file, not a folder")
    check_folder_writable(out)
    held = [name for name in OUTPUTS if (out / name).exists()]
    if held and not resume:
        raise FieldpaintError(f"{out} already holds an evaluation ({', '.join(held)}); pass --resume to continue "
                              "it or choose another --out")
    if resume and (out / "report.md").exists() and not (out / "cases.csv").exists():
        raise FieldpaintError(f"{out} holds a report but no cases.csv: nothing to resume; choose another --out")


def evaluate(methods: dict[str, Reconstructor], fields: FieldSplit, stats: FieldStats, families: list[str],
             coverages: list[float], out: Path, *, samples: int = 8, seed: int = 0, resume: bool = False,
             progress: bool = True, references: dict[tuple[str, float], dict] | None = None,
             mean_steps: dict[tuple[str, float], dict[str, dict]] | None = None) -> pd.DataFrame:
    """Score every method on every case; write cases.csv, summary.csv, summary.json and, with
    `references`, reference.json into `out`.

    references: per (family, coverage), the choice of reference (fieldpaint.reference.choose_references):
    {"chosen": method name, ...}; its rows are repeated as `kriging`.
    mean_steps: per (family, coverage), {method label: {"chosen": step, ...}} (fieldpaint.mean_step):
    the sampling step that method's mean is taken from in that group and its members' frames
    ("frames", default fixed); written to mean_step.json.
    """
    from fieldpaint.reconstruct import with_mean_step
    from fieldpaint.summary import crossover, summarize

    check_output_folder(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    if references:
        write_text_atomic(out / "reference.json", json.dumps(
            [{"mask": f, "coverage": c, **choice} for (f, c), choice in references.items()], indent=2,
            default=_json_default) + "\n", overwrite=True)
    if mean_steps:
        write_text_atomic(out / "mean_step.json", json.dumps(
            [{"mask": f, "coverage": c, "method": label, **choice} for (f, c), group in mean_steps.items()
             for label, choice in group.items()], indent=2, default=_json_default) + "\n", overwrite=True)
    elif (out / "mean_step.json").exists():  # a resumed evaluation that now takes the members' average
        (out / "mean_step.json").unlink()
    cases_path = out / "cases.csv"
    done = pd.read_csv(cases_path) if resume and cases_path.exists() else pd.DataFrame()
    finished = set() if done.empty else {(m, f, round(c, 6)) for m, f, c in
                                         done[["method", "mask", "coverage"]].itertuples(index=False)}
    groups = [(f, c) for f in families for c in coverages]
    bar = tqdm(groups, desc="evaluating", unit="group", disable=not progress)
    for family, coverage in bar:
        reference = (references or {}).get((family, coverage), {}).get("chosen")
        steps = (mean_steps or {}).get((family, coverage), {})
        def method(n: str) -> Reconstructor:
            if n not in steps:
                return methods[n]
            return with_mean_step(methods[n], steps[n]["chosen"], steps[n].get("frames", "fixed"),
                                  steps[n].get("spread_scale"))

        todo = {n: method(n) for n in methods if (n, family, round(coverage, 6)) not in finished}
        if reference is not None and (REFERENCE, family, round(coverage, 6)) not in finished:
            todo[reference] = method(reference)  # the reference rows are written with the group
        bar.set_postfix(mask=family, coverage=coverage)
        if not todo:
            continue
        rows = run_group(todo, fields, stats, family, coverage, samples=samples, seed=seed, out=out,
                         reference=reference if reference in todo else None)  # else its rows are done
        rows = [r for r in rows if (r["method"], family, round(coverage, 6)) not in finished]
        _append_rows(cases_path, rows)
    cases = pd.read_csv(cases_path)
    reference = REFERENCE if (cases["method"] == REFERENCE).any() else "gp"
    summary = summarize(cases, reference=reference)
    write_atomic(out / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False), overwrite=True)
    write_text_atomic(out / "summary.json", json.dumps({
        "groups": summary.to_dict(orient="records"), "crossover": crossover(summary),
        "fields": int(len(fields)), "samples": samples, "seed": seed, "reference": reference,
    }, indent=2, default=_json_default) + "\n", overwrite=True)
    return cases


def _append_rows(path: Path, rows: list[dict]) -> None:
    """Append a group's rows to cases.csv, atomically: the file always holds whole groups."""
    frame = pd.DataFrame(rows)
    if path.exists():
        frame = pd.concat([pd.read_csv(path), frame], ignore_index=True)
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False), overwrite=True)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return str(value)


# ----------------------------------------------------------------------------------------------
# the whole job: fields and methods from runs or a data file, the reference, cases, the report


def load_fields(runs: list, data_path: str | None, variables: list[str] | None, split: str, n: int):
    """(fields to score, the train split, the statistics, the data config) for an evaluation.

    With runs, their data and statistics (every run must share them); without, a data file alone
    (baselines only), normalised with its own train split's statistics.
    """
    from fieldpaint.config import DataConfig
    from fieldpaint.data.fields import FieldDataset, file_variables

    if runs:
        data, stats = runs[0].config.data, runs[0].stats
        for run in runs[1:]:
            if (run.config.data.path, run.config.data.variables) != (data.path, data.variables):
                raise FieldpaintError(f"run {run.path} was trained on other data ({run.config.data.path}, "
                                      f"{list(run.config.data.variables)}) than {runs[0].path} "
                                      f"({data.path}, {list(data.variables)})")
        path = data_path or data.path
    elif data_path:
        data = DataConfig(path=data_path, variables=tuple(variables or file_variables(data_path)))
        stats, path = None, data_path
    else:
        raise FieldpaintError("evaluate needs at least one --run, or --data FILE for the baselines alone")
    options = dict(sample_dim=data.sample_dim, y_dim=data.y_dim, x_dim=data.x_dim, test_fraction=data.test_fraction)
    train_set = FieldDataset(path, data.variables, "train", stats=stats, **options)
    stats = train_set.stats
    train = train_set.fields()
    scored = train.first(n) if split == "train" else \
        FieldDataset(path, data.variables, split, stats=stats, max_samples=n, **options).fields()
    return FieldSplit(scored.x.clone(), scored.valid.clone(), scored.index), train, stats, data, dict(train_set.attrs)


def build_methods(names: list[str], runs: list, baseline_data, *, sampler: dict, gp: dict, seed: int = 0,
                  per_method: dict[str, dict] | None = None,
                  candidates: tuple[str, ...] = REFERENCE_CANDIDATES,
                  done: set[str] | tuple = ()) -> dict[str, Reconstructor]:
    """Reconstructors for `names`; a diffusion method once per run whose model fits it (labelled
    RUN:method when there are several runs). The reference's candidates always run. `per_method`:
    options of one method, its sampler's (steps, cg_iterations, ...) or the GP's, and `samples`,
    its own member count instead of the evaluation's. A baseline in `done` (already scored) is
    not built: building the dataset kriging fits its kernel."""
    from fieldpaint.api import on_model_grid
    from fieldpaint.reconstruct import FixedMembers, build_reconstructor, check_method, fits

    wanted = [k for k in candidates if k not in names] + list(names)
    methods: dict[str, Reconstructor] = {}
    for name in wanted:
        own = (per_method or {}).get(name, {})
        if check_method(name).needs == "data":
            if name in done and name not in candidates:
                continue
            methods[name] = build_reconstructor(name, data=baseline_data, gp={**gp, **own}, seed=seed)
            continue
        fitting = [run for run in runs if fits(name, run.conditional)]
        if not fitting:
            raise FieldpaintError(f"no run can use method {name!r}: "
                                  f"{'a conditional' if fits(name, True) else 'an unconditional'} model is needed")
        own = dict(own)
        members = own.pop("samples", None)
        for run in fitting:
            label = name if len(runs) == 1 else f"{run.label}:{name}"
            built = build_reconstructor(name, run=run, sampler={**sampler, **own}, seed=seed)
            built = on_model_grid(built, run.config)  # pads (or tiles) to the model's grid
            methods[label] = built if members is None else FixedMembers(built, members)
    return methods


def evaluate_and_report(out: Path, *, runs: list, methods: list[str], families: list[str], coverages: list[float],
                        data_path: str | None = None, variables: list[str] | None = None, split: str = "test",
                        n: int = 100, samples: int = 8, seed: int = 0, sampler: dict | None = None,
                        gp: dict | None = None, per_method: dict[str, dict] | None = None,
                        reference: str = "auto", validation_fields: int = 16, mean_step: str | int = "auto",
                        frame_axes: str | tuple[str, ...] = "auto", resume: bool = False, progress: bool = True,
                        header: dict | None = None, report: bool = True) -> Path:
    """The whole evaluation into `out`: cases.csv, summary.*, reference.json, mean_step.json and
    report.md; returns the report's path (cases.csv's without `report`). `reference`: 'auto' (chosen
    per group on training fields) or a method name. `mean_step`, for the conditional methods: 'auto'
    (chosen per group on the same validation cases), 'members' (the members' average) or one
    sampling step for every group; `frame_axes`, the axes the members' frames may be rolled along
    with it ('auto': every periodic axis; mean_step.frame_candidates). Resumed, it keeps the
    reference chosen before (reference.json) and skips the kriging already scored in every group:
    methods can be added to an evaluation without fitting its kriging again."""
    from fieldpaint.data.fields import periodic_axes
    from fieldpaint.data.symmetry import data_symmetries
    from fieldpaint.reconstruct import BaselineData
    from fieldpaint.mean_step import frame_candidates, mean_steps_for, with_symmetric_frames
    from fieldpaint.reference import choose_references, resumed_references, split_validation
    from fieldpaint.report import write_report

    out = Path(out)
    check_output_folder(out, resume)
    fields, train, stats, data, attrs = load_fields(runs, data_path, variables, split, n)
    validation, fit_fields = split_validation(train, validation_fields, seed)
    baseline = BaselineData(stats, attrs, load_train=lambda: fit_fields,
                            periodic=periodic_axes(getattr(data, "periodic", "auto"), attrs))
    frame_candidates(baseline.periodic, frame_axes)  # an axis the data does not wrap fails before any fit
    chosen = resumed_references(out, families, coverages, len(validation)) if resume and reference == "auto" else None
    # With a named reference only it (and what was asked for) runs: the per-field candidate's fits
    # are most of the kriging time at 64x128 (benchmarks/gp.py times the dataset kernel alone).
    # A resumed evaluation whose reference is chosen fits no kriging whose every group is scored
    # (the chosen variants still run while the reference's own rows are unfinished).
    candidates, done = REFERENCE_CANDIDATES if reference == "auto" else (reference,), set()
    if chosen:
        done = scored_methods(out, families, coverages)
        candidates = () if REFERENCE in done else tuple(sorted({c["chosen"] for c in chosen.values()}))
    built = build_methods(methods, runs, baseline, sampler=sampler or {}, gp=gp or {}, seed=seed,
                          per_method=per_method, candidates=candidates, done=done)
    grid = tuple(fields.x.shape[-2:])
    built, symmetric, symmetries = with_symmetric_frames(built, lambda: data_symmetries(
        getattr(data, "symmetries", "auto"), attrs, data.variables, baseline.periodic, grid, stats), grid)
    if symmetric:
        header = {**(header or {}), "symmetric frames": symmetric_frames_line(symmetries, symmetric)}
    steps = mean_steps_for(built, mean_step, validation, families, coverages, samples=samples, seed=seed,
                           periodic=baseline.periodic, frame_axes=frame_axes)
    if chosen:
        choices = chosen
    elif reference == "auto":
        candidates = {k: built[k] for k in REFERENCE_CANDIDATES if k in built}
        choices = choose_references(candidates, validation, families, coverages, seed=seed)
    elif reference in built:
        choices = {(f, c): {"chosen": reference, "validation_gmean_mse": {}, "fields": 0}
                   for f in families for c in coverages}
    else:
        raise FieldpaintError(f"--reference {reference!r} is not among the evaluated methods: {', '.join(built)}")
    if progress:
        tqdm.write(f"evaluating {', '.join(built)} on {len(fields)} {split} fields x {len(families)} mask "
                   f"families x {len(coverages)} coverages; reference: kriging chosen on {len(validation)} "
                   "training fields")
    evaluate(built, fields, stats, families, coverages, out, samples=samples, seed=seed, resume=resume,
             progress=progress, references=choices, mean_steps=steps)
    if not report:
        return out / "cases.csv"
    return write_report(out, stats, [run.path for run in runs], dict(header or {}), reference=REFERENCE)


def symmetric_frames_line(symmetries: tuple, labels: list[str]) -> str:
    """The report header's account of the symmetric frames the methods `labels` drew their members in."""
    described = "; ".join(s.describe() for s in symmetries[1:])
    return (f"{', '.join(labels)}: member k of K drawn in frame k mod {len(symmetries)} of the data's declared "
            f"symmetries (the identity; {described}) and mapped back")


def scored_methods(out: Path, families: list[str], coverages: list[float]) -> set[str]:
    """Methods whose rows in out/cases.csv cover every (family, coverage)."""
    path = out / "cases.csv"
    if not path.exists():
        return set()
    cases = pd.read_csv(path, usecols=["method", "mask", "coverage"])
    groups = {(f, round(c, 6)) for f in families for c in coverages}
    held = {}
    for method, family, coverage in cases.drop_duplicates().itertuples(index=False):
        held.setdefault(method, set()).add((family, round(float(coverage), 6)))
    return {m for m, g in held.items() if groups <= g}

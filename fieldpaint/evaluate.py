"""The evaluation harness: cases x methods -> a table of scores, summaries against GP, a report.

A case is (field, mask family, coverage, seed); the same cases, masks included, go to every
method. Cases are processed in groups of one (family, coverage), each group's rows appended to
`cases.csv` as soon as they are scored, so an interrupted evaluation loses nothing and
`--resume` skips the groups already done.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fieldpaint.config import Config, from_dict
from fieldpaint.data.fields import FieldDataset, FieldStats
from fieldpaint.data.masks import make_masks
from fieldpaint.errors import FieldpaintError
from fieldpaint.metrics import crps, mae, mse, scored_pixels, spectrum_error, spread_skill
from fieldpaint.reconstruct import Reconstruction, Reconstructor

BASELINES = ("gp", "gp-dataset", "gp-oracle", "nearest", "linear", "laplace")
DIFFUSION_METHODS = ("repaint", "ddnm", "conditional")
REFERENCE = "gp"  # every ratio and win is against the per-field fitted GP


@dataclass
class EvalSet:
    """The fields under evaluation, normalised with the (first) run's statistics."""

    x: torch.Tensor  # (N, C, H, W), 0 at never-valid pixels
    valid: torch.Tensor  # (N, 1, H, W)
    index: np.ndarray  # position of each field in the file
    stats: FieldStats
    attrs: dict
    config: Config
    runs: list[Path] = field(default_factory=list)


def case_seed(base: int, index: int, family: str, coverage: float) -> int:
    """One mask seed per (field, family, coverage), independent of which methods run."""
    return zlib.crc32(f"{base}:{index}:{family}:{coverage:.6f}".encode())


def draw_case_masks(data: EvalSet, family: str, coverage: float, seed: int) -> torch.Tensor:
    masks = [make_masks(family, coverage, 1, *data.x.shape[-2:], valid=data.valid[i, 0].numpy() > 0.5,
                        seed=case_seed(seed, int(data.index[i]), family, coverage)) for i in range(len(data.x))]
    return torch.from_numpy(np.concatenate(masks)).float()


def load_eval_set(runs: list[Path], split: str, n: int, data_path: str | None = None) -> EvalSet:
    """The first n fields of `split`, from the runs' dataset (all runs must share it)."""
    from fieldpaint.checkpoint import load_checkpoint, resolve_checkpoint

    if not runs:
        raise FieldpaintError("evaluate needs at least one --run")
    ckpts = [load_checkpoint(resolve_checkpoint(r)) for r in runs]
    configs = [from_dict(c.config) for c in ckpts]
    first = configs[0]
    for run, c in zip(runs[1:], configs[1:]):
        if (c.data.path, c.data.variables) != (first.data.path, first.data.variables):
            raise FieldpaintError(f"run {run} was trained on other data ({c.data.path}, {list(c.data.variables)}) "
                                  f"than {runs[0]} ({first.data.path}, {list(first.data.variables)})")
    d = first.data
    stats = FieldStats.from_dict(ckpts[0].stats)
    dataset = FieldDataset(data_path or d.path, d.variables, split, stats=stats, sample_dim=d.sample_dim,
                           y_dim=d.y_dim, x_dim=d.x_dim, test_fraction=d.test_fraction, max_samples=n,
                           expected_shape=(d.height, d.width))
    split = dataset.fields()
    return EvalSet(split.x.clone(), split.valid.clone(), split.index, stats, dict(dataset.attrs), first, runs)


def score(truth: np.ndarray, rec_mean: np.ndarray, rec_std: np.ndarray, members: np.ndarray | None,
          mask: np.ndarray, valid: np.ndarray, stats: FieldStats) -> dict:
    """All scores of one case; fields (C, H, W) normalised; physical-unit MSE via the channel stds."""
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
                                     members=None if members is None else members.shape[0]),
        "spectrum_error": spectrum_error(*filled),
        "observed_max_error": float(np.abs(rec_mean - truth)[:, (mask.reshape(scored.shape) > 0.5)].max(initial=0.0)),
    }


def group_file(out: Path, family: str, coverage: float) -> Path:
    return out / "groups" / f"{family}_{coverage:.4f}.npz"


def save_group_outputs(path: Path, data: EvalSet, masks: torch.Tensor, outputs: dict[str, Reconstruction]) -> None:
    """Keep what the report draws: the first field's reconstructions and every method's mean spectrum."""
    from fieldpaint.metrics import radial_spectrum

    path.parent.mkdir(parents=True, exist_ok=True)
    saved = dict(np.load(path)) if path.exists() else {}
    land = data.valid < 0.5
    truth = data.x.masked_fill(land, 0.0).double().numpy()
    saved.update(truth=truth[0], mask=masks[0].numpy(), valid=data.valid[0].numpy(),
                 spectrum_truth=np.mean([radial_spectrum(f) for f in truth], axis=0))
    for name, rec in outputs.items():
        mean = rec.mean.cpu().masked_fill(land, 0.0).double().numpy()
        saved[f"mean/{name}"] = mean[0]
        saved[f"std/{name}"] = rec.std[0].cpu().double().numpy()
        saved[f"spectrum/{name}"] = np.mean([radial_spectrum(f) for f in mean], axis=0)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **saved)
    tmp.replace(path)


def run_group(methods: dict[str, Reconstructor], data: EvalSet, family: str, coverage: float, *,
              samples: int, seed: int, out: Path | None = None) -> list[dict]:
    """Every method on the cases of one (family, coverage): one row per case and method."""
    masks = draw_case_masks(data, family, coverage, seed)
    obs = data.x * masks
    rows, outputs = [], {}
    for name, method in methods.items():
        started = time.perf_counter()
        rec: Reconstruction = method.reconstruct(obs, masks, data.valid, samples=samples, seed=seed)
        outputs[name] = rec
        seconds = (rec.seconds or time.perf_counter() - started) / len(data.x)
        mean, std = rec.mean.cpu().double().numpy(), rec.std.cpu().double().numpy()
        members = None if rec.members is None else rec.members.cpu().double().numpy()
        for i in range(len(data.x)):
            scores = score(data.x[i].double().numpy(), mean[i], std[i], None if members is None else members[i],
                           masks[i].numpy(), data.valid[i].numpy(), data.stats)
            rows.append({"method": name, "mask": family, "coverage": coverage, "field": int(data.index[i]),
                         "seed": case_seed(seed, int(data.index[i]), family, coverage),
                         "nfe": rec.nfe, "seconds": seconds, **scores})
    if out is not None:
        save_group_outputs(group_file(out, family, coverage), data, masks, outputs)
    return rows


def evaluate(methods: dict[str, Reconstructor], data: EvalSet, families: list[str], coverages: list[float],
             out: Path, *, samples: int = 8, seed: int = 0, resume: bool = False, progress: bool = True) -> pd.DataFrame:
    """Score every method on every case; write cases.csv, summary.csv and summary.json into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    cases_path = out / "cases.csv"
    done = pd.read_csv(cases_path) if resume and cases_path.exists() else pd.DataFrame()
    if not resume and cases_path.exists():
        raise FieldpaintError(f"{cases_path} already exists; pass --resume to continue it or choose another --out")
    finished = set() if done.empty else {(m, f, round(c, 6)) for m, f, c in
                                         done[["method", "mask", "coverage"]].itertuples(index=False)}
    groups = [(f, c) for f in families for c in coverages]
    bar = tqdm(groups, desc="evaluating", unit="group", disable=not progress)
    for family, coverage in bar:
        todo = {n: m for n, m in methods.items() if (n, family, round(coverage, 6)) not in finished}
        bar.set_postfix(mask=family, coverage=coverage)
        if not todo:
            continue
        rows = run_group(todo, data, family, coverage, samples=samples, seed=seed, out=out)
        frame = pd.DataFrame(rows)
        frame.to_csv(cases_path, mode="a", header=not cases_path.exists(), index=False)
    cases = pd.read_csv(cases_path)
    summary = summarize(cases)
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.json").write_text(json.dumps({
        "groups": summary.to_dict(orient="records"),
        "breakdown": breakdown_coverages(summary),
        "fields": int(len(data.x)), "samples": samples, "seed": seed, "reference": REFERENCE,
    }, indent=2, default=float) + "\n")
    return cases


# ----------------------------------------------------------------------------------------------
# summaries against the GP


def bootstrap_interval(values: np.ndarray, stat=np.mean, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` over cases (Efron & Tibshirani 1993, ch. 13)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = stat(values[rng.integers(0, len(values), size=(n_boot, len(values)))], axis=1)
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def summarize(cases: pd.DataFrame) -> pd.DataFrame:
    """Per (method, mask, coverage): MSE, wins and MSE ratio against the GP on the same cases."""
    keys = ["mask", "coverage", "field", "seed"]
    ref = cases[cases["method"] == REFERENCE][keys + ["mse"]].rename(columns={"mse": "mse_ref"})
    merged = cases.merge(ref, on=keys, how="left") if not ref.empty else cases.assign(mse_ref=np.nan)
    merged["ratio"] = merged["mse"] / merged["mse_ref"]
    rows = []
    for (method, mask, coverage), g in merged.groupby(["method", "mask", "coverage"], sort=True):
        ratio = g["ratio"].dropna().to_numpy()
        lo, hi = bootstrap_interval(ratio)
        rows.append({
            "method": method, "mask": mask, "coverage": coverage, "n": len(g),
            "mse_mean": g["mse"].mean(), "mse_median": g["mse"].median(),
            "mse_physical_mean": g["mse_physical"].mean(), "mae_mean": g["mae"].mean(),
            "mae_physical_mean": g["mae_physical"].mean(),
            "wins": int((g["mse"] < g["mse_ref"]).sum()), "compared": int(g["mse_ref"].notna().sum()),
            "ratio_mean": float(ratio.mean()) if len(ratio) else np.nan,
            "ratio_median": float(np.median(ratio)) if len(ratio) else np.nan,
            "ratio_ci_low": lo, "ratio_ci_high": hi,
            "crps_mean": g["crps"].mean(), "spread_skill_mean": g["spread_skill"].mean(),
            "spectrum_error_mean": g["spectrum_error"].mean(),
            "nfe": int(g["nfe"].iloc[0]), "seconds_per_field": g["seconds"].mean(),
        })
    return pd.DataFrame(rows)


def breakdown_coverages(summary: pd.DataFrame) -> list[dict]:
    """Per (method, mask): the lowest coverage at which the method stops beating the GP
    (median MSE ratio >= 1), or None when it wins at every coverage tried."""
    out = []
    for (method, mask), g in summary[summary["method"] != REFERENCE].groupby(["method", "mask"]):
        g = g.sort_values("coverage")
        losing = g[g["ratio_median"] >= 1.0]["coverage"]
        winning = g[g["ratio_median"] < 1.0]["coverage"]
        out.append({"method": method, "mask": mask,
                    "stops_beating_gp_at": None if losing.empty else float(losing.iloc[0]),
                    "beats_gp_at": [float(c) for c in winning]})
    return out


# ----------------------------------------------------------------------------------------------
# methods by name


def build_methods(names: list[str], data: EvalSet, *, sampler_options: dict, gp_options: dict,
                  seed: int = 0, per_method: dict[str, dict] | None = None) -> dict[str, Reconstructor]:
    """Reconstructors for `names`; diffusion methods once per run whose model they fit.

    `per_method` adds sampler options for one method, e.g. {"ddnm": {"steps": 50}}.
    The per-field GP is always included: it is the reference every ratio is taken against.
    """
    from fieldpaint.baselines import interp
    from fieldpaint.baselines.gp import GPReconstructor
    from fieldpaint.diffusion.reconstructor import load_reconstructor

    unknown = sorted(set(names) - set(BASELINES) - set(DIFFUSION_METHODS))
    if unknown:
        raise FieldpaintError(f"unknown method(s) {', '.join(unknown)}; known: "
                              f"{', '.join(BASELINES + DIFFUSION_METHODS)}")
    names = [REFERENCE] + [n for n in names if n != REFERENCE]
    methods: dict[str, Reconstructor] = {}
    for name in names:
        if name == "gp":
            methods[name] = GPReconstructor("per-field", **gp_options)
        elif name == "gp-dataset":
            methods[name] = _dataset_gp(data, gp_options, seed)
        elif name == "gp-oracle":
            if data.attrs.get("kernel") is None:
                raise FieldpaintError("gp-oracle needs a dataset made by `fieldpaint data generate grf` "
                                      "(its file records the true kernel); this one has none")
            methods[name] = GPReconstructor.from_attrs(data.attrs, data.stats)
        elif name in ("nearest", "linear", "laplace"):
            methods[name] = interp.InterpReconstructor(name)
        else:
            fitting = [r for r in data.runs if _fits(r, name)]
            if not fitting:
                raise FieldpaintError(f"no run can use method {name!r}: repaint/ddnm need an unconditional "
                                      "model, conditional a concat/FiLM one")
            for run in fitting:
                label = name if len(data.runs) == 1 else f"{run.name}:{name}"
                options = {**sampler_options, **(per_method or {}).get(name, {})}
                methods[label] = load_reconstructor(run, name, **options)[0]
    return methods


def _fits(run: Path, method: str) -> bool:
    from fieldpaint.checkpoint import load_checkpoint, resolve_checkpoint

    conditioning = load_checkpoint(resolve_checkpoint(run)).config["model"]["conditioning"]
    return (conditioning == "none") == (method in ("repaint", "ddnm"))


def _dataset_gp(data: EvalSet, gp_options: dict, seed: int):
    """One kernel per channel fitted on training fields: the information the diffusion model had."""
    from fieldpaint.baselines.gp import GPReconstructor

    d = data.config.data
    train = FieldDataset(d.path, d.variables, "train", stats=data.stats, sample_dim=d.sample_dim, y_dim=d.y_dim,
                         x_dim=d.x_dim, test_fraction=d.test_fraction, max_samples=8,
                         expected_shape=(d.height, d.width))
    split = train.fields()
    x, valid = split.x, split.valid
    gp = GPReconstructor("dataset", **gp_options)
    gp.fit_dataset(x, valid, 0.8, seed=seed)
    return gp

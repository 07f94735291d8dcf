"""Which kriging is the reference: chosen per (mask family, coverage) on training fields only.

A comparison is only as honest as its reference. The diffusion models learned from the training
split, so the reference kriging may use it too (a kernel fitted on training fields, the
training-mean field as a trend), and among the kriging variants the one with the lowest error on
*validation cases drawn from the train split* becomes the reference of that group. Test scores
never take part in the choice. The validation fields are held out of the dataset-kernel fit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fieldpaint.data.fields import FieldSplit
from fieldpaint.evaluate import REFERENCE_CANDIDATES, draw_case_masks
from fieldpaint.metrics import mse, scored_pixels
from fieldpaint.reconstruct import Reconstructor

VALIDATION_SEED = 104_729  # added to the evaluation seed: validation masks are never the test masks


def split_validation(train: FieldSplit, n: int, seed: int) -> tuple[FieldSplit, FieldSplit]:
    """(validation fields, the rest) drawn at random from the train split; n is capped so that at
    least half of the split is left for fitting."""
    n = max(1, min(n, len(train) // 2))
    rows = np.random.default_rng(seed + VALIDATION_SEED).permutation(len(train))
    return train.take(np.sort(rows[:n])), train.take(np.sort(rows[n:]))


def geometric_mean(values: np.ndarray) -> float:
    """exp(mean(log v)); +inf when any value is non-finite or non-positive (a failed case)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        return float("inf")
    return float(np.exp(np.mean(np.log(values))))


def validation_errors(method: Reconstructor, fields: FieldSplit, masks) -> np.ndarray:
    """Per-case MSE of `method` on hidden valid pixels of the validation fields."""
    rec = method.reconstruct(fields.x * masks, masks, fields.valid, samples=1, seed=0)
    mean = rec.mean.cpu().double().numpy()
    truth = fields.x.double().numpy()
    errors = []
    for i in range(len(fields)):
        scored = scored_pixels(masks[i].numpy(), fields.valid[i].numpy())
        errors.append(mse(mean[i], truth[i], scored) if scored.any() else np.nan)
    return np.asarray(errors)


def choose_references(candidates: dict[str, Reconstructor], validation: FieldSplit, families: list[str],
                      coverages: list[float], *, seed: int = 0) -> dict[tuple[str, float], dict]:
    """For each (family, coverage): every candidate's geometric-mean validation MSE and the lowest one.

    Returns {(family, coverage): {"chosen": name, "validation_gmean_mse": {name: value}, "fields": n}}.
    """
    if not candidates:
        raise ValueError("choose_references needs at least one candidate")
    choices = {}
    for family in families:
        for coverage in coverages:
            masks = draw_case_masks(validation, family, coverage, seed + VALIDATION_SEED)
            scores = {name: geometric_mean(validation_errors(method, validation, masks))
                      for name, method in candidates.items()}
            chosen = min(scores, key=lambda name: (scores[name], list(candidates).index(name)))
            choices[(family, coverage)] = {"chosen": chosen, "validation_gmean_mse": scores,
                                           "fields": len(validation)}
    return choices


def resumed_references(out: Path, families: list[str], coverages: list[float], fields: int
                       ) -> dict[tuple[str, float], dict] | None:
    """The reference choice an earlier run of this evaluation made (reference.json), when it chose
    among every candidate for each of these groups on as many validation fields; else None. The
    choice saw training fields only, so reusing it changes nothing but the time it took."""
    path = out / "reference.json"
    if not path.exists():
        return None
    try:
        records = {(r["mask"], round(float(r["coverage"]), 6)): r for r in json.loads(path.read_text())}
    except (ValueError, KeyError, TypeError):
        return None
    choices = {}
    for family in families:
        for coverage in coverages:
            record = records.get((family, round(coverage, 6)))
            if (record is None or record.get("fields") != fields
                    or set(record.get("validation_gmean_mse", {})) != set(REFERENCE_CANDIDATES)):
                return None
            choices[(family, coverage)] = {k: record[k] for k in ("chosen", "validation_gmean_mse", "fields")}
    return choices

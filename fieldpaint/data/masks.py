"""Observation masks: which pixels of a field are observed (1) and which are hidden (0).

"Coverage" is the hidden fraction of the VALID pixels. Never-valid pixels (land, NaN) are 0 in
the mask and do not count. Every family is exact: a mask observes exactly
round((1 - coverage) * n_valid) valid pixels.

How: each family draws a per-pixel priority score that carries its structure (tracks: distance
to a ground track; boxes: distance from the box centres; stations: a clustered weighted random
key), and the k highest-priority valid pixels are observed. The score does not depend on the
coverage, so for one seed the masks are nested: what is observed at 95 % hidden is also
observed at 90 %. Sample i draws from its own generator, SeedSequence(seed).spawn(...)[i], so it
never depends on the batch size.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from fieldpaint.errors import FieldpaintError

MASK_FAMILIES = ("random", "stations", "tracks", "boxes", "mixed")  # the one list: masks.family, the CLI read it
STRUCTURED_FAMILIES = MASK_FAMILIES[:-1]  # what "mixed" chooses among

# Station clusters: Gaussian bumps of this width (fraction of the shorter side) on a faint
# uniform background, so that at low coverage points spill out of the clusters into the rest.
CLUSTER_SIGMA = (0.04, 0.12)
STATION_BACKGROUND = 0.003


# ------------------------------------------------------------------------------------------
# validation


def check_coverage(coverage: float | np.ndarray) -> np.ndarray:
    """Raise FieldpaintError unless every value is in [0, 1); return them as float64."""
    try:
        values = np.asarray(coverage, dtype=np.float64)
    except (TypeError, ValueError):
        raise FieldpaintError(f"coverage must be a number in [0, 1), got {coverage!r}") from None
    bad = values[~((values >= 0.0) & (values < 1.0))]  # NaN fails both comparisons
    if bad.size:
        first = float(bad.flat[0])
        looks_like_percent = first.is_integer() and 1.0 < first <= 100.0  # "90" for 0.9
        hint = " (a fraction, not a percentage)" if looks_like_percent else ""
        raise FieldpaintError(f"coverage must be in [0, 1), got {first}{hint}")
    return values


def parse_coverages(text: str) -> list[float]:
    """'0.5,0.8,0.9' -> [0.5, 0.8, 0.9], each checked to lie in [0, 1). For the CLI."""
    values = []
    for item in str(text).split(","):
        try:
            values.append(float(item.strip()))
        except ValueError:
            raise FieldpaintError(
                f"coverages must be comma-separated numbers like 0.5,0.9; got {item.strip()!r}"
            ) from None
    check_coverage(values)
    return values


def n_observed(coverage: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """round((1 - coverage) * n_valid) observed pixels (round half to even, as Python's round)."""
    return np.rint((1.0 - coverage) * n_valid).astype(np.int64)


def _valid_pixels(valid: np.ndarray | None, n: int, height: int, width: int) -> np.ndarray:
    """Broadcast valid (H, W), (n, H, W) or (n, 1, H, W), bool or 0/1, to bool (n, H, W)."""
    if valid is None:
        return np.ones((n, height, width), dtype=bool)
    valid = np.asarray(valid)
    if valid.dtype != bool:
        if not np.isin(valid, (0, 1)).all():
            raise FieldpaintError("valid must be boolean (or 0/1): True marks a valid pixel")
        valid = valid.astype(bool)
    if valid.ndim == 4 and valid.shape[1] == 1:
        valid = valid[:, 0]
    if valid.shape not in {(height, width), (n, height, width)}:
        raise FieldpaintError(
            f"valid has shape {valid.shape}; expected ({height}, {width}), "
            f"({n}, {height}, {width}) or ({n}, 1, {height}, {width})"
        )
    return np.broadcast_to(valid, (n, height, width))


def sample_generators(seed: int | np.random.Generator, n: int) -> list[np.random.Generator]:
    """One generator per sample; child i depends only on (seed, i), never on n."""
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(2**63))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FieldpaintError(f"seed must be an integer >= 0 or a numpy Generator, got {seed!r}")
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(n)]


# ------------------------------------------------------------------------------------------
# priority scores, one per family: (rng, H, W) -> (H, W) float64, higher = observed first


def random_priority(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Uniformly random pixels."""
    return rng.random((height, width))


def station_priority(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Clustered points: weighted sampling without replacement from a cluster density.

    Efraimidis & Spirakis (2006): keys log(u) / w with u ~ U(0, 1]; the top k keys are a
    weighted sample of k pixels without replacement. w is a few Gaussian clusters on a faint
    background, so points concentrate in a few dense regions and leave the rest empty.
    """
    n_clusters = int(rng.integers(2, 7))
    side = min(height, width)
    centres = rng.uniform((0, 0), (height, width), size=(n_clusters, 2))
    sigmas = side * rng.uniform(*CLUSTER_SIGMA, size=n_clusters)
    weights = rng.uniform(0.5, 1.0, size=n_clusters)
    # an isotropic Gaussian bump is separable: (K, H, 1) * (K, 1, W)
    bump_y = np.exp(-0.5 * ((np.arange(height) - centres[:, :1]) / sigmas[:, None]) ** 2)
    bump_x = np.exp(-0.5 * ((np.arange(width) - centres[:, 1:]) / sigmas[:, None]) ** 2)
    density = STATION_BACKGROUND + np.einsum("k,kh,kw->hw", weights, bump_y, bump_x)
    u = 1.0 - rng.random((height, width))  # (0, 1]: the log stays finite
    return np.log(u) / density


def _rasterise_tracks(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) pass time of the earliest track through each pixel (inf where none passes).

    Each track runs border to border along a straight line at a random angle through a random
    point, with a gentle sinusoidal meander (a ship's or a satellite's ground track). Track j
    passes at times j + s, s in [0, 1) along the track, so tracks are observed in order.
    """
    n_tracks = int(rng.integers(2, 6))
    diagonal = math.hypot(height, width)
    s = np.linspace(-0.5, 0.5, int(4 * diagonal))  # < 0.5 px between points
    pixels, pass_times = [], []
    for j in range(n_tracks):
        angle = rng.uniform(0, np.pi)
        centre = rng.uniform((0, 0), (height, width))
        along = np.array([math.sin(angle), math.cos(angle)])
        across = np.array([along[1], -along[0]])
        amplitude = rng.uniform(0, 0.08) * diagonal
        phase, cycles = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.5)
        offset = amplitude * np.sin(2 * np.pi * cycles * s + phase)
        points = centre + np.outer(s * diagonal, along) + np.outer(offset, across)
        rows, cols = np.rint(points).astype(np.int64).T
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        pixels.append(rows[inside] * width + cols[inside])
        pass_times.append(j + s[inside] + 0.5)
    # pass times increase through the concatenation: a pixel's first occurrence is its earliest
    flat, first = np.unique(np.concatenate(pixels), return_index=True)
    times = np.full(height * width, np.inf)
    times[flat] = np.concatenate(pass_times)[first]
    return times.reshape(height, width)


def track_priority(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Along-track observations a few pixels wide, widening into bands as coverage drops.

    Primary key: the ring of distance from the nearest track (within the swath half-width
    first, then one pixel further per ring); secondary: the pass time of that nearest track
    point, so at very high coverage one sees the first tracks, thin and partial.
    """
    times = _rasterise_tracks(rng, height, width)
    if not np.isfinite(times).any():  # every track missed the grid (tiny grids): one pixel
        times[rng.integers(height), rng.integers(width)] = 0.0
    distance, (near_r, near_c) = ndimage.distance_transform_edt(
        ~np.isfinite(times), return_indices=True
    )
    half_width = rng.uniform(0.0, 1.5)
    ring = np.ceil(np.maximum(distance - half_width, 0.0))  # 0 inside the swath
    pass_time = times[near_r, near_c]
    tie_break = 1e-3 * rng.random((height, width))
    return -(ring * 1e3 + pass_time + tie_break)  # pass_time < 6: rings never mix


def box_priority(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Rectangular gaps (clouds) that grow with coverage.

    The score is the box-norm distance min_j max(|y - cy_j| / a_j, |x - cx_j| / b_j) from a few
    box centres: hiding the lowest scores hides a union of rectangles with half-sides t a_j,
    t b_j for one threshold t, growing until at high coverage they cover almost everything.
    """
    n_boxes = int(rng.integers(1, 4))
    centres = rng.uniform((0, 0), (height, width), size=(n_boxes, 2))
    half_sides = rng.uniform(0.5, 2.0, size=(n_boxes, 2)) * (height, width)
    yy, xx = np.ogrid[:height, :width]
    dy = np.abs(yy[None] - centres[:, 0, None, None]) / half_sides[:, 0, None, None]
    dx = np.abs(xx[None] - centres[:, 1, None, None]) / half_sides[:, 1, None, None]
    box_distance = np.maximum(dy, dx).min(axis=0)
    # Pixels on one edge of a box tie; break ties in raster order (a step far below the
    # 1 / (2 max(H, W)) between successive rows or columns) so a partly hidden edge row is one
    # contiguous run rather than a dotted line.
    raster = (yy * width + xx) / (height * width)
    return box_distance + 1e-3 / max(height, width) * raster


def mixed_priority(rng: np.random.Generator, height: int, width: int,
                   probabilities: np.ndarray | None = None) -> np.ndarray:
    """A structured family chosen at random for this sample: uniformly, or with `probabilities`
    (one per STRUCTURED_FAMILIES entry, summing to 1)."""
    if probabilities is None:
        index = int(rng.integers(len(STRUCTURED_FAMILIES)))
    else:
        index = int(rng.choice(len(STRUCTURED_FAMILIES), p=probabilities))
    return PRIORITIES[STRUCTURED_FAMILIES[index]](rng, height, width)


def mixed_probabilities(weights: Sequence[float]) -> np.ndarray:
    """`weights` normalised to sum to 1; FieldpaintError unless they are len(STRUCTURED_FAMILIES)
    finite numbers >= 0, not all 0."""
    values = np.asarray(weights, dtype=np.float64)
    if (values.shape != (len(STRUCTURED_FAMILIES),) or not np.isfinite(values).all() or (values < 0).any()
            or values.sum() <= 0):
        raise FieldpaintError(f"mixed weights must be {len(STRUCTURED_FAMILIES)} numbers >= 0 "
                              f"({', '.join(STRUCTURED_FAMILIES)}), not all 0; got {list(weights)!r}")
    return values / values.sum()


PRIORITIES: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "random": random_priority,
    "stations": station_priority,
    "tracks": track_priority,
    "boxes": box_priority,
    "mixed": mixed_priority,
}


# ------------------------------------------------------------------------------------------
# the masks


def observe_top_k(priority: np.ndarray, valid: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(n, H, W) bool: the k[i] highest-priority valid pixels of sample i. Requires k <= n_valid."""
    n = priority.shape[0]
    flat = np.where(valid, priority, -np.inf).reshape(n, -1)
    observed = np.zeros(flat.shape, dtype=bool)
    for i in range(n):  # argpartition is O(H W) per row; k differs between rows
        if k[i] > 0:
            observed[i, np.argpartition(-flat[i], k[i] - 1)[: k[i]]] = True
    return observed.reshape(priority.shape)


def make_masks(
    family: str,
    coverage: float | np.ndarray,
    n: int,
    height: int,
    width: int,
    *,
    valid: np.ndarray | None = None,
    seed: int | np.random.Generator = 0,
    mixed_weights: Sequence[float] | None = None,
) -> np.ndarray:
    """(n, 1, H, W) float32 masks, 1 = observed, hiding exactly `coverage` of the valid pixels.

    coverage: one float or n floats (e.g. drawn uniformly per sample for conditional training).
    valid: bool (H, W), (n, H, W) or (n, 1, H, W); never-valid pixels are never observed.
    mixed_weights: for family "mixed", how often each of STRUCTURED_FAMILIES is drawn (default: equally).
    """
    if family not in PRIORITIES:
        raise FieldpaintError(
            f"unknown mask family {family!r}; choose one of {', '.join(MASK_FAMILIES)}"
        )
    for name, value, minimum in (("n", n, 0), ("height", height, 1), ("width", width, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise FieldpaintError(f"{name} must be an integer >= {minimum}, got {value!r}")
    coverages = check_coverage(coverage)
    if coverages.ndim > 1 or (coverages.ndim == 1 and coverages.shape[0] != n):
        raise FieldpaintError(
            f"coverage must be one number or {n} numbers, got shape {coverages.shape}"
        )
    valid = _valid_pixels(valid, n, height, width)

    score = PRIORITIES[family]
    if mixed_weights is not None:
        if family != "mixed":
            raise FieldpaintError(f"mixed weights apply to family 'mixed', not {family!r}")
        score = functools.partial(mixed_priority, probabilities=mixed_probabilities(mixed_weights))
    priority = np.zeros((n, height, width))
    for i, rng in enumerate(sample_generators(seed, n)):
        priority[i] = score(rng, height, width)
    k = n_observed(np.broadcast_to(coverages, (n,)), valid.reshape(n, -1).sum(axis=1))
    return observe_top_k(priority, valid, k)[:, None].astype(np.float32)

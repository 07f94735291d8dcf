"""Tests for the observation masks (fieldpaint.data.masks).

Counts are checked against round((1 - coverage) * n_valid) computed here with Python's round;
structure against scipy.ndimage connected components and neighbour statistics.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from fieldpaint.data import masks
from fieldpaint.errors import FieldpaintError

FAMILIES = masks.MASK_FAMILIES
COVERAGES = (0.0, 0.5, 0.8, 0.9, 0.92, 0.95, 0.98, 0.99, 0.995)
EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=int)


def _land(height: int, width: int) -> np.ndarray:
    """A valid-pixel map with a round island and a strip of coast: True = valid (sea)."""
    yy, xx = np.mgrid[:height, :width]
    island = (yy - 0.6 * height) ** 2 + (xx - 0.25 * width) ** 2 < (0.2 * height) ** 2
    coast = xx > 0.9 * width
    return ~(island | coast)


def _expected_observed(coverage: float, n_valid: int) -> int:
    return round((1 - coverage) * n_valid)


def _assert_exact(mask: np.ndarray, valid: np.ndarray, coverages) -> None:
    """mask (n, 1, H, W) observes exactly the right count of valid pixels and nothing else."""
    assert mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    observed = mask[:, 0].astype(bool)
    assert not (observed & ~valid).any(), "a never-valid pixel is observed"
    for i, coverage in enumerate(np.broadcast_to(coverages, (len(mask),))):
        n_valid = int(valid[i].sum())
        assert observed[i].sum() == _expected_observed(float(coverage), n_valid), (i, coverage)


# ------------------------------------------------------------------------------------------
# exact coverage and validity


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("coverage", COVERAGES)
def test_exact_coverage_with_land(family: str, coverage: float) -> None:
    valid = _land(64, 128)
    mask = masks.make_masks(family, coverage, 4, 64, 128, valid=valid, seed=11)
    assert mask.shape == (4, 1, 64, 128)
    _assert_exact(mask, np.broadcast_to(valid, (4, 64, 128)), coverage)


@settings(max_examples=60, deadline=None)
@given(
    family=st.sampled_from(FAMILIES),
    valid=arrays(bool, st.tuples(st.integers(1, 3), st.integers(1, 20), st.integers(1, 24))),
    coverage=st.floats(0.0, 1.0, exclude_max=True),
    seed=st.integers(0, 2**32),
)
def test_exact_coverage_any_valid_map(family, valid, coverage, seed) -> None:
    """Per-sample random valid maps (any land shape, even all land), any coverage in [0, 1)."""
    n, height, width = valid.shape
    mask = masks.make_masks(family, coverage, n, height, width, valid=valid[:, None], seed=seed)
    _assert_exact(mask, valid, coverage)


@settings(max_examples=40, deadline=None)
@given(
    family=st.sampled_from(FAMILIES),
    coverages=st.lists(st.floats(0.0, 0.999), min_size=1, max_size=5),
    seed=st.integers(0, 1000),
)
def test_per_sample_coverages(family, coverages, seed) -> None:
    valid = _land(16, 32)
    mask = masks.make_masks(family, np.array(coverages), len(coverages), 16, 32, valid=valid,
                            seed=seed)
    _assert_exact(mask, np.broadcast_to(valid, (len(coverages), 16, 32)), coverages)


@settings(max_examples=40, deadline=None)
@given(
    family=st.sampled_from(FAMILIES),
    low=st.floats(0.0, 0.999),
    high=st.floats(0.0, 0.999),
    seed=st.integers(0, 1000),
)
def test_masks_are_nested_across_coverages(family, low, high, seed) -> None:
    """For one seed, what is observed at the higher coverage is observed at the lower one."""
    low, high = min(low, high), max(low, high)
    dense = masks.make_masks(family, low, 3, 16, 24, seed=seed).astype(bool)
    sparse = masks.make_masks(family, high, 3, 16, 24, seed=seed).astype(bool)
    assert not (sparse & ~dense).any()


# ------------------------------------------------------------------------------------------
# determinism


@pytest.mark.parametrize("family", FAMILIES)
def test_determinism_and_batch_size_independence(family: str) -> None:
    big = masks.make_masks(family, 0.9, 8, 32, 64, seed=5)
    np.testing.assert_array_equal(big, masks.make_masks(family, 0.9, 8, 32, 64, seed=5))
    np.testing.assert_array_equal(big[:3], masks.make_masks(family, 0.9, 3, 32, 64, seed=5))
    assert not np.array_equal(big, masks.make_masks(family, 0.9, 8, 32, 64, seed=6))
    assert not np.array_equal(big[0], big[1])  # samples differ within a batch


def test_generator_seed_is_accepted_and_reproducible() -> None:
    a = masks.make_masks("tracks", 0.9, 2, 16, 16, seed=np.random.default_rng(3))
    b = masks.make_masks("tracks", 0.9, 2, 16, 16, seed=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------
# structure of each family (64 x 128, no land)


def _observed_neighbour_fraction(observed: np.ndarray) -> float:
    """Mean over observed pixels of the fraction of their 8 neighbours that are observed."""
    kernel = EIGHT_NEIGHBOURS[None]  # (1, 3, 3): neighbours within each sample only
    counts = ndimage.convolve(observed.astype(int), kernel, mode="constant") - observed
    return float(counts[observed].mean() / 8)


def test_random_masks_are_unstructured() -> None:
    """Independent pixels: an observed pixel's neighbours are observed at the base rate 0.1."""
    observed = masks.make_masks("random", 0.9, 16, 64, 128, seed=0)[:, 0].astype(bool)
    assert abs(_observed_neighbour_fraction(observed) - 0.1) < 0.01


def test_stations_are_clustered() -> None:
    """Observed stations have >= 2x as many observed neighbours as random pixels (~0.1)."""
    stations = masks.make_masks("stations", 0.9, 16, 64, 128, seed=0)[:, 0].astype(bool)
    random = masks.make_masks("random", 0.9, 16, 64, 128, seed=0)[:, 0].astype(bool)
    assert _observed_neighbour_fraction(stations) > 2 * _observed_neighbour_fraction(random)


@pytest.mark.parametrize("coverage", [0.5, 0.9, 0.98])
def test_boxes_hide_few_large_holes(coverage: float) -> None:
    """Hidden pixels form at most 3 connected rectangles-union (one per box) per sample."""
    hidden = 1 - masks.make_masks("boxes", coverage, 16, 64, 128, seed=0)[:, 0]
    for sample in hidden:
        labels, n_holes = ndimage.label(sample)
        assert 1 <= n_holes <= 3
        largest = np.bincount(labels.ravel())[1:].max()
        assert largest >= sample.sum() / 3


@pytest.mark.parametrize("coverage", [0.9, 0.95])
def test_tracks_are_elongated(coverage: float) -> None:
    """Observed pixels form at most a few 8-connected pieces, and the largest is line-like.

    Elongation = (bounding-box diagonal)^2 / area: a disk gives 8/pi ~ 2.5, a line of
    length L and width w gives ~ L / w. We require a median above 10 over 16 samples.
    """
    observed = masks.make_masks("tracks", coverage, 16, 64, 128, seed=0)[:, 0]
    elongations = []
    for sample in observed:
        labels, n_pieces = ndimage.label(sample, EIGHT_NEIGHBOURS)
        assert n_pieces <= 5
        sizes = np.bincount(labels.ravel())[1:]
        box = ndimage.find_objects(labels)[int(sizes.argmax())]
        rows, cols = (s.stop - s.start for s in box)
        elongations.append((rows**2 + cols**2) / sizes.max())
    assert np.median(elongations) > 10


def test_tracks_widen_into_bands_at_low_coverage() -> None:
    """At 50 % hidden, most observed pixels are interior (all 8 neighbours observed)."""
    observed = masks.make_masks("tracks", 0.5, 8, 64, 128, seed=0)[:, 0].astype(bool)
    assert _observed_neighbour_fraction(observed) > 0.8


def test_mixed_uses_every_structured_family() -> None:
    """Sample i of 'mixed' is the mask of the family its own generator picks first."""
    n = 24
    mixed = masks.make_masks("mixed", 0.9, n, 16, 32, seed=2)
    picked = set()
    for i, rng in enumerate(masks.sample_generators(2, n)):
        family = masks.STRUCTURED_FAMILIES[int(rng.integers(4))]
        picked.add(family)
        score = masks.PRIORITIES[family](rng, 16, 32)[None]
        k = np.array([_expected_observed(0.9, 16 * 32)])
        expected = masks.observe_top_k(score, np.ones((1, 16, 32), bool), k)
        np.testing.assert_array_equal(mixed[i, 0].astype(bool), expected[0])
    assert picked == set(masks.STRUCTURED_FAMILIES)


def _count_families(monkeypatch, draw) -> dict[str, int]:
    """How often each structured family's priority is called while `draw()` runs."""
    calls = dict.fromkeys(masks.STRUCTURED_FAMILIES, 0)
    for family in masks.STRUCTURED_FAMILIES:
        def counted(rng, h, w, family=family, score=masks.PRIORITIES[family]):
            calls[family] += 1
            return score(rng, h, w)
        monkeypatch.setitem(masks.PRIORITIES, family, counted)
    draw()
    return calls


def test_mixed_weights_set_how_often_each_family_is_drawn(monkeypatch) -> None:
    """Weights 1:0:3:0 draw tracks with probability 3/4 and never stations or boxes. With n = 2000
    the count of tracks is Binomial(2000, 0.75): sd 19.4, so +-5 sd is +-97."""
    n = 2000
    calls = _count_families(monkeypatch, lambda: masks.make_masks("mixed", 0.9, n, 8, 8, seed=3,
                                                                   mixed_weights=[1, 0, 3, 0]))
    assert calls["stations"] == calls["boxes"] == 0
    assert calls["random"] + calls["tracks"] == n
    assert abs(calls["tracks"] - 0.75 * n) < 5 * np.sqrt(n * 0.75 * 0.25)


def test_training_masks_follow_the_configured_weights(monkeypatch) -> None:
    """draw_training_masks passes masks.mixed_weights on: weights 0:0:1:0 draw only tracks."""
    import torch

    from fieldpaint.config import MasksConfig
    from fieldpaint.diffusion.conditioning import draw_training_masks

    config = MasksConfig(coverage=(0.9, 0.99), mixed_weights=(0.0, 0.0, 1.0, 0.0))
    valid = torch.ones(32, 1, 16, 32)
    calls = _count_families(monkeypatch, lambda: draw_training_masks(valid, config, seed=0))
    assert calls == {"random": 0, "stations": 0, "tracks": 32, "boxes": 0}


@pytest.mark.parametrize("bad", [[0, 0, 0, 0], [1, -1, 1, 1], [1, 1, 1], [1, float("nan"), 1, 1]])
def test_bad_mixed_weights_raise(bad) -> None:
    with pytest.raises(FieldpaintError, match="mixed weights must be"):
        masks.make_masks("mixed", 0.5, 2, 8, 8, mixed_weights=bad)


def test_mixed_weights_need_family_mixed() -> None:
    from fieldpaint.config import MasksConfig
    from fieldpaint.errors import ConfigError

    with pytest.raises(FieldpaintError, match="apply to family 'mixed'"):
        masks.make_masks("tracks", 0.5, 2, 8, 8, mixed_weights=[1, 1, 1, 1])
    with pytest.raises(ConfigError, match="masks.mixed_weights' applies to masks.family 'mixed'"):
        MasksConfig(family="random", mixed_weights=(1.0, 0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="at least one weight must be positive"):
        MasksConfig(mixed_weights=(0.0, 0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match=r"masks.mixed_weights\[1\]"):
        MasksConfig(mixed_weights=(1.0, -2.0, 0.0, 0.0))


# ------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("bad", [1.0, 1.2, -0.1, float("nan"), float("inf"), "abc", [0.5, 1.5]])
def test_check_coverage_rejects(bad) -> None:
    with pytest.raises(FieldpaintError, match="coverage must be"):
        masks.check_coverage(bad)


def test_check_coverage_message() -> None:
    with pytest.raises(FieldpaintError) as info:
        masks.check_coverage(1.2)
    assert str(info.value) == "coverage must be in [0, 1), got 1.2"
    with pytest.raises(FieldpaintError, match="not a percentage"):
        masks.check_coverage(90)


def test_make_masks_rejects_bad_coverage() -> None:
    with pytest.raises(FieldpaintError):
        masks.make_masks("random", 1.0, 2, 8, 8)
    with pytest.raises(FieldpaintError):
        masks.make_masks("random", [0.5, 0.6, 0.7], 2, 8, 8)  # wrong length


def test_config_reads_the_one_list_of_families() -> None:
    import typing

    from fieldpaint.config import MaskFamily

    assert typing.get_args(MaskFamily) == masks.MASK_FAMILIES
    assert set(masks.PRIORITIES) == set(masks.MASK_FAMILIES)


def test_unknown_family_lists_families() -> None:
    with pytest.raises(FieldpaintError) as info:
        masks.make_masks("clouds", 0.5, 1, 8, 8)
    assert all(family in str(info.value) for family in FAMILIES)


def test_bad_valid_shape_raises() -> None:
    with pytest.raises(FieldpaintError, match="valid"):
        masks.make_masks("random", 0.5, 2, 8, 8, valid=np.ones((8, 9), bool))
    with pytest.raises(FieldpaintError, match="valid"):
        masks.make_masks("random", 0.5, 2, 8, 8, valid=np.full((8, 8), 0.5))


def test_parse_coverages() -> None:
    assert masks.parse_coverages("0.5,0.8,0.9") == [0.5, 0.8, 0.9]
    assert masks.parse_coverages(" 0.995 ") == [0.995]
    for bad in ("0.5,,0.9", "0.5,abc", "90", "0.5,1", ""):
        with pytest.raises(FieldpaintError):
            masks.parse_coverages(bad)

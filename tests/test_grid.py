"""Grid maths (fieldpaint.data.grid): padding, cropping, random crops, tiles.

Expected values are worked out by hand from the definitions (next multiple, bottom/right padding)
or come from the untiled computation itself (a fixed convolution run on the whole grid).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fieldpaint.config import load_config
from fieldpaint.data.grid import (crop, crop_generator, crop_offsets, grid_multiple, pad_fields, padded_shape,
                                  reconstruct_tiled, take_crops, tile_starts)


@pytest.mark.parametrize("h, w, m, expected", [
    (18, 50, 4, (20, 52)),  # ceil(18/4)*4 = 20, ceil(50/4)*4 = 52
    (18, 432, 16, (32, 432)),  # the SST file of the issue under 4 levels: 432 = 27 * 16 already
    (64, 128, 16, (64, 128)),  # already divisible: unchanged
    (1, 1, 8, (8, 8)),
])
def test_padded_shape_is_the_next_multiple(h, w, m, expected):
    assert padded_shape(h, w, m) == expected


def test_grid_multiple_follows_the_model_structure_rule():
    # models.structure: a UNet needs 2^len(channels); uvit/dit need the patch size
    assert grid_multiple(load_config("palette_slim").model) == 16  # channels [32, 64, 128, 128]
    assert grid_multiple(load_config("palette_slim", ["model.channels=[8,16]", "model.norm_groups=4", "model.attention_heads=2"]).model) == 4
    assert grid_multiple(load_config("dit_small").model) == 4  # patch_size 4


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_padding_is_never_valid_and_crop_undoes_it(kind):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 18, 50)).astype(np.float32)
    valid = rng.random((3, 1, 18, 50)) > 0.25
    if kind == "torch":
        x, valid = torch.from_numpy(x), torch.from_numpy(valid)
    px, pv = pad_fields(x, valid, (20, 52))
    assert tuple(px.shape) == (3, 2, 20, 52) and tuple(pv.shape) == (3, 1, 20, 52)
    assert not np.asarray(pv[..., 18:, :]).any() and not np.asarray(pv[..., :, 50:]).any()
    assert (np.asarray(px[..., 18:, :]) == 0).all() and (np.asarray(px[..., :, 50:]) == 0).all()
    assert int(np.asarray(pv).sum()) == int(np.asarray(valid).sum())  # no valid pixel added
    np.testing.assert_array_equal(np.asarray(crop(px, (18, 50))), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(crop(pv, (18, 50))), np.asarray(valid))
    assert pad_fields(x, valid, (18, 50))[0] is x  # already the right grid: no copy
    with pytest.raises(ValueError):
        pad_fields(x, valid, (16, 50))


def test_random_crops_are_reproducible_uniform_windows():
    x = torch.arange(4 * 1 * 10 * 12, dtype=torch.float32).reshape(4, 1, 10, 12)
    offsets = crop_offsets(4, (10, 12), (8, 8), crop_generator(3, 7))
    np.testing.assert_array_equal(offsets, crop_offsets(4, (10, 12), (8, 8), crop_generator(3, 7)))
    assert ((offsets[:, 0] >= 0) & (offsets[:, 0] <= 2) & (offsets[:, 1] >= 0) & (offsets[:, 1] <= 4)).all()
    crops = take_crops(x, offsets, (8, 8))
    for i, (y, z) in enumerate(offsets):
        torch.testing.assert_close(crops[i], x[i, :, y:y + 8, z:z + 8])
    many = crop_offsets(20_000, (10, 12), (8, 8), crop_generator(0, 0))
    # every corner equally likely: 3 row and 5 column positions, each ~1/3 and ~1/5 of the draws
    np.testing.assert_allclose(np.bincount(many[:, 0]) / len(many), 1 / 3, atol=0.02)
    np.testing.assert_allclose(np.bincount(many[:, 1]) / len(many), 1 / 5, atol=0.02)
    assert (crop_offsets(5, (8, 8), (8, 8), crop_generator(0, 0)) == 0).all()


@pytest.mark.parametrize("length, tile, overlap", [(50, 16, 4), (100, 32, 8), (33, 32, 8), (16, 32, 8), (64, 16, 0)])
def test_tiles_cover_the_grid_with_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length
    for a, b in zip(starts, starts[1:]):
        assert b - a <= tile - overlap  # neighbours share at least `overlap` pixels


def test_identity_reconstructed_by_tiles_is_exact():
    x = torch.randn(2, 3, 45, 70, generator=torch.Generator().manual_seed(0))
    (out,) = reconstruct_tiled(lambda t: (t,), [x], tile=(16, 32), overlap=8)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def _local_filter(x: torch.Tensor) -> torch.Tensor:
    """A fixed 5x5 smoothing convolution, zero-padded: local (radius 2), translation-equivariant."""
    k = torch.outer(torch.tensor([1.0, 4, 6, 4, 1]), torch.tensor([1.0, 4, 6, 4, 1]))
    k = (k / k.sum()).to(x.dtype)[None, None]
    return F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), k, padding=2).reshape(x.shape)


def test_local_filter_by_tiles_equals_the_whole_and_shows_no_seams():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 96, 160, generator=g, dtype=torch.float64)
    whole = _local_filter(x)
    # margin 2 = the filter's radius: the zero-padded tile edges never enter the blend
    (tiled,) = reconstruct_tiled(lambda t: (_local_filter(t),), [x], tile=(32, 32), overlap=12, margin=2)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)

    # no seams even without the margin: the differences across tile borders have the same
    # spread as everywhere else (the blend's errors near borders are small and smooth)
    (blended,) = reconstruct_tiled(lambda t: (_local_filter(t),), [x], tile=(32, 32), overlap=12, margin=0)
    starts = tile_starts(160, 32, 12)
    borders = sorted({s for s in starts[1:]} | {s + 32 for s in starts[:-1]})
    dx = (blended[..., 2:-2, 1:] - blended[..., 2:-2, :-1])  # column differences, away from the grid edge
    at_border = dx[..., [b - 1 for b in borders]]
    inside = dx[..., [c for c in range(4, 150) if all(abs(c - b) > 3 for b in borders)]]
    assert float(at_border.std() / inside.std()) == pytest.approx(1.0, abs=0.1)


def test_tiles_blend_several_outputs_and_keep_leading_dims():
    x = torch.randn(2, 1, 40, 40)

    def fn(t):
        return t * 2, None, t[:, None].expand(-1, 3, -1, -1, -1)  # (B, K, C, h, w) like ensemble members

    mean, nothing, members = reconstruct_tiled(fn, [x], tile=(16, 16), overlap=4)
    assert nothing is None
    torch.testing.assert_close(mean, 2 * x)
    torch.testing.assert_close(members, x[:, None].expand(-1, 3, -1, -1, -1))

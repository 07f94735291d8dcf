"""Grid maths: padding a file's grid to what the model divides, random crops of a larger grid, and
reconstructing a grid larger than the model's from overlapping tiles blended with a smooth window.

Pure functions of arrays (numpy or torch, (..., H, W)); nothing here reads files or configs.

Conventions, shared by training, inference and evaluation:

- **Padding** goes at the bottom and right (rows H.., columns W..), so pixel (i, j) of the file is
  pixel (i, j) of the padded grid and `crop(x, (h, w))` = x[..., :h, :w] undoes it. Padded pixels
  are never valid (valid = 0, x = 0): no loss, observation or score sees them. (Padding breaks a
  periodic field's wrap-around at the model's borders; the kriging baselines never see padding.)
- **Crops** of a grid larger than the model's are windows at offsets drawn per sample from a
  generator, so a seed gives the same crops in memory and streaming.
- **Tiles** of size `tile` cover the grid with at least `overlap` pixels shared between
  neighbours (the last tile is aligned to the far edge). Each tile's output is weighted by a
  separable raised-cosine window that is 0 on the `margin` pixels next to an inner tile edge,
  rises as sin² over the rest of the overlap and is 1 inside; the blend is divided by the summed
  weights, so a reconstructor that is the identity gives the input back exactly, and a local,
  translation-equivariant one of radius <= margin gives exactly its untiled result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

from fieldpaint.errors import DataError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
Shape = tuple[int, int]


# ----------------------------------------------------------------------------------------------
# the multiple a model needs, padding and cropping


def grid_multiple(model) -> int:
    """The number H and W must be multiples of for `model` (a ModelConfig), as
    `fieldpaint.models.structure` checks it: 2^len(channels) for the UNet (one halving per level,
    then the bottleneck), the patch size for the patch-token backbones (uvit, dit)."""
    if model.arch in ("uvit", "dit"):
        return int(model.patch_size)
    return 2 ** len(model.channels)


def padded_shape(height: int, width: int, multiple: int) -> Shape:
    """The smallest (H, W) >= (height, width) with both multiples of `multiple`."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    return (-(-height // multiple) * multiple, -(-width // multiple) * multiple)


def _zeros(like: ArrayT, shape: tuple[int, ...]) -> ArrayT:
    if isinstance(like, torch.Tensor):
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return np.zeros(shape, dtype=like.dtype)


def pad_to(x: ArrayT, shape: Shape) -> ArrayT:
    """x (..., h, w) zero-padded at the bottom and right to (..., H, W); x itself when it fits."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(shape):
        return x
    if h > shape[0] or w > shape[1]:
        raise ValueError(f"cannot pad a {h}x{w} grid to the smaller {shape[0]}x{shape[1]}")
    out = _zeros(x, (*x.shape[:-2], *shape))
    out[..., :h, :w] = x
    return out


def pad_fields(x: ArrayT, valid: ArrayT, shape: Shape) -> tuple[ArrayT, ArrayT]:
    """(x, valid) padded to `shape` with never-valid pixels: x = 0, valid = 0 (False)."""
    return pad_to(x, shape), pad_to(valid, shape)


def crop(x: ArrayT, shape: Shape) -> ArrayT:
    """The top-left (..., H, W) of x: undoes `pad_to`."""
    h, w = x.shape[-2:]
    if h < shape[0] or w < shape[1]:
        raise ValueError(f"cannot crop a {h}x{w} grid to the larger {shape[0]}x{shape[1]}")
    return x[..., : shape[0], : shape[1]]


def fit_shape(grid: Shape, model: Shape) -> Shape:
    """The grid data of `grid` is held at for a model of grid `model`: padded to the model's size
    along an axis where it is smaller, kept (for crops or tiles) where it is larger."""
    return (max(grid[0], model[0]), max(grid[1], model[1]))


def check_wrap_extent(wrap: str, grid: Shape, model: Shape, holder: str) -> None:
    """DataError unless `grid` equals the `model` grid along every axis in `wrap` (model.wrap): a
    model whose convolutions wrap around there needs the field's whole periodic extent, not a
    padded grid, a crop or a tile, whose edge is not where the field wraps. `holder` ('the file
    has', 'these fields have') opens the message's count."""
    for axis, name, size, model_size in (("y", "rows", grid[0], model[0]), ("x", "columns", grid[1], model[1])):
        if axis in wrap and size != model_size:
            raise DataError(f"model.wrap is {wrap!r}, but {holder} {size} {name} and the model {model_size}: a "
                            f"model that wraps around along {axis} takes only its own extent there")


# ----------------------------------------------------------------------------------------------
# random crops


def crop_generator(seed: int, step: int) -> torch.Generator:
    """The crop offsets' random stream of one batch; depends only on (seed, step), apart from the
    noise and timestep stream of that step."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 2 + 1)


def crop_offsets(n: int, grid: Shape, shape: Shape, generator: torch.Generator) -> np.ndarray:
    """(n, 2) int64 top-left corners of random `shape` windows in a `grid`, uniform per axis;
    all 0 along an axis that fits exactly (then nothing is drawn for it)."""
    out = np.zeros((n, 2), dtype=np.int64)
    for axis in (0, 1):
        room = grid[axis] - shape[axis]
        if room < 0:
            raise ValueError(f"a {shape[0]}x{shape[1]} crop does not fit a {grid[0]}x{grid[1]} grid")
        if room > 0:
            out[:, axis] = torch.randint(0, room + 1, (n,), generator=generator).numpy()
    return out


def take_crops(x: ArrayT, offsets: np.ndarray, shape: Shape) -> ArrayT:
    """x (N, ..., H, W) -> (N, ..., h, w): sample i's window at offsets[i]."""
    if x.shape[-2:] == tuple(shape):
        return x
    rows = [x[i, ..., y:y + shape[0], z:z + shape[1]] for i, (y, z) in enumerate(offsets.tolist())]
    return torch.stack(rows) if isinstance(x, torch.Tensor) else np.stack(rows)


# ----------------------------------------------------------------------------------------------
# tiles


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of `tile` pixels covering [0, length), neighbours sharing >= `overlap`
    pixels, the first at 0 and the last ending at `length`."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile = {tile})")
    n = 1 + math.ceil((length - tile) / (tile - overlap))
    # evenly spread: the actual overlaps are >= overlap and differ by at most one pixel
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def window_1d(tile: int, starts: Sequence[int], length: int, start: int, margin: int) -> torch.Tensor:
    """(tile,) float64 weights of the tile at `start`: 0 on the `margin` pixels next to an inner
    edge, sin² rising over the rest of the overlap with the neighbour, 1 elsewhere (also on an
    edge that is the grid's own border)."""
    w = torch.ones(tile, dtype=torch.float64)
    i = torch.arange(tile, dtype=torch.float64)
    index = list(starts).index(start)
    if index > 0:  # an inner edge on the left/top: the overlap with the previous tile
        overlap = starts[index - 1] + tile - start
        w = w * _rise(i, overlap, margin)
    if index < len(starts) - 1:  # an inner edge on the right/bottom
        overlap = start + tile - starts[index + 1]
        w = w * _rise(tile - 1 - i, overlap, margin)
    return w


def _rise(d: torch.Tensor, overlap: int, margin: int) -> torch.Tensor:
    """0 for d < margin, sin²(π/2 · (d - margin + 1) / (overlap - 2 margin + 1)) up to the end of
    the ramp, then 1 (d = distance in pixels from the tile's inner edge)."""
    ramp = overlap - 2 * margin
    if ramp < 1:
        raise ValueError(f"an overlap of {overlap} pixels leaves no ramp with margin {margin} "
                         "(need overlap >= 2 margin + 1)")
    s = ((d - margin + 1) / (ramp + 1)).clamp(0.0, 1.0)
    return torch.where(d < margin, torch.zeros_like(d), torch.sin(0.5 * math.pi * s) ** 2)


def reconstruct_tiled(fn: Callable[..., Sequence[torch.Tensor | None]], inputs: Sequence[torch.Tensor],
                      tile: Shape, overlap: Shape | int, margin: Shape | int = 0) -> list[torch.Tensor | None]:
    """Apply `fn` to overlapping `tile`-sized windows of `inputs` (each (..., H, W), one grid) and
    blend its outputs (each (..., th, tw), or None) into (..., H, W) by the raised-cosine window,
    normalised by the summed weights. `fn(*tiles)` receives the windows of every input in order.
    """
    grid = tuple(inputs[0].shape[-2:])
    overlap = (overlap, overlap) if isinstance(overlap, int) else tuple(overlap)
    margin = (margin, margin) if isinstance(margin, int) else tuple(margin)
    th, tw = min(tile[0], grid[0]), min(tile[1], grid[1])
    ys, xs = tile_starts(grid[0], th, overlap[0]), tile_starts(grid[1], tw, overlap[1])
    wy = {y: window_1d(th, ys, grid[0], y, margin[0]) for y in ys}
    wx = {x: window_1d(tw, xs, grid[1], x, margin[1]) for x in xs}
    sums: list[torch.Tensor | None] | None = None
    total = torch.zeros(grid, dtype=torch.float64)
    for y in ys:
        for x in xs:
            outputs = fn(*(a[..., y:y + th, x:x + tw] for a in inputs))
            weight = wy[y][:, None] * wx[x][None, :]  # (th, tw)
            if sums is None:
                sums = [None if o is None else torch.zeros((*o.shape[:-2], *grid), dtype=torch.float64)
                        for o in outputs]
            for s, o in zip(sums, outputs):
                if s is not None:
                    s[..., y:y + th, x:x + tw] += o.detach().cpu().double() * weight
            total[y:y + th, x:x + tw] += weight
    if not bool((total > 0).all()):  # cannot happen with a ramp of >= 1 pixel; a guard for edits
        raise ValueError("some pixels have zero total tile weight")
    dtype = inputs[0].dtype
    return [None if s is None else (s / total).to(dtype) for s in sums]

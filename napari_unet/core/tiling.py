"""Overlap-tile prediction of one 2D plane with mirrored borders (Ronneberger et al. 2015).

The plane is padded by mirroring so that pixels at its border get real-looking context.
Each tile of ``tile`` pixels trusts only its *core*: the tile minus a context ``margin`` on
each side. Cores cover the plane; neighbouring tiles overlap by ``2 * margin``. The outputs
are blended with a window that is 1 in the core and falls off towards the tile edge
(``blending="cosine"``), or each pixel is taken from the core that holds it
(``blending="none"``, exact when the margin covers the network's receptive field).

The predictor is injected: any callable mapping a float32 batch of shape
(B, C, tile_y, tile_x) to (B, K, tile_y - 2*crop_y, tile_x - 2*crop_x) works, so the same code
serves a torch network, a test function such as ``x + 1``, or a remote service.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from napari_unet.core.errors import InputError
from napari_unet.core.options import BLENDINGS

Predictor = Callable[[np.ndarray], np.ndarray]
_MIN_WEIGHT = 1e-3


@dataclass(frozen=True)
class AxisPlan:
    """Tiling along one axis, in padded coordinates."""

    length: int  # plane length
    tile: int  # tile input size
    margin: int  # context excluded from the core on each side
    crop: int  # pixels the predictor drops on each side (valid padding)
    starts: tuple[int, ...]  # tile origins
    pad_after: int  # mirrored padding after the plane (pad before = margin)

    @property
    def padded(self) -> int:
        return self.margin + self.length + self.pad_after


def plan_axis(
    length: int,
    tile: int,
    margin: int,
    *,
    crop: int = 0,
    fit: Callable[[int], int] = lambda n: n,
    stride: int = 1,
) -> AxisPlan:
    """Place tiles along one axis.

    Every tile's input starts on the ``stride`` grid of the plane (a multiple of ``stride``
    pixels from its first pixel, the mirrored border counted negative): a U-Net's pooling
    makes its output depend on where the input starts modulo ``2**depth``, so aligned tiles
    give the same output for a pixel whichever tile size or window (a block of a larger
    image) placed them. The margin and the cores are rounded to the grid for this.

    Parameters
    ----------
    length : int
        Plane length along this axis.
    tile : int
        Largest tile size to use; a plane shorter than one tile gets a smaller tile.
    margin : int
        Context pixels excluded from each core; at least ``crop``.
    crop : int
        Pixels the predictor drops on each side of a tile.
    fit : callable
        Maps a wanted tile size to the smallest size the predictor accepts (>= wanted).
    stride : int
        The grid tile inputs start on (a U-Net's ``2**depth``; 1: anywhere).
    """
    if length < 1:
        raise InputError(f"cannot tile an axis of length {length}")
    margin, stride = aligned_margin(tile, max(margin, crop), stride)
    core = core_size(tile, margin, stride)
    if core < 1:
        raise InputError(
            f"tile size {tile} leaves no core after a context margin of {margin} per side; "
            "use a larger tile or a smaller overlap"
        )
    if length <= core:
        tile = fit(length + 2 * margin)
        return AxisPlan(length, tile, margin, crop, (0,), tile - margin - length)
    count = math.ceil(length / core)
    # spread the work: the smallest accepted tile whose cores still cover the axis in `count`
    even = fit(math.ceil(length / count) + 2 * margin)
    if even < tile and core_size(even, margin, stride) * count >= length:
        tile, core = even, core_size(even, margin, stride)
    last = round_up(length - core, stride)
    starts = tuple(min(i * core, last) for i in range(count))
    return AxisPlan(length, tile, margin, crop, starts, last + tile - margin - length)


def round_up(pixels: int, stride: int) -> int:
    """``pixels`` rounded up to a multiple of ``stride``."""
    return -(-int(pixels) // stride) * stride


def aligned_margin(tile: int, margin: int, stride: int) -> tuple[int, int]:
    """A tile's context margin rounded up to the ``stride`` grid, and the grid its tiles keep:
    ``stride`` itself while a core of at least one grid step is left, else 1 (a tile too small
    for the grid keeps its margin and starts anywhere, as before the grid)."""
    aligned = round_up(margin, stride)
    if core_size(tile, aligned, stride) >= stride:
        return aligned, stride
    return margin, 1


def core_size(tile: int, margin: int, stride: int = 1) -> int:
    """The step between aligned tiles of ``tile`` pixels with ``margin`` of context on each
    side: what is left of the tile, rounded down to the ``stride`` grid."""
    return (tile - 2 * margin) // stride * stride


def mirror_pad(plane: np.ndarray, rows: AxisPlan, cols: AxisPlan) -> np.ndarray:
    """Pad a (C, Y, X) plane by mirroring, as the plans require."""
    widths = ((0, 0), (rows.margin, rows.pad_after), (cols.margin, cols.pad_after))
    if plane.shape[1] == 1 or plane.shape[2] == 1:
        # mirroring a single row or column is undefined; repeat it instead
        return np.pad(plane, widths, mode="edge")
    return np.pad(plane, widths, mode="symmetric")


def axis_window(plan: AxisPlan, blending: str) -> np.ndarray:
    """1D weights over a tile's output: 1 in the core, falling to ~0 at the tile edge."""
    size = plan.tile - 2 * plan.crop
    inner = plan.margin - plan.crop  # output pixels before the core starts
    weights = np.ones(size, dtype=np.float32)
    if inner <= 0:
        return weights
    if blending == "none":
        weights[:inner] = 0.0
        weights[size - inner :] = 0.0
        return weights
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(inner, dtype=np.float32) + 0.5) / inner)
    ramp = np.maximum(ramp, _MIN_WEIGHT)
    weights[:inner] = ramp
    weights[size - inner :] = ramp[::-1]
    return weights


def count_tiles(rows: AxisPlan, cols: AxisPlan) -> int:
    """Number of tiles in a plane's plan."""
    return len(rows.starts) * len(cols.starts)


def iter_predict_plane(
    plane: np.ndarray,
    predictor: Predictor,
    rows: AxisPlan,
    cols: AxisPlan,
    *,
    n_classes: int,
    batch_size: int = 4,
    blending: str = "cosine",
) -> Generator[int, None, np.ndarray]:
    """Predict one plane tile by tile.

    Parameters
    ----------
    plane : ndarray of shape (C, Y, X), float32
        Normalised network input.
    predictor : callable
        Batch (B, C, ty, tx) -> (B, n_classes, ty - 2*crop_y, tx - 2*crop_x).
    rows, cols : AxisPlan
        Tile placement from :func:`plan_axis`.
    n_classes : int
        Number of output channels of the predictor.
    batch_size : int
        Tiles per predictor call.
    blending : {"cosine", "none"}
        How overlapping tile outputs are combined.

    Yields
    ------
    int
        Number of tiles in the batch just predicted.

    Returns
    -------
    ndarray of shape (n_classes, Y, X), float32
        The blended predictor output for the plane.
    """
    if blending not in BLENDINGS:
        raise InputError(
            f"blending {blending!r} is not valid; choose one of {', '.join(BLENDINGS)}"
        )
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    padded = mirror_pad(plane, rows, cols)
    out_y, out_x = rows.tile - 2 * rows.crop, cols.tile - 2 * cols.crop
    accumulator = np.zeros((n_classes, rows.padded, cols.padded), dtype=np.float32)
    weight_sum = np.zeros((rows.padded, cols.padded), dtype=np.float32)
    window = np.outer(axis_window(rows, blending), axis_window(cols, blending))
    origins = [(y, x) for y in rows.starts for x in cols.starts]
    for first in range(0, len(origins), batch_size):
        chunk = origins[first : first + batch_size]
        batch = np.stack([padded[:, y : y + rows.tile, x : x + cols.tile] for y, x in chunk])
        result = np.asarray(predictor(batch), dtype=np.float32)
        expected = (len(chunk), n_classes, out_y, out_x)
        if result.shape != expected:
            raise InputError(f"the predictor returned shape {result.shape}, expected {expected}")
        for (y, x), output in zip(chunk, result, strict=True):
            region = (
                slice(y + rows.crop, y + rows.crop + out_y),
                slice(x + cols.crop, x + cols.crop + out_x),
            )
            accumulator[(slice(None), *region)] += output * window
            weight_sum[region] += window
        yield len(chunk)
    core = (
        slice(rows.margin, rows.margin + rows.length),
        slice(cols.margin, cols.margin + cols.length),
    )
    result_plane = accumulator[(slice(None), *core)]
    result_plane /= weight_sum[core]
    return result_plane

"""Turn image planes into network input, identically in training and in prediction.

A stack is walked plane by plane: every axis other than Y, X, C and S is a *stack axis*. Each
plane is mapped to the model's input channels as its bundle says (``input`` in the config),
then percentile-normalised (``normalization`` in the config).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from napari_unet.core.errors import InputError

CHANNEL_AXES = "CS"
RGB_RULES = ("mean", "luminance", "channel:k")
_LUMINANCE = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
_PERCENTILE_SAMPLE = 1_000_000


def stack_axes_of(axes: str) -> str:
    """The axes that index planes: everything but Y, X, C and S, in order."""
    return "".join(a for a in axes if a not in "YX" + CHANNEL_AXES)


def plane_order(axes: str) -> tuple[tuple[int, ...], str]:
    """Permutation putting stack axes first, then Y, X, then C and S; and the new axes."""
    order = [a for a in stack_axes_of(axes)] + ["Y", "X"] + [a for a in axes if a in CHANNEL_AXES]
    permutation = []
    used: set[int] = set()
    for letter in order:
        index = next(i for i, a in enumerate(axes) if a == letter and i not in used)
        used.add(index)
        permutation.append(index)
    return tuple(permutation), "".join(order)


def labels_axes_of(axes: str) -> str:
    """Axes of the label image predicted for an image with ``axes`` (no C, no S)."""
    return "".join(a for a in axes if a not in CHANNEL_AXES)


def iter_planes(data: Any, axes: str) -> Iterator[tuple[tuple[int, ...], np.ndarray, str]]:
    """Yield ``(index, plane, plane_axes)`` for every plane of a stack.

    ``index`` indexes the stack axes (in their original order); ``plane`` has axes
    ``plane_axes`` = ``"YX"`` followed by any of ``C``, ``S``. ``data`` may be any array-like
    that supports integer and slice indexing (a memory map, a dask array, TiffPages): only one
    plane is read at a time. Planes of an ndarray are views.
    """
    permutation, ordered = plane_order(axes)
    n_stack = len(stack_axes_of(axes))
    stack_positions = permutation[:n_stack]
    remaining = sorted(permutation[n_stack:])  # plane axes, in the order indexing leaves them
    to_plane_order = [remaining.index(p) for p in permutation[n_stack:]]
    for index in np.ndindex(*(data.shape[p] for p in stack_positions)):
        key: list[Any] = [slice(None)] * len(axes)
        for position, i in zip(stack_positions, index, strict=True):
            key[position] = i
        plane = np.asarray(data[tuple(key)]).transpose(to_plane_order)
        yield index, plane, ordered[n_stack:]


def read_plane(data: Any, axes: str, index: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """One plane of a stack and its axes (``YX`` plus any C, S), read without touching the
    other planes (a lazy stack decodes just this one).

    Parameters
    ----------
    data : array-like
        The stack (an ndarray, a memory map, a dask array...).
    axes : str
        Its axes.
    index : tuple of int
        Position along the stack axes (all but Y, X, C and S), in the order of ``axes``.
    """
    positions = [i for i, a in enumerate(axes) if a not in "YX" + CHANNEL_AXES]
    if len(index) != len(positions) or any(
        not 0 <= i < data.shape[p] for i, p in zip(index, positions, strict=False)
    ):
        raise InputError(f"plane {index} is not in a stack of shape {data.shape} ({axes})")
    key: list[Any] = [slice(None)] * len(axes)
    for position, i in zip(positions, index, strict=True):
        key[position] = i
    rest = "".join(a for i, a in enumerate(axes) if i not in positions)
    ((_, plane, plane_axes),) = iter_planes(data[tuple(key)], rest)
    return np.asarray(plane), plane_axes


def plane_count(shape: tuple[int, ...], axes: str) -> int:
    """Number of planes in a stack of this shape and axes."""
    return int(np.prod([n for n, a in zip(shape, axes, strict=True) if a in stack_axes_of(axes)]))


def check_channels(
    shape: tuple[int, ...], axes: str, input_spec: dict[str, Any], channel: int | None
) -> None:
    """Raise InputError before any work when the image's channels cannot feed the model."""
    sizes = dict(zip(axes, shape, strict=True))
    plane_axes = "YX" + "".join(a for a in axes if a in CHANNEL_AXES)
    dummy = np.zeros((1, 1) + tuple(sizes[a] for a in plane_axes[2:]), np.float32)
    to_model_channels(dummy, plane_axes, input_spec, channel)


def to_model_channels(
    plane: np.ndarray, plane_axes: str, input_spec: dict[str, Any], channel: int | None = None
) -> np.ndarray:
    """Map one plane to the model's input channels.

    Parameters
    ----------
    plane : ndarray of shape (Y, X) or (Y, X, C) or (Y, X, S) or (Y, X, C, S)
        Raw pixels of one plane.
    plane_axes : str
        ``"YX"`` followed by any of ``C``, ``S``.
    input_spec : dict
        The bundle's ``input``: ``channels`` (int) and ``rgb`` (``mean``, ``luminance`` or
        ``channel:k``) for colour images fed to a one-channel model.
    channel : int, optional
        Which channel (``C``, or colour sample when there is no ``C``) to use for a
        one-channel model.

    Returns
    -------
    ndarray of shape (channels, Y, X), float32
    """
    wanted = int(input_spec.get("channels", 1))
    x = np.asarray(plane)
    if x.dtype.kind == "c":
        raise InputError("complex-valued images are not supported; convert to magnitude first")
    x = x.astype(np.float32, copy=False)
    axes = plane_axes
    if channel and "C" not in axes and "S" not in axes:
        raise InputError(
            f"channel {channel} does not exist: the image has a single channel (0); "
            "leave the channel unset"
        )
    if "C" in axes:
        n = x.shape[axes.index("C")]
        if channel is not None:
            if not 0 <= channel < n:
                raise InputError(
                    f"channel {channel} does not exist; the image has channels 0..{n - 1}"
                )
            x = np.take(x, channel, axis=axes.index("C"))
            axes = axes.replace("C", "")
        elif n != wanted and not (n == 1 and wanted == 1):
            raise InputError(
                f"the image has {n} channels but the model takes {wanted}; choose one channel "
                f"(0..{n - 1}) with --channel / the channel picker"
            )
        elif n == 1:
            x = np.take(x, 0, axis=axes.index("C"))
            axes = axes.replace("C", "")
    if "S" in axes:
        samples = np.moveaxis(x, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
        colour = samples[..., :3] if samples.shape[-1] >= 3 else samples
        if "C" in axes and wanted > 1:
            raise InputError("images with both channels and colour samples are not supported")
        if wanted == 1:
            if channel is not None and "C" not in plane_axes:
                if not 0 <= channel < samples.shape[-1]:
                    raise InputError(
                        f"channel {channel} does not exist; the image has colour samples 0..{samples.shape[-1] - 1}"
                    )
                x = samples[..., channel]
            else:
                x = _rgb_to_grey(colour, str(input_spec.get("rgb", "luminance")))
            axes = axes.replace("S", "")
        elif colour.shape[-1] == wanted:
            x = np.moveaxis(colour, -1, axes.index("S"))
        else:
            raise InputError(
                f"the model takes {wanted} channels but the image has {colour.shape[-1]} colours"
            )
    if "C" in axes:
        x = np.moveaxis(x, axes.index("C"), 0)
    elif "S" in axes:
        x = np.moveaxis(x, axes.index("S"), 0)
    else:
        x = x[np.newaxis]
    if x.shape[0] != wanted:
        raise InputError(
            f"the model takes {wanted} input channels but the image gives {x.shape[0]}"
        )
    return np.ascontiguousarray(x)


def _rgb_to_grey(colour: np.ndarray, rule: str) -> np.ndarray:
    if colour.shape[-1] < 3:
        return colour.mean(axis=-1)
    if rule == "mean":
        return colour.mean(axis=-1)
    if rule == "luminance":
        return colour @ _LUMINANCE
    if rule.startswith("channel:"):
        k = int(rule.split(":", 1)[1])
        return colour[..., k]
    raise InputError(f"unknown rgb rule {rule!r}; valid: {', '.join(RGB_RULES)}")


def channel_ranges(x: np.ndarray, normalization: dict[str, Any]) -> np.ndarray:
    """The low and high percentiles (``normalization``'s ``low``, ``high``) of each channel.

    Non-finite pixels (NaN, Inf) are ignored; a channel larger than a million pixels is
    sampled at a regular stride.

    Parameters
    ----------
    x : ndarray of shape (C, Y, X)
    normalization : dict
        The bundle's ``normalization``.

    Returns
    -------
    ndarray of shape (C, 2), float64
        ``(low, high)`` per channel; NaN for a channel without a finite pixel.
    """
    low = float(normalization.get("low", 1.0))
    high = float(normalization.get("high", 99.8))
    ranges = np.full((x.shape[0], 2), np.nan)
    for c in range(x.shape[0]):
        channel = x[c]
        finite = np.isfinite(channel)
        sample = channel[finite] if not finite.all() else channel.ravel()
        if sample.size == 0:
            continue
        if sample.size > _PERCENTILE_SAMPLE:
            sample = sample[:: sample.size // _PERCENTILE_SAMPLE]
        ranges[c] = np.percentile(sample, [low, high])
    return ranges


def normalize(
    x: np.ndarray, normalization: dict[str, Any], ranges: np.ndarray | None = None
) -> np.ndarray:
    """Percentile-normalise each channel of ``x`` (shape (C, Y, X)) to roughly [0, 1].

    Non-finite pixels (NaN, Inf) are ignored for the percentiles and set to 0 afterwards.
    A constant channel becomes all zeros.

    ``ranges`` (shape (C, 2), from :func:`channel_ranges`) gives the percentiles measured
    elsewhere: a block of a plane is normalised with its whole plane's values.
    """
    if ranges is None:
        ranges = channel_ranges(x, normalization)
    out = np.empty(x.shape, dtype=np.float32)
    for c in range(x.shape[0]):
        channel = x[c]
        lo, hi = ranges[c]
        if not np.isfinite(lo):
            out[c] = 0.0
            continue
        scale = 1.0 / (hi - lo) if hi > lo else 0.0
        np.subtract(channel, lo, out=out[c])
        out[c] *= scale
        finite = np.isfinite(channel)
        if not finite.all():
            out[c][~finite] = 0.0
    return out


def prepare_plane(
    plane: np.ndarray,
    plane_axes: str,
    config: dict[str, Any],
    channel: int | None = None,
    ranges: np.ndarray | None = None,
) -> np.ndarray:
    """Map a raw plane to normalised network input of shape (channels, Y, X), float32
    (with given percentile ``ranges``, see :func:`normalize`)."""
    return normalize(
        to_model_channels(plane, plane_axes, config["input"], channel),
        config["normalization"],
        ranges,
    )

"""Turn image planes into network input, identically in training and in prediction.

A stack is walked plane by plane: every axis other than Y, X, C and S is a *stack axis*. Each
plane is mapped to the model's input channels as its bundle says (``input`` in the config),
then percentile-normalised (``normalization`` in the config).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet.core.errors import InputError

CHANNEL_AXES = "CS"
RGB_RULES = ("auto", "mean", "luminance", "max", "channel:k")
# measured on the held-out DSB 2018 colour images (benchmarks/results/rgb_input_cpu.txt):
# the bundled nuclei model's AP@0.5 on histology is 0.29 with auto and 0.002 with luminance
DEFAULT_RGB_RULE = "auto"
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


def plane_key(index: tuple[int, ...], axes: str) -> tuple[Any, ...]:
    """Key into an array with ``axes`` of the (Y, X) plane at ``index``.

    ``index`` holds one position per axis other than Y and X, in the array's order.
    """
    positions = iter(index)
    return tuple(slice(None) if a in "YX" else next(positions) for a in axes)


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
    plane: np.ndarray,
    plane_axes: str,
    input_spec: dict[str, Any],
    channel: int | None = None,
    colour: ColourChoice | None = None,
) -> np.ndarray:
    """Map one plane to the model's input channels.

    Parameters
    ----------
    plane : ndarray of shape (Y, X) or (Y, X, C) or (Y, X, S) or (Y, X, C, S)
        Raw pixels of one plane.
    plane_axes : str
        ``"YX"`` followed by any of ``C``, ``S``.
    input_spec : dict
        The bundle's ``input``: ``channels`` (int) and ``rgb`` (``auto``, ``mean``,
        ``luminance``, ``max`` or ``channel:k``, see :func:`choose_colour_input`) for colour
        images fed to a one-channel model.
    channel : int, optional
        Which channel (``C``, or colour sample when there is no ``C``) to use for a
        one-channel model.
    colour : ColourChoice, optional
        A choice made once for a whole stack (:func:`colour_input_of` on one plane), used
        instead of deciding ``input_spec``'s rule on this plane alone: ``auto`` looks at the
        pixels, so the planes of a stack, or the blocks of a large plane, could otherwise
        each choose differently.

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
        colours = samples[..., :3] if samples.shape[-1] >= 3 else samples
        if "C" in axes and wanted > 1:
            raise InputError("images with both channels and colour samples are not supported")
        if wanted == 1:
            if channel is not None and "C" not in plane_axes:
                if not 0 <= channel < samples.shape[-1]:
                    raise InputError(
                        f"channel {channel} does not exist; the image has colour samples 0..{samples.shape[-1] - 1}"
                    )
                x = samples[..., channel]
            elif colour is not None and colours.shape[-1] >= 3:
                x = apply_colour_choice(colours, colour)
            else:
                x = _rgb_to_grey(colours, str(input_spec.get("rgb", DEFAULT_RGB_RULE)))
            axes = axes.replace("S", "")
        elif colours.shape[-1] == wanted:
            x = np.moveaxis(colours, -1, axes.index("S"))
        else:
            raise InputError(
                f"the model takes {wanted} channels but the image has {colours.shape[-1]} colours"
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
    return apply_colour_choice(colour, choose_colour_input(colour, rule))


@dataclass(frozen=True)
class ColourChoice:
    """How a colour plane becomes the one channel of a grey model.

    Attributes
    ----------
    rule : str
        The rule asked for (``auto``, ``mean``, ``luminance``, ``max`` or ``channel:k``).
    channel : int or None
        The colour sample used, or None when the samples are combined (mean, luminance, max).
    invert : bool
        Whether the grey values were inverted (dark objects on a bright background, as in
        bright-field and stained histology, made bright on dark like fluorescence).
    grey : bool
        Whether the colour samples are all equal (a grey image stored as colour).
    """

    rule: str
    channel: int | None
    invert: bool = False
    grey: bool = False


_STATS_SAMPLE = 262_144


def _sample(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1)
    flat = flat[:: max(1, flat.size // _STATS_SAMPLE)]
    return flat[np.isfinite(flat)]


def _two_class_contrast(values: np.ndarray) -> float:
    """The between-class standard deviation of Otsu's split of ``values`` into a dark and a
    bright class: how strongly the values separate into objects and background, in their own
    units (so channels of one colour image compare)."""
    if values.size == 0:
        return 0.0
    lo, hi = np.percentile(values, [1.0, 99.8])
    if not hi > lo:
        return 0.0
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=256, range=(lo, hi))
    p = counts / counts.sum()
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(p)[:-1]
    m0 = np.cumsum(p * centres)[:-1]
    total = float((p * centres).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    between = between[np.isfinite(between)]
    return float(np.sqrt(between.max())) if between.size else 0.0


def _bright_background(values: np.ndarray) -> bool:
    """Whether the most common value (the background: the largest, most uniform region) lies
    in the upper half of the values' 1-99.8 percentile range, as in bright-field images."""
    if values.size == 0:
        return False
    lo, hi = np.percentile(values, [1.0, 99.8])
    if not hi > lo:
        return False
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=64, range=(lo, hi))
    mode = int(np.argmax(counts))
    return bool(0.5 * (edges[mode] + edges[mode + 1]) > 0.5 * (lo + hi))


def choose_colour_input(colour: np.ndarray, rule: str = "auto") -> ColourChoice:
    """Decide how a colour plane (Y, X, S) with 3 or more samples feeds a one-channel model.

    ``auto`` uses the colour sample with the most two-class contrast (the largest
    between-class spread of Otsu's dark/bright split, measured on the 1-99.8 percentile
    range), and inverts it when its background (its most common value) is in the bright half
    of its range, so that dark stained objects on a bright background (bright-field,
    histology) become bright on dark as in fluorescence. The other rules are fixed:
    ``mean``, ``luminance`` (Rec. 709 weights), ``max`` over the samples, ``channel:k``.
    Only the first three samples (not alpha) are considered.
    """
    colour = colour[..., :3]
    samples = [_sample(colour[..., k]) for k in range(colour.shape[-1])]
    grey = all(np.array_equal(samples[0], s) for s in samples[1:])
    if rule in ("mean", "luminance", "max"):
        return ColourChoice(rule, None, grey=grey)
    if rule.startswith("channel:"):
        try:
            k = int(rule.split(":", 1)[1])
        except ValueError:
            k = -1
        if not 0 <= k < colour.shape[-1]:
            raise InputError(
                f"rgb rule {rule!r} names no colour sample; valid: 0..{colour.shape[-1] - 1}"
            )
        return ColourChoice(rule, k, grey=grey)
    if rule != "auto":
        raise InputError(f"unknown rgb rule {rule!r}; valid: {', '.join(RGB_RULES)}")
    channel = 0 if grey else int(np.argmax([_two_class_contrast(s) for s in samples]))
    return ColourChoice(rule, channel, _bright_background(samples[channel]), grey)


def apply_colour_choice(colour: np.ndarray, choice: ColourChoice) -> np.ndarray:
    """The grey plane (Y, X), float32, that ``choice`` makes of ``colour`` (Y, X, S)."""
    colour = colour[..., :3].astype(np.float32, copy=False)
    if choice.channel is not None:
        grey = colour[..., choice.channel]
    elif choice.rule == "mean":
        grey = colour.mean(axis=-1)
    elif choice.rule == "max":
        grey = colour.max(axis=-1)
    else:
        grey = colour @ _LUMINANCE
    if choice.invert:
        # a reflection: percentile normalisation makes the offset irrelevant
        grey = -grey
    return grey.astype(np.float32, copy=False)


def colour_input_of(
    plane: np.ndarray, plane_axes: str, input_spec: dict[str, Any], channel: int | None = None
) -> ColourChoice | None:
    """What :func:`to_model_channels` does with the colours of ``plane`` for a one-channel
    model (``input_spec`` is the bundle's ``input``), or None when it combines no colours
    (a grey image, an image with a C axis, a colour sample picked with ``channel``, or a
    model that takes the colours as its channels). For the GUI and CLI to say what was used,
    with :func:`describe_colour_input`."""
    if "S" not in plane_axes or "C" in plane_axes or channel is not None:
        return None
    if int(input_spec.get("channels", 1)) != 1:
        return None
    samples = np.moveaxis(np.asarray(plane), plane_axes.index("S"), -1)
    if samples.shape[-1] < 3:
        return None
    return choose_colour_input(samples, str(input_spec.get("rgb", DEFAULT_RGB_RULE)))


def describe_colour_input(choice: ColourChoice) -> str:
    """One sentence for the user saying how a colour image was turned into the model's input.

    Examples: ``"colour image: used channel 0 (red, the one with the most contrast),
    inverted (dark objects on a bright background)"``, ``"colour image: luminance (0.21 R +
    0.72 G + 0.07 B)"``, ``"grey image stored as colour: used its grey"``.
    """
    names = ("red", "green", "blue")
    inverted = ", inverted (dark objects on a bright background)" if choice.invert else ""
    if choice.grey:
        return f"grey image stored as colour: used its grey{inverted}"
    if choice.channel is not None:
        why = "the one with the most contrast" if choice.rule == "auto" else "as the model says"
        return f"colour image: used channel {choice.channel} ({names[choice.channel]}, {why}){inverted}"
    return {
        "mean": "colour image: mean of red, green and blue",
        "max": "colour image: brightest of red, green and blue at each pixel",
        "luminance": "colour image: luminance (0.21 R + 0.72 G + 0.07 B)",
    }[choice.rule] + inverted


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
    colour: ColourChoice | None = None,
) -> np.ndarray:
    """Map a raw plane to normalised network input of shape (channels, Y, X), float32
    (with given percentile ``ranges``, see :func:`normalize`; a stack-wide ``colour``
    choice, see :func:`to_model_channels`)."""
    return normalize(
        to_model_channels(plane, plane_axes, config["input"], channel, colour),
        config["normalization"],
        ranges,
    )

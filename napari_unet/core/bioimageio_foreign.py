"""Run a bioimage.io package made by other software, through ``bioimageio.core``.

Packages exported by napari-unet are read by :mod:`napari_unet.core.bioimageio_import`
without this module. Others run here, offline, with their own pre- and post-processing:
TorchScript weights by default; weights that rebuild the network from the package's Python
code (``pytorch_state_dict``) only when the caller opts in, since that runs code from the
file. A 2D model with one input and one output is supported, run on every plane of a stack;
its output becomes labels when it is a single-channel probability (objects: connected
components above a threshold; a probability as its description declares it, by a data range
within [0, 1] or a final sigmoid or softmax) or a single-channel integer class map, and stays
an image otherwise (a denoised or restored image, several channels). Planes of any size run,
in blocks of sizes the model takes. Such a package predicts only: it cannot be fine-tuned.
Needs the ``bioimageio`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.errors import BundleError, EngineError, InputError
from napari_unet.core.inference import Progress
from napari_unet.core.io import Stack
from napari_unet.core.postprocess import default_min_size, remove_small
from napari_unet.core.preprocess import CHANNEL_AXES, iter_planes, plane_count, stack_axes_of
from napari_unet.core.seed_level import DEFAULT_LEVEL

SAFE_FORMATS = ("torchscript",)
CODE_FORMATS = ("pytorch_state_dict",)
PLANE_AXES = {"batch", "channel", "y", "x"}
EXTRA = 'pip install "napari-unet[bioimageio]"'
KINDS = ("objects", "classes", "image")
# the prediction options a package does not use: its own processing decides these
UNUSED_OPTIONS = ("mode", "tile_size", "overlap", "batch_size", "rgb", "diameter", "tta")
TORCHSCRIPT_FAILED = "The following operation failed in the TorchScript interpreter"
BLOCK_N = 10  # largest block size parameter n, as bioimageio.core's default


@dataclass(frozen=True)
class ForeignPackage:
    """A package from other software, checked and ready to run (its weights not loaded).

    Attributes
    ----------
    path : Path
    description : bioimageio.spec model description (latest format)
    weight_format : str
        The weights that will run.
    kind : {"objects", "classes", "image"}
        What its output becomes: objects from a single-channel probability, classes from a
        single-channel integer map, an image otherwise.
    channels : int
        Input channels the model takes.
    """

    path: Path
    description: Any
    weight_format: str
    kind: str
    channels: int


@dataclass(frozen=True)
class PackageResult:
    """What a foreign package made of a stack.

    Attributes
    ----------
    data : ndarray
        ``objects``: uint32 object ids, unique across the stack (planes are not linked);
        ``classes``: uint32 class indices; ``image``: float32 output. Axes as in ``axes``.
    kind : {"objects", "classes", "image"}
    axes : str
        Letters of ``data``'s axes: the stack axes, then ``C`` for an image of several
        channels, then ``YX``.
    weight_format : str
        The weights that ran.
    name : str
        The package's name, as its description gives it.
    objects : int
        Objects found (``objects`` only; 0 otherwise).
    """

    data: np.ndarray
    kind: str
    axes: str
    weight_format: str
    name: str
    objects: int = 0


def open_package(path: str | os.PathLike[str], *, allow_code: bool = False) -> ForeignPackage:
    """Load a package's description and choose the weights to run, without running them.

    Parameters
    ----------
    path : path-like
        A ``.zip`` package, its folder or its description file.
    allow_code : bool
        Allow weights whose architecture is Python code shipped in the package.

    Returns
    -------
    ForeignPackage

    Raises
    ------
    BundleError
        Without the ``bioimageio`` extra; for a package that is not a valid model, that
        needs weights from the internet, whose weights cannot run here, or whose tensors are
        not a 2D plane (each named with why).
    """
    try:
        from bioimageio.spec import InvalidDescr, load_description
    except ImportError as error:
        raise BundleError(
            f"{path} is a bioimage.io package from other software; running it needs the "
            f"optional extra: {EXTRA}"
        ) from error
    # older (0.4) descriptions are converted, so that axes are always objects with ids
    description = load_description(Path(path), format_version="latest", perform_io_checks=False)
    if isinstance(description, InvalidDescr) or getattr(description, "type", None) != "model":
        raise BundleError(f"{path} is not a valid bioimage.io model description")
    entries = {
        name: getattr(description.weights, name)
        for name in (*SAFE_FORMATS, *CODE_FORMATS)
        if getattr(description.weights, name) is not None
    }
    remote = sorted(name for name, entry in entries.items() if "://" in str(entry.source))
    local = [name for name in entries if name not in remote]
    for name in (*SAFE_FORMATS, *(CODE_FORMATS if allow_code else ())):
        if name in local:
            _check_plane_model(description, path)
            (tensor,), (output,) = description.inputs, description.outputs
            return ForeignPackage(
                Path(path),
                description,
                name,
                _output_kind(output),
                _channel_count(tensor),
            )
    present = sorted(
        name
        for name in type(description.weights).model_fields
        if getattr(description.weights, name) is not None
    )
    if remote:
        why = f"its {', '.join(remote)} weights are on the internet, and napari-unet runs offline"
    elif "pytorch_state_dict" in local:
        why = (
            "its only usable weights rebuild the network from Python code in the package; "
            "allow the package's code to run them (it executes code from the file): "
            "--allow-package-code, or tick 'run the Python code in this package' in the "
            "Segment panel"
        )
    else:
        why = f"it has {', '.join(present)} weights; napari-unet runs TorchScript or PyTorch"
    raise BundleError(f"{path} cannot run here: {why}")


def _check_plane_model(description: Any, path: str | os.PathLike[str]) -> None:
    """Refuse models that do not take and give one 2D plane (with batch and channels)."""
    if len(description.inputs) != 1 or len(description.outputs) != 1:
        raise BundleError(f"{path}: only models with one input and one output are supported")
    for tensor in (*description.inputs, *description.outputs):
        axes = {str(axis.id) for axis in tensor.axes}
        if not axes <= PLANE_AXES or not {"y", "x"} <= axes:
            raise BundleError(
                f"{path}: tensor {tensor.id} has axes {sorted(axes)}; only 2D models "
                "(batch, channel, y, x) are supported"
            )


def _channel_count(tensor: Any) -> int:
    """Channels of a tensor description (1 without a channel axis)."""
    return next((len(a.channel_names) for a in tensor.axes if str(a.id) == "channel"), 1)


def _output_kind(output: Any) -> str:
    """``objects``, ``classes`` or ``image``: what an output tensor becomes (see KINDS).

    One channel of integers is a class map. One float channel is a probability only when
    the description says so: a declared data range within [0, 1], or a sigmoid or softmax as
    its last postprocessing step (``ensure_dtype`` steps, which ``bioimageio.spec`` adds,
    aside). Any other output (a restored image, several channels) is an image.
    """
    if _channel_count(output) != 1:
        return "image"
    data = output.data[0] if isinstance(output.data, list | tuple) else output.data
    if str(getattr(data, "type", "float32")).startswith(("int", "uint", "bool")):
        return "classes"
    low, high = getattr(data, "range", (None, None))
    bounded = low is not None and high is not None and 0 <= low and high <= 1
    steps = [step.id for step in output.postprocessing if step.id != "ensure_dtype"]
    squashed = bool(steps) and steps[-1] in ("sigmoid", "softmax")
    return "objects" if bounded or squashed else "image"


def iter_predict_package(
    stack: Stack,
    package: ForeignPackage,
    *,
    channel: int | None = None,
    threshold: float | None = None,
    min_size: int | None = None,
    device: str = "auto",
) -> Generator[Progress, None, PackageResult]:
    """Run a foreign package on every plane of a stack, with its own pre- and post-processing.

    Parameters
    ----------
    stack : Stack
        The image; each (Y, X) plane (with its channels, if any) is one sample of the model.
    package : ForeignPackage
        From :func:`open_package`.
    channel : int, optional
        The channel to give a single-channel model from a multichannel image.
    threshold : float or None
        Probability above which a single-channel probability output is foreground; None:
        :data:`~napari_unet.core.seed_level.DEFAULT_LEVEL` (0.5). The choice from the
        network's confidence that napari-unet's own models get needs their interior and
        boundary classes, which another package's output does not have.
    min_size : int, optional
        Smallest object kept from a probability output, in pixels (default: 10).
    device : {"auto", "cpu", "cuda", "mps"}
        Where the package runs; ``auto`` lets ``bioimageio.core`` choose.

    Yields
    ------
    Progress
        After loading the weights, then after every plane.

    Returns
    -------
    PackageResult

    Raises
    ------
    InputError
        When the image's channels do not fit the model's input.
    EngineError
        When the package fails while running (its message is kept).
    """
    from bioimageio.core import Tensor, create_prediction_pipeline
    from bioimageio.core.digest_spec import create_sample_for_model

    planes = plane_count(stack.data.shape, stack.axes)
    sizes = dict(zip(stack.axes, stack.data.shape, strict=True))
    _check_channels(sizes, stack.axes, package.channels, channel)
    yield Progress(0, planes, "loading the package's weights")
    try:
        pipeline = create_prediction_pipeline(
            package.description,
            weight_format=package.weight_format,
            devices=None if device == "auto" else [device],
        )
    except Exception as error:  # any failure of the package's own code or weights
        raise EngineError(
            f"{package.path}: its weights could not be loaded ({_cause(error)})"
        ) from error
    (tensor,) = package.description.inputs
    axes = [str(axis.id) for axis in tensor.axes]
    plane_size = (sizes["Y"], sizes["X"])
    padded, ns = _blocks_for(tensor, plane_size)
    outputs: list[np.ndarray] = []
    next_id = 0
    smallest = default_min_size(None) if min_size is None else min_size
    level = DEFAULT_LEVEL if threshold is None else threshold
    with pipeline:
        for done, (_, plane, plane_axes) in enumerate(iter_planes(stack.data, stack.axes), 1):
            pixels = _as_model_input(_pad_plane(plane, padded), plane_axes, axes, channel)
            try:
                sample = pipeline.predict_sample_with_blocking(
                    create_sample_for_model(
                        package.description, inputs=Tensor(pixels, dims=axes), sample_id=done
                    ),
                    ns=ns,
                )
            except Exception as error:  # the package's processing or network failed
                raise EngineError(
                    f"{package.path} failed on plane {done} ({_cause(error)})"
                ) from error
            (output,) = sample.members.values()
            values = _crop_plane(_as_plane_output(output.data, package), plane_size, padded)
            if package.kind == "objects":
                values = remove_small(_connected(values > level), smallest)
                values = np.where(values > 0, values + np.uint32(next_id), 0).astype(np.uint32)
                next_id = max(next_id, int(values.max()))
            outputs.append(values)
            yield Progress(done, planes, "predicting with the package")
    stacked = np.stack(outputs).reshape(
        *(sizes[a] for a in stack_axes_of(stack.axes)), *outputs[0].shape
    )
    letters = stack_axes_of(stack.axes) + ("C" if outputs[0].ndim == 3 else "") + "YX"
    return PackageResult(
        stacked, package.kind, letters, package.weight_format, package.description.name, next_id
    )


def _blocks_for(
    tensor: Any, plane_size: tuple[int, int]
) -> tuple[tuple[int, int], dict[tuple[Any, Any], int]]:
    """How a plane of ``plane_size`` (rows, columns) fits the model's input rule.

    A plane smaller than the smallest size the model takes is padded up to it; a larger one
    is split by ``bioimageio.core`` into blocks of a size the model takes (at most
    ``min + BLOCK_N * step``, and never more than the plane), overlapping at its end.

    Returns
    -------
    padded : tuple of int
        The plane's size once padded.
    ns : dict
        The block size parameter ``n`` of each parameterized axis, keyed by (tensor id,
        axis id), for ``predict_sample_with_blocking``.
    """
    from bioimageio.spec.model.v0_5 import ParameterizedSize

    padded = dict(zip(("y", "x"), plane_size, strict=True))
    ns = {}
    for axis in tensor.axes:
        name, size = str(axis.id), axis.size
        if name not in padded:
            continue
        if isinstance(size, ParameterizedSize):
            padded[name] = max(padded[name], size.min)
            ns[(tensor.id, axis.id)] = min(BLOCK_N, (padded[name] - size.min) // size.step)
        elif isinstance(size, int):
            padded[name] = max(padded[name], size)
    return (padded["y"], padded["x"]), ns


def _pad_plane(plane: np.ndarray, padded: tuple[int, int]) -> np.ndarray:
    """A (Y, X, ...) plane mirrored at its bottom and right edges up to ``padded``."""
    extra = [(0, want - have) for want, have in zip(padded, plane.shape[:2], strict=True)]
    if not any(after for _, after in extra):
        return plane
    return np.pad(plane, extra + [(0, 0)] * (plane.ndim - 2), mode="symmetric")


def _crop_plane(
    values: np.ndarray, plane_size: tuple[int, int], padded: tuple[int, int]
) -> np.ndarray:
    """The part of an output (..., Y, X) that covers the plane before its padding (an output
    scaled against its input keeps the same fraction)."""
    rows, columns = (
        round(out * have / want)
        for out, have, want in zip(values.shape[-2:], plane_size, padded, strict=True)
    )
    return values[..., :rows, :columns]


def _cause(error: BaseException) -> str:
    """The first meaningful line of a package's error, for a one-line message.

    A TorchScript error opens with a fixed sentence and two tracebacks: its last line is the
    error itself. A first line that ends with a colon is kept with the line after it.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].startswith(TORCHSCRIPT_FAILED):
        return lines[-1].removeprefix("builtins.")
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def _check_channels(sizes: dict[str, int], axes: str, channels: int, channel: int | None) -> None:
    """Raise InputError before any work when the image's channels cannot feed the model."""
    present = [sizes[a] for a in axes if a in CHANNEL_AXES]
    have = int(np.prod(present)) if present else 1
    if channel is not None:
        if not present or not 0 <= channel < have:
            raise InputError(f"channel {channel} does not exist: the image has {have} channel(s)")
        have = 1
    if have != channels:
        hint = " (choose one with the channel option)" if channels == 1 else ""
        raise InputError(
            f"the package's model takes {channels} channel(s); the image has {have}{hint}"
        )


def _as_model_input(
    plane: np.ndarray, plane_axes: str, axes: list[str], channel: int | None
) -> np.ndarray:
    """A (Y, X[, C, S]) plane as the model's input array, in the order of its ``axes``."""
    pixels = np.asarray(plane, dtype=np.float32).reshape(*plane.shape[:2], -1)
    pixels = np.moveaxis(pixels, -1, 0)  # (C, Y, X)
    if channel is not None:
        pixels = pixels[channel : channel + 1]
    array, present = pixels[np.newaxis], ["batch", "channel", "y", "x"]
    for name in ("batch", "channel"):  # axes the model's input does not have
        if name not in axes:
            array = array.squeeze(axis=present.index(name))
            present.remove(name)
    return np.transpose(array, [present.index(a) for a in axes])


def _as_plane_output(data: Any, package: ForeignPackage) -> np.ndarray:
    """The output of one plane: (Y, X) uint32 for labels, (C, Y, X) float32 for an image of
    several channels, (Y, X) float32 for one."""
    if "batch" in data.dims:
        data = data.isel(batch=0)
    dims = [str(d) for d in data.dims]
    values = np.asarray(data.transpose(*[d for d in ("channel", "y", "x") if d in dims]))
    if package.kind == "image":
        values = values.astype(np.float32).reshape(-1, *values.shape[-2:])
        return values[0] if len(values) == 1 else values
    values = values.reshape(values.shape[-2:])
    if package.kind == "classes":
        if values.size and values.min() < 0:
            raise EngineError(f"{package.path}: its class map holds negative values")
        return values.astype(np.uint32)
    return values


def _connected(mask: np.ndarray) -> np.ndarray:
    """Connected components of a boolean plane (4-connected), as int64 ids."""
    from scipy import ndimage as ndi

    objects, _ = ndi.label(mask)
    return objects.astype(np.int64)

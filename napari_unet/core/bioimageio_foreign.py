"""Run a bioimage.io package made by other software, through ``bioimageio.core``.

Packages exported by napari-unet are read by :mod:`napari_unet.core.bioimageio_import`
without this module. Others run here, offline, with their own pre- and post-processing:
TorchScript weights by default; weights that rebuild the network from the package's Python
code (``pytorch_state_dict``) only when the caller opts in, since that runs code from the
file. A 2D model with one input and one output is supported; its output becomes labels when
it is a single-channel probability (objects: connected components above a threshold) or a
class map (integers), and stays an image otherwise. Needs the ``bioimageio`` extra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.errors import BundleError, InputError
from napari_unet.core.postprocess import remove_small

SAFE_FORMATS = ("torchscript",)
CODE_FORMATS = ("pytorch_state_dict",)
PLANE_AXES = {"batch", "channel", "y", "x"}


@dataclass(frozen=True)
class PackageResult:
    """What a foreign package made of one plane.

    Attributes
    ----------
    data : ndarray
        ``labels``: (Y, X) uint32 object ids or class indices; ``image``: the output with
        its batch axis removed, axes as in ``axes``.
    kind : {"labels", "image"}
    axes : str
        Axis ids of ``data`` joined by commas, e.g. ``"y,x"`` or ``"channel,y,x"``.
    weight_format : str
        The weights that ran.
    """

    data: np.ndarray
    kind: str
    axes: str
    weight_format: str


def open_package(path: str | os.PathLike[str], *, allow_code: bool = False) -> tuple[Any, str]:
    """Load a package's description and choose the weights to run, without running them.

    Parameters
    ----------
    path : path-like
        A ``.zip`` package, its folder or its description file.
    allow_code : bool
        Allow weights whose architecture is Python code shipped in the package.

    Returns
    -------
    description : bioimageio.spec model description
    weight_format : str

    Raises
    ------
    BundleError
        Without the ``bioimageio`` extra; for a package that is not a valid model, that
        needs weights from the internet, or whose weights cannot run here (named with why).
    """
    try:
        from bioimageio.spec import InvalidDescr, load_description
    except ImportError as error:
        raise BundleError(
            "running bioimage.io packages from other software needs the optional extra: "
            'pip install "napari-unet[bioimageio]"'
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
            return description, name
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
            "allow the package's code to run them (it executes code from the file)"
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


def predict_with_package(
    plane: np.ndarray,
    path: str | os.PathLike[str],
    *,
    allow_code: bool = False,
    threshold: float = 0.5,
    min_size: int = 10,
) -> PackageResult:
    """Run a foreign package on one plane, with its own pre- and post-processing.

    Parameters
    ----------
    plane : ndarray of shape (Y, X) or (C, Y, X)
        Raw pixels of one plane, channels first.
    path : path-like
        The package.
    allow_code : bool
        As in :func:`open_package`.
    threshold : float
        Probability above which a single-channel output is foreground.
    min_size : int
        Smallest object kept from a single-channel probability, in pixels.

    Returns
    -------
    PackageResult

    Raises
    ------
    BundleError
        As :func:`open_package`.
    InputError
        When the plane's channels do not fit the model's input.
    """
    from bioimageio.core import create_prediction_pipeline, predict

    description, weight_format = open_package(path, allow_code=allow_code)
    pixels = np.asarray(plane, dtype=np.float32)
    pixels = pixels[np.newaxis] if pixels.ndim == 2 else pixels
    (tensor,) = description.inputs
    axes = [str(axis.id) for axis in tensor.axes]
    channels = next((len(a.channel_names) for a in tensor.axes if str(a.id) == "channel"), 1)
    if pixels.shape[0] != channels:
        raise InputError(f"the model takes {channels} channel(s); the plane has {pixels.shape[0]}")
    array, present = pixels[np.newaxis], ["batch", "channel", "y", "x"]
    for name in ("batch", "channel"):  # axes the model's input does not have
        if name not in axes:
            array = array.squeeze(axis=present.index(name))
            present.remove(name)
    array = np.transpose(array, [present.index(a) for a in axes])
    pipeline = create_prediction_pipeline(description, weight_format=weight_format, devices=["cpu"])
    sample = predict(model=pipeline, inputs=array)  # loads and unloads the weights itself
    (output,) = sample.members.values()
    data = output.data
    if "batch" in data.dims:
        data = data.isel(batch=0)
    dims = [str(d) for d in data.dims]
    values = np.asarray(data.transpose(*[d for d in ("channel", "y", "x") if d in dims]))
    kept = [d for d in ("channel", "y", "x") if d in dims]
    if values.ndim == 3 and values.shape[0] == 1:
        values, kept = values[0], ["y", "x"]
    if values.ndim == 2 and values.dtype.kind in "iub":
        return PackageResult(values.astype(np.uint32), "labels", "y,x", weight_format)
    if values.ndim == 2:
        from scipy import ndimage as ndi

        objects, _ = ndi.label(values > threshold)
        labels = remove_small(objects.astype(np.int64), min_size)
        return PackageResult(labels, "labels", "y,x", weight_format)
    return PackageResult(values, "image", ",".join(kept), weight_format)

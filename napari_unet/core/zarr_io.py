"""OME-Zarr in and out: read a multiscale image or a plain Zarr array as a :class:`Stack`;
write labels as a multiscale OME-Zarr label image.

Labels are written in NGFF 0.4 (Zarr format 2), which the readers people use today (Fiji's
N5/Zarr plugins, MoBIE, QuPath, napari-ome-zarr) understand; 0.5 needs Zarr format 3, which
several of them cannot read yet. Reading accepts 0.4 and 0.5 through ome-zarr-py.

An output is built in a temporary folder next to its final name and renamed when complete:
a reader never sees half a label image, and nothing is ever written into the user's own Zarr.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.atomic import PARTIAL_SUFFIX
from napari_unet.core.errors import ImageReadError, InputError
from napari_unet.core.io import ZARR_SUFFIXES, Stack, check_axes

LABELS_SUFFIX = "_labels.ome.zarr"
NGFF_AXES = "TCZYX"  # the axes NGFF can express, in the order it requires
# our unit symbols -> the unit names NGFF allows (UDUNITS-2); the reverse on reading
_TO_NGFF_UNIT = {
    "µm": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "inch": "inch",
    "s": "second",
    "sec": "second",
    "ms": "millisecond",
    "min": "minute",
    "h": "hour",
}
_FROM_NGFF_UNIT = {
    "micrometer": "µm",
    "nanometer": "nm",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
    "inch": "inch",
    "second": "s",
    "millisecond": "ms",
    "minute": "min",
    "hour": "h",
}
_MIN_LEVEL_EDGE = 256  # a pyramid level is added only if its larger edge reaches this
_MAX_LEVELS = 6


def is_url(source: str | os.PathLike[str]) -> bool:
    """True for a remote store address (``https://``, ``s3://``...)."""
    return "://" in str(source)


def is_zarr(source: str | os.PathLike[str]) -> bool:
    """True for a Zarr store: a ``.zarr`` folder or URL, or a folder holding Zarr metadata."""
    text = str(source).rstrip("/")
    if text.lower().endswith(ZARR_SUFFIXES):
        return True
    if is_url(text):
        return False
    path = Path(text)
    return path.is_dir() and any(
        (path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray")
    )


def read_zarr(source: str | os.PathLike[str], *, axes: str | None = None, level: int = 0) -> Stack:
    """Open an OME-Zarr image (or a plain Zarr array) lazily as a :class:`Stack`.

    Parameters
    ----------
    source : path-like or str
        A local folder or a URL the Zarr store understands.
    axes : str, optional
        Axis letters overriding the file's (required for a plain array of more than two
        dimensions, whose axes are otherwise unknown: ``I``).
    level : int
        Resolution level of a multiscale image (0 is the full resolution).

    Returns
    -------
    Stack
        ``data`` is a dask array: nothing is read until planes are asked for.

    Raises
    ------
    ImageReadError
        If the store cannot be opened or holds neither an image nor an array.
    """
    return read_zarr_pyramid(source, axes=axes, level=level)[0]


def read_zarr_pyramid(
    source: str | os.PathLike[str], *, axes: str | None = None, level: int = 0
) -> tuple[Stack, list[Any], bool]:
    """Like :func:`read_zarr`, with every resolution level's dask array (largest first) and
    whether the image is a label image (NGFF ``image-label``)."""
    import dask.array as da
    import zarr

    text = str(source)
    try:
        node = zarr.open(text, mode="r")
    except Exception as error:  # zarr raises many kinds for a missing or foreign store
        raise ImageReadError(f"{text}: not a readable Zarr store ({error})") from error
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    labels = False
    if isinstance(node, zarr.Array):
        levels = [da.from_zarr(node)]
        ndim = levels[0].ndim
        found = "YX" if ndim == 2 else "I" * (ndim - 2) + "YX"
    else:
        from ome_zarr.writer import get_metadata

        multiscale, levels = _open_multiscale(text)
        if not 0 <= level < len(levels):
            raise InputError(
                f"{text} has {len(levels)} resolution levels (0-{len(levels) - 1}); "
                f"level {level} does not exist"
            )
        found, scale, units = _axes_scale_units(multiscale, level)
        labels = "image-label" in get_metadata(node)
    path = None if is_url(text) else Path(text)
    stack = Stack(levels[level], found, scale, units, path)
    if axes is not None:
        axes = axes.upper()
        check_axes(axes, stack.data.shape)
        stack.axes = axes
    return stack, levels[level:], labels


def _open_multiscale(source: str) -> tuple[dict[str, Any], list[Any]]:
    """The multiscale image of an OME-Zarr group: its metadata and levels.

    The group's own image comes first: ome-zarr's reader also follows a label image's
    ``image-label.source`` link and may list the image it points to before it.
    """
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    with _quiet("ome_zarr"):  # it logs warnings about versions and "source" links
        location = parse_url(source, mode="r")
        nodes = list(Reader(location)()) if location is not None else []
    nodes.sort(key=lambda node: node.zarr != location)  # stable: the group's own first
    for node in nodes:
        if node.load(Multiscales) is not None:
            return node.metadata, list(node.data)
    raise ImageReadError(f"{source}: a Zarr group without an OME-Zarr multiscale image")


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a library's log messages below errors for the time of a call."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _axes_scale_units(
    metadata: dict[str, Any], level: int
) -> tuple[str, dict[str, float], dict[str, str]]:
    """Our axis letters, scale and units from ome-zarr-py's metadata of a multiscale image."""
    axes_meta = metadata.get("axes") or [{"name": n} for n in "tczyx"[-2:]]
    letters = ""
    units: dict[str, str] = {}
    for axis in axes_meta:
        name = axis["name"] if isinstance(axis, dict) else str(axis)
        letter = name.upper() if name.upper() in NGFF_AXES else "I"
        letters += letter
        unit = axis.get("unit") if isinstance(axis, dict) else None
        if unit and letter != "I":
            units[letter] = _FROM_NGFF_UNIT.get(unit, unit)
    scale: dict[str, float] = {}
    transforms = metadata.get("coordinateTransformations") or []
    for transform in transforms[level] if level < len(transforms) else []:
        if transform.get("type") == "scale":
            for letter, value in zip(letters, transform["scale"], strict=False):
                # NGFF wants a scale on every axis: 1 without a unit is "not known"
                if letter in "TZYX" and (letter in units or float(value) != 1.0):
                    scale[letter] = float(value)
    return letters, scale, units


def labels_path(directory: str | os.PathLike[str], name: str) -> Path:
    """Where the labels of the image ``name`` go: ``DIR/<name>_labels.ome.zarr``."""
    return Path(directory) / f"{name}{LABELS_SUFFIX}"


def check_zarr_output(
    path: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    *,
    overwrite: bool = False,
) -> Path:
    """Refuse, before any work, an OME-Zarr output that must not or cannot be written: one
    that exists (without ``overwrite``), is not a folder, is or lies inside one of the
    ``inputs`` (never into the user's own Zarr), or whose folder cannot be written to.

    Returns
    -------
    Path
    """
    from napari_unet.core.atomic import check_output

    path = Path(path)
    resolved = path.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if resolved == source or source in resolved.parents:
            raise InputError(
                f"{path} is inside the input {source}; choose another output folder, "
                "napari-unet never writes into its inputs"
            )
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{path} exists and is not an OME-Zarr folder; choose another name")
        if not overwrite:
            raise InputError(f"{path} exists; pass --overwrite to replace it")
    check_output(path.with_name(f".{path.name}.check"), overwrite=True)  # the folder is writable
    return path


def check_expressible(axes: str) -> None:
    """Raise InputError when NGFF cannot describe these label axes (unnamed ``I`` axes)."""
    if "I" in axes:
        raise InputError(
            f"OME-Zarr cannot describe the label axes {axes!r} (only t, c, z, y, x); give the "
            "axes with --axes or write TIFF with --format tif"
        )


def write_labels_zarr(
    path: str | os.PathLike[str],
    labels: Any,
    *,
    axes: str,
    scale: dict[str, float] | None = None,
    units: dict[str, str] | None = None,
    source: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a multiscale OME-Zarr (NGFF 0.4) label image, atomically.

    Parameters
    ----------
    path : path-like
        Destination folder, normally ``<name>_labels.ome.zarr``.
    labels : ndarray, dask array or Zarr array of int
        Label ids (uint32, or uint64 past 2**32 objects); a dask or Zarr array is written chunk
        by chunk, from whichever scheduler is active. The store's chunks hold one plane (of
        every axis but Y and X) and the array's own Y/X chunks (block-aligned).
    axes : str
        One letter per dimension of ``labels`` among T, Z, Y, X (reordered to NGFF's order).
    scale, units : dict, optional
        Physical pixel size and unit per axis letter; units NGFF does not name are dropped.
    source : path-like or str, optional
        The image the labels were predicted from (recorded in ``image-label.source``).
    overwrite : bool
        Replace an existing output; without it an existing path is an error.

    Returns
    -------
    Path
    """
    import dask.array as da
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    path = Path(path)
    check_axes(axes, labels.shape)
    check_expressible(axes)
    if "C" in axes:
        raise InputError(f"labels have no channel axis, got axes {axes!r}")
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; pass --overwrite to replace it")
    order = [axes.index(a) for a in NGFF_AXES if a in axes]
    ngff_axes = "".join(axes[i] for i in order)
    if isinstance(labels, da.Array):
        level0 = labels
    elif isinstance(labels, np.ndarray):
        level0 = da.from_array(labels)
    else:  # an array on disk (core.disk_labels): read chunk by chunk, never whole
        level0 = da.from_array(labels, chunks=labels.chunks)
    level0 = level0.transpose(order)
    # a chunk per plane (a viewer reads one plane at a time), Y/X chunks as the array's own
    chunks = (*(1 for _ in level0.shape[:-2]), *level0.chunksize[-2:])
    if level0.dtype.kind not in "iu":
        raise InputError(f"labels must be integers, got {level0.dtype}")
    scale = scale or {}
    units = units or {}
    base = [float(scale.get(a, 1.0)) for a in ngff_axes]
    fmt = FormatV04()
    label_meta: dict[str, Any] = {"version": fmt.version}
    if source is not None:
        label_meta["source"] = {"image": _relative_source(source, path)}
    with _partial_folder(path, overwrite=overwrite) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        datasets = []
        level, factor = level0, 1
        while True:
            name = f"s{len(datasets)}"
            target = group.create_array(
                name,
                shape=level.shape,
                chunks=chunks,
                dtype=level.dtype,
                chunk_key_encoding={"name": "v2", "separator": "/"},
                fill_value=0,
            )
            level.rechunk(chunks).store(target, lock=False)
            # nearest neighbour by striding: pixel i of a level is pixel 2i of the one above,
            # so the grids share their origin (no translation)
            datasets.append(
                {
                    "path": name,
                    "coordinateTransformations": [
                        {"type": "scale", "scale": base[:-2] + [v * factor for v in base[-2:]]}
                    ],
                }
            )
            if max(level.shape[-2:]) < 2 * _MIN_LEVEL_EDGE or len(datasets) == _MAX_LEVELS:
                break
            level = da.from_zarr(target)[..., ::2, ::2]
            factor *= 2
        write_multiscales_metadata(
            group,
            datasets,
            fmt=fmt,
            axes=ngff_axes.lower(),
            axes_units={
                a.lower(): _TO_NGFF_UNIT[units[a]]
                for a in ngff_axes
                if units.get(a) in _TO_NGFF_UNIT and a in scale
            }
            or None,
            name=path.name,
        )
        add_metadata(group, {"image-label": label_meta}, fmt=fmt)
    return path


def _relative_source(source: str | os.PathLike[str], path: Path) -> str:
    """``image-label.source.image``: the input relative to the label image, or its URL."""
    if is_url(source):
        return str(source)
    return os.path.relpath(Path(source).resolve(), path.resolve())


@contextmanager
def _partial_folder(path: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success rename it to ``path``.

    An existing ``path`` is only replaced with ``overwrite`` (it is moved aside first and
    removed once the new one is in place); otherwise a ``path`` created meanwhile makes it
    an InputError and the new one is removed. On failure the temporary folder is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"pid{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.with_name(f".{path.name}.{token}{PARTIAL_SUFFIX}")
    old = path.with_name(f".{path.name}.old.{token}{PARTIAL_SUFFIX}")  # stale-partial rule
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise InputError(
                    f"{path} was created by another program while this one worked; nothing "
                    "was replaced"
                )
            os.replace(path, old)
        os.replace(tmp, path)  # a folder cannot be renamed onto a non-empty folder
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)

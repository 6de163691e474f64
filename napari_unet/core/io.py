"""Read image stacks with their axes and physical scale; write label images.

Axis letters used throughout napari-unet:

``T`` time, ``Z`` depth, ``C`` channel, ``Y`` row, ``X`` column, ``S`` colour sample (RGB/A),
``I`` independent planes whose relation is unknown (never z-linked).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.atomic import atomic_path
from napari_unet.core.disk_labels import iter_planes_of, largest_label
from napari_unet.core.errors import ImageReadError, InputError
from napari_unet.core.resources import available_memory, format_memory
from napari_unet.core.tiff_pages import TiffPages

AXIS_LETTERS = "TZCYXSI"
TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
ZARR_SUFFIXES = (".ome.zarr", ".zarr")  # folders (core/zarr_io.py reads them)
LAZY_BYTES = 256 * 2**20  # larger TIFFs are memory-mapped or read plane by plane
SUPPORTED_DTYPES = "bool, uint8, uint16, uint32, int8, int16, int32, float16, float32, float64"


@dataclass
class Stack:
    """An image with named axes.

    Attributes
    ----------
    data : ndarray or TiffPages
        Pixel data: for files over ``LAZY_BYTES``, a read-only memory map (uncompressed) or a
        :class:`~napari_unet.core.tiff_pages.TiffPages` that decodes planes on demand.
    axes : str
        One letter per dimension of ``data`` (see the module docstring), e.g. ``"ZYX"``.
    scale : dict of str to float
        Physical pixel size per axis letter (``Y``, ``X``, ``Z``, ``T``), where known.
    units : dict of str to str
        Unit per axis letter where known (e.g. ``"micron"``).
    path : Path or None
        Where it was read from.
    series : int
        Which image of a multi-image file (TIFF series, e.g. the positions of an OME-TIFF).
    series_count : int
        How many images the file holds (the others are read with ``series=k``).
    """

    data: np.ndarray
    axes: str
    scale: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    series: int = 0
    series_count: int = 1

    def __post_init__(self) -> None:
        check_axes(self.axes, self.data.shape)

    @property
    def name(self) -> str:
        """File name without its image suffix (``a.ome.tif`` -> ``a``), and the series of a
        multi-image file (``a [series 2]``)."""
        name = strip_image_suffix(self.path.name) if self.path else "image"
        return f"{name} [series {self.series}]" if self.series_count > 1 else name

    @property
    def series_notice(self) -> str | None:
        """What to tell the user when the file holds more images than the one read."""
        if self.series_count < 2:
            return None
        return (
            f"{self.path.name if self.path else 'the file'} holds {self.series_count} images "
            f"(series 0-{self.series_count - 1}); using series {self.series}"
        )


def strip_image_suffix(name: str) -> str:
    """Remove ``.ome.tif``, ``.tif``, ``.tiff``, ``.png``, ``.ome.zarr``... from a name."""
    lower = name.lower()
    for suffix in TIFF_SUFFIXES + RASTER_SUFFIXES + ZARR_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_axes(axes: str, shape: tuple[int, ...]) -> None:
    """Raise InputError unless ``axes`` names each dimension of ``shape`` once, Y and X included."""
    if len(axes) != len(shape):
        raise InputError(
            f"axes {axes!r} name {len(axes)} dimensions but the image has {len(shape)} "
            f"(shape {tuple(shape)})"
        )
    bad = sorted(set(axes) - set(AXIS_LETTERS))
    if bad:
        raise InputError(
            f"unknown axis letter(s) {bad} in {axes!r}; use letters from {AXIS_LETTERS}"
        )
    repeated = sorted({a for a in axes if axes.count(a) > 1 and a != "I"})
    if repeated:
        raise InputError(f"axis letter(s) {repeated} appear more than once in {axes!r}")
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"axes {axes!r} must include Y and X")


def read_image(
    path: str | os.PathLike[str], *, axes: str | None = None, series: int | None = None
) -> Stack:
    """Read a TIFF/OME-TIFF/ImageJ hyperstack, PNG or JPEG with its axes and scale.

    Parameters
    ----------
    path : path-like
        The image file.
    axes : str, optional
        Override the axes found in the file (one letter per dimension, e.g. ``"ZYX"``).
    series : int, optional
        Which image of a multi-image TIFF to read (default the first; the returned Stack
        says how many there are).

    Returns
    -------
    Stack

    Raises
    ------
    ImageReadError
        If the file is missing, empty, corrupt or of an unsupported kind or dtype.
    InputError
        If ``axes`` does not fit the data.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"{path} is a folder; give an image file inside it")
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes)")
    lower = path.name.lower()
    if lower.endswith(TIFF_SUFFIXES) and not _starts_like_raster(path):
        stack = _read_tiff(path, series or 0)
    elif lower.endswith(TIFF_SUFFIXES + RASTER_SUFFIXES):  # incl. a PNG saved as .tif
        if series:
            raise InputError(f"{path} holds one image; series {series} does not exist")
        stack = _read_raster(path)
    else:
        raise ImageReadError(
            f"{path}: unsupported file type; napari-unet reads .tif/.tiff (incl. OME and ImageJ), "
            ".png and .jpg"
        )
    _check_pixels(stack.data, path)
    if axes is not None:
        axes = axes.upper()
        check_axes(axes, stack.data.shape)
        stack = replace(stack, axes=axes)
    return stack


def _starts_like_raster(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(8)
    return head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"))


def _check_pixels(data: np.ndarray, path: Path) -> None:
    if data.size == 0:
        raise ImageReadError(f"{path}: the image has no pixels (shape {data.shape})")
    if data.dtype.kind not in "biuf" or data.dtype.itemsize > 8:
        raise ImageReadError(
            f"{path}: pixel type {data.dtype} is not supported; use one of {SUPPORTED_DTYPES}"
        )


def _read_raster(path: Path) -> Stack:
    import imageio.v3 as iio

    try:
        data = np.asarray(iio.imread(path))
    except Exception as error:  # imageio raises many types for corrupt files
        raise ImageReadError(f"{path}: cannot be read as an image ({error})") from error
    if data.ndim == 2:
        axes = "YX"
    elif data.ndim == 3 and data.shape[-1] in (3, 4):
        axes = "YXS"
    elif data.ndim == 3 and data.shape[-1] in (1, 2):
        axes = "YXC"
    else:
        raise ImageReadError(f"{path}: unexpected image shape {data.shape}")
    return Stack(data, axes, path=path)


def _read_tiff(path: Path, index: int) -> Stack:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageReadError(f"{path}: the TIFF holds no image")
            count = len(tif.series)
            if not 0 <= index < count:
                raise InputError(
                    f"{path} holds {count} image(s) (series 0-{count - 1}); series {index} "
                    "does not exist"
                )
            series = tif.series[index]
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            raw_axes = series.axes
            axes = _canonical_tiff_axes(raw_axes, tif, series)
            scale, units = _tiff_scale(tif, series, axes, index)
            data = _tiff_pixels(tif, series, shape, dtype, path, index)
    except (ImageReadError, InputError):
        raise
    except Exception as error:  # tifffile raises TiffFileError, ValueError, OSError...
        raise ImageReadError(
            f"{path}: not a readable TIFF ({type(error).__name__}: {error})"
        ) from error
    if data.shape != shape:
        raise ImageReadError(f"{path}: the TIFF's pages do not match its metadata (truncated?)")
    return Stack(data, axes, scale, units, path, series=index, series_count=count)


def _tiff_pixels(
    tif: Any, series: Any, shape: tuple[int, ...], dtype: np.dtype, path: Path, index: int
) -> np.ndarray | TiffPages:
    """Load the pixels; files over ``LAZY_BYTES`` are memory-mapped when uncompressed and read
    page by page on demand (:class:`TiffPages`) when compressed, never loaded whole."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes <= LAZY_BYTES:
        return series.asarray()
    import tifffile

    try:
        mapped = tifffile.memmap(path, series=index, mode="r")
        if mapped.shape == shape or mapped.size == np.prod(shape):
            return mapped.reshape(shape)
    except Exception:  # compressed or not contiguous: cannot be mapped
        pass
    available = available_memory()
    try:
        pages = TiffPages(path, series=index)
    except ImageReadError as error:  # data missing from the file
        raise ImageReadError(f"{path}: {error}") from error
    except Exception:  # pages that do not tile the series: read whole if it fits
        pages = None
    if pages is not None and pages.shape == shape:
        page_bytes = int(np.prod(pages.page_shape, dtype=np.int64)) * dtype.itemsize
        if page_bytes <= available:
            try:
                pages.check_first_page()
            except ImageReadError:
                pages.close()
                raise
            return pages
        pages.close()
        raise ImageReadError(
            f"{path}: one page of this compressed TIFF needs {format_memory(page_bytes)} but only "
            f"{format_memory(available)} of memory is free; save it uncompressed (it will be "
            "memory-mapped) or as smaller tiles"
        )
    if pages is not None:
        pages.close()
    if nbytes > available:
        raise ImageReadError(
            f"{path}: the image needs {format_memory(nbytes)} but only {format_memory(available)} of memory "
            "is free, and its layout cannot be read plane by plane; save it uncompressed, or "
            "as one page per plane, or split it"
        )
    return series.asarray()


def _canonical_tiff_axes(raw: str, tif: Any, series: Any) -> str:
    """Map tifffile's axis letters to ours; axes it cannot know become ``I``."""
    if tif.is_imagej and raw == "CYX":
        meta = tif.imagej_metadata or {}
        if meta.get("mode", "grayscale") == "grayscale" and "axes" not in meta:
            # tifffile labels an ImageJ stack without hyperstack axes as channels: unknown
            return "IYX"
    if raw == "SYX":  # a plain 3xYxX (or 4xYxX) file: planar RGB or three planes, unknown
        return "IYX"
    known = set("TZCYXS")
    return "".join(letter if letter in known else "I" for letter in raw)


def _tiff_scale(
    tif: Any, series: Any, axes: str, index: int
) -> tuple[dict[str, float], dict[str, str]]:
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pixels = [el for el in root.iter() if el.tag.endswith("Pixels")][index]
            for axis in "XYZ":
                size = pixels.get(f"PhysicalSize{axis}")
                if size:
                    scale[axis] = float(size)
                    units[axis] = pixels.get(f"PhysicalSize{axis}Unit", "µm")
            if pixels.get("TimeIncrement"):
                scale["T"] = float(pixels.get("TimeIncrement"))
                units["T"] = pixels.get("TimeIncrementUnit", "s")
        except (ET.ParseError, IndexError, ValueError):
            pass
        return scale, units
    page = series.pages[0] if series.pages else tif.pages[0]
    tags = page.tags
    unit = None
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        unit = meta.get("unit")
        if meta.get("spacing"):
            scale["Z"] = float(meta["spacing"])
        if meta.get("finterval"):
            scale["T"] = float(meta["finterval"])
            units["T"] = "s"
    for axis, tag_name in (("X", "XResolution"), ("Y", "YResolution")):
        tag = tags.get(tag_name)
        if tag is None:
            continue
        numerator, denominator = tag.value
        if numerator and denominator and (tif.is_imagej or tags.get("ResolutionUnit")):
            pixels_per_unit = numerator / denominator
            if pixels_per_unit > 0 and not (pixels_per_unit == 1 and not tif.is_imagej):
                scale[axis] = 1.0 / pixels_per_unit
    if scale.get("X") is not None and not unit:
        resolution_unit = tags.get("ResolutionUnit")
        unit = {2: "inch", 3: "cm"}.get(int(resolution_unit.value) if resolution_unit else 0)
    if unit:
        unit = "µm" if unit in ("micron", "um", "\\u00B5m") else unit
        for axis in "XYZ":
            if axis in scale:
                units[axis] = unit
    return {k: v for k, v in scale.items() if k in axes}, {
        k: v for k, v in units.items() if k in axes
    }


def write_labels(
    path: str | os.PathLike[str],
    labels: Any,
    *,
    axes: str,
    scale: dict[str, float] | None = None,
    units: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label image atomically, one plane at a time.

    uint16 when the largest label fits (as an ImageJ hyperstack when the axes allow it, so
    Fiji shows scale and axes), otherwise uint32 as OME-TIFF; labels with several unnamed
    (``I``) axes, which OME cannot describe, keep their shape in tifffile's JSON description.

    Parameters
    ----------
    path : path-like
        Destination ``.tif``.
    labels : ndarray of int, or an array on disk
        Non-negative integer labels; an array on disk (:mod:`napari_unet.core.disk_labels`)
        is read plane by plane, never whole.
    axes : str
        One letter per dimension of ``labels`` (no ``C`` or ``S``).
    scale, units : dict, optional
        Physical pixel size and unit per axis letter.
    overwrite : bool
        Replace an existing file; otherwise an existing path is an error.
    """
    import tifffile

    path = _new_file(path, labels.shape, axes, overwrite)
    if labels.dtype.kind not in "biu":
        raise InputError(f"labels must be integers, got {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and int(np.min(labels)) < 0:
        raise InputError("labels must not be negative")
    top = largest_label(labels)
    scale = scale or {}
    units = units or {}
    dtype = np.dtype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)
    data = _planes_as(labels, dtype)
    imagej_order = "".join(a for a in "TZYX" if a in axes)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=overwrite) as tmp:
        if dtype == np.uint16 and axes == imagej_order:
            metadata: dict[str, Any] = {"axes": axes}
            if "Z" in scale:
                metadata["spacing"] = scale["Z"]
            if "T" in scale:
                metadata["finterval"] = scale["T"]
            unit = units.get("X") or units.get("Y")
            if unit:
                metadata["unit"] = "micron" if unit in ("µm", "um") else unit
            resolution = None
            if "X" in scale and "Y" in scale:
                resolution = (1.0 / scale["X"], 1.0 / scale["Y"])
            tifffile.imwrite(
                tmp,
                data,
                shape=labels.shape,
                dtype=dtype,
                imagej=True,
                metadata=metadata,
                resolution=resolution,
                compression="zlib",
            )
        elif axes.count("I") > 1:  # OME allows one unnamed axis: keep the shape in JSON
            tifffile.imwrite(
                tmp,
                data,
                shape=labels.shape,
                dtype=dtype,
                metadata={"axes": axes.replace("I", "Q")},
                compression="zlib",
            )
        else:
            tifffile.imwrite(
                tmp,
                data,
                shape=labels.shape,
                dtype=dtype,
                ome=True,
                metadata=_ome_metadata(axes, scale, units),
                compression="zlib",
            )
    return path


def write_image(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    axes: str,
    scale: dict[str, float] | None = None,
    units: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a float32 image (a model's non-label output) atomically as an OME-TIFF.

    Parameters
    ----------
    path : path-like
        Destination ``.tif``.
    image : ndarray
        Any real values; stored as float32.
    axes : str
        One letter per dimension of ``image`` (``C`` allowed, at most one ``I``).
    scale, units : dict, optional
        Physical pixel size and unit per axis letter (X, Y, Z are recorded).
    overwrite : bool
        Replace an existing file; otherwise an existing path is an error.
    """
    import tifffile

    path = _new_file(path, image.shape, axes, overwrite)
    metadata = _ome_metadata(axes, scale or {}, units or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tifffile.imwrite(
            tmp, np.asarray(image, np.float32), ome=True, metadata=metadata, compression="zlib"
        )
    return path


def _new_file(
    path: str | os.PathLike[str], shape: tuple[int, ...], axes: str, overwrite: bool
) -> Path:
    """The path an array of ``shape`` and ``axes`` is about to be written to, checked: the
    axes fit the shape, and an existing file is replaced only with ``overwrite``."""
    path = Path(path)
    check_axes(axes, shape)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass overwrite to replace it")
    return path


def _ome_metadata(axes: str, scale: dict[str, float], units: dict[str, str]) -> dict[str, Any]:
    """OME-TIFF metadata of an array: its axes (``I`` written as OME's ``Q``) and the
    physical pixel sizes and units of X, Y and Z where known."""
    metadata: dict[str, Any] = {"axes": axes.replace("I", "Q")}
    for axis in "XYZ":
        if axis in scale:
            metadata[f"PhysicalSize{axis}"] = scale[axis]
            if axis in units:
                metadata[f"PhysicalSize{axis}Unit"] = units[axis]
    return metadata


def _planes_as(labels: Any, dtype: np.dtype) -> Any:
    """The labels in ``dtype``: an ndarray already so as it is, else one plane at a time
    (a stack's labels are never copied whole while they are written)."""
    if isinstance(labels, np.ndarray) and labels.dtype == dtype:
        return labels
    if labels.ndim <= 2:
        return np.asarray(labels).astype(dtype)
    return (plane.astype(dtype) for _, plane in iter_planes_of(labels))

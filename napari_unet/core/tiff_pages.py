"""A read-only, array-like view of a TIFF series that decodes pages only when indexed.

Used for large compressed TIFFs, which cannot be memory-mapped: segmentation walks a stack
plane by plane, so only the planes in use are ever decoded and held in memory.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.errors import ImageReadError


class TiffPages:
    """Array-like over the pages of one TIFF series (``shape``, ``dtype``, indexing).

    Indexing with integers and slices on the leading (page) axes decodes just the pages it
    touches; ``numpy.asarray`` decodes everything. The file stays open until :meth:`close`.

    Parameters
    ----------
    path : path-like
        The TIFF file.
    series : int
        Index of the series in the file.

    Raises
    ------
    ValueError
        When the series' pages do not tile its shape (such files are read whole instead).
    ImageReadError
        When a page's data lie past the end of the file or are too short for the page (a
        truncated or corrupt file): found now rather than when the page is first needed.
    """

    def __init__(self, path: str | Path, series: int = 0) -> None:
        import tifffile

        self.path = Path(path)
        self._series_index = series
        self._tif = tifffile.TiffFile(self.path)
        try:
            found = self._tif.series[series]
            self.shape = tuple(int(n) for n in found.shape)
            self.dtype = np.dtype(found.dtype)
            page_shape = tuple(int(n) for n in found.keyframe.shape)
            n_inner = len(page_shape)
            if n_inner == 0 or self.shape[len(self.shape) - n_inner :] != page_shape:
                raise ValueError(f"pages of shape {page_shape} do not tile {self.shape}")
            self._lead_shape = self.shape[: len(self.shape) - n_inner]
            if int(np.prod(self._lead_shape, dtype=np.int64)) != len(found.pages):
                raise ValueError("the series has fewer pages than its shape needs (truncated?)")
            _check_page_data(found, self.path.stat().st_size)
        except Exception:
            self._tif.close()
            raise
        self._lock = threading.Lock()

    @property
    def page_shape(self) -> tuple[int, ...]:
        """Shape of one page (the trailing axes)."""
        return self.shape[len(self._lead_shape) :]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = self._full_key(key)
        n_lead = len(self._lead_shape)
        picks = [np.arange(n)[k] for n, k in zip(self._lead_shape, key[:n_lead], strict=True)]
        inner = key[n_lead:]
        kept_shape = tuple(p.size for p in picks if p.ndim == 1)
        pages = [
            self._page(int(np.ravel_multi_index(combo, self._lead_shape)))[inner]
            for combo in itertools.product(*(np.atleast_1d(p) for p in picks))
        ]
        if not pages:  # an empty selection
            inner_shape = np.empty(self.page_shape, dtype=self.dtype)[inner].shape
            return np.empty(kept_shape + inner_shape, dtype=self.dtype)
        return np.stack(pages).reshape(kept_shape + pages[0].shape)

    def close(self) -> None:
        """Close the file."""
        self._tif.close()

    def check_first_page(self) -> None:
        """Decode the first page, so that a header that does not match the pixel data (found in
        every page) is reported when the file is opened, not when segmentation reaches it.

        Raises
        ------
        ImageReadError
            When the page cannot be decoded.
        """
        self._page(0)

    def _page(self, index: int) -> np.ndarray:
        try:
            with self._lock:
                page = self._tif.asarray(key=index, series=self._series_index)
            return page.reshape(self.page_shape)
        except Exception as error:  # tifffile and the codecs raise many kinds
            raise ImageReadError(
                f"{self.path}: page {index} cannot be decoded ({type(error).__name__}: {error})"
            ) from error

    def _full_key(self, key: Any) -> tuple[Any, ...]:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is None or isinstance(k, np.ndarray | list) for k in key):
            raise IndexError("TiffPages supports integers, slices and Ellipsis only")
        if Ellipsis in key:
            at = key.index(Ellipsis)
            fill = self.ndim - (len(key) - 1)
            key = key[:at] + (slice(None),) * fill + key[at + 1 :]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for an array of {self.ndim} dimensions")
        return key + (slice(None),) * (self.ndim - len(key))


def _check_page_data(series: Any, file_size: int) -> None:
    """Raise :class:`ImageReadError` if any page's data cannot be in the file."""
    keyframe = series.keyframe
    for number, page in enumerate(series.pages):
        extents = zip(page.dataoffsets, page.databytecounts, strict=True)
        stored = 0
        for offset, count in extents:
            if offset + count > file_size:
                raise ImageReadError(
                    f"page {number} of the TIFF points past the end of the file (truncated?)"
                )
            stored += count
        if keyframe.compression == 1 and stored < keyframe.nbytes:
            raise ImageReadError(
                f"page {number} of the TIFF holds {stored} bytes but its size needs "
                f"{keyframe.nbytes} (corrupt header?)"
            )

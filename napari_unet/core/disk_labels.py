"""Label arrays on disk, so that segmenting a large stack does not hold its labels in memory.

:func:`iter_predict <napari_unet.core.inference.iter_predict>` writes each plane's labels into
whatever array it is given and links objects through Z two planes at a time, so the labels of
a stack can live in a Zarr array in a temporary folder while they are made, and be copied to
their final file plane by plane. The folder sits next to the output (same file system, same
free space) under a temporary name (:mod:`napari_unet.core.atomic`'s rule), so a killed run's
folder is recognised and removed by :func:`~napari_unet.core.atomic.remove_stale_partials`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.atomic import PARTIAL_SUFFIX

CHUNK_EDGE = 1024  # Y/X edge of a chunk; one chunk per plane along every other axis

LabelMaker = Callable[[tuple[int, ...]], Any]


def labels_in_memory(shape: tuple[int, ...]) -> np.ndarray:
    """A uint32 label array of ``shape`` in memory, all zeros."""
    return np.zeros(shape, dtype=np.uint32)


def label_array(
    path: str | os.PathLike[str], shape: tuple[int, ...], dtype: Any = np.uint32
) -> Any:
    """A new all-zero Zarr label array at ``path``: chunks of one plane and at most
    :data:`CHUNK_EDGE` pixels along Y and X, compressed."""
    import zarr

    chunks = (*(1 for _ in shape[:-2]), *(min(n, CHUNK_EDGE) for n in shape[-2:]))
    return zarr.create_array(
        str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0, zarr_format=3
    )


@contextmanager
def labels_on_disk(next_to: str | os.PathLike[str]) -> Iterator[LabelMaker]:
    """Yield a maker of uint32 label arrays stored in a temporary folder beside ``next_to``.

    Parameters
    ----------
    next_to : path-like
        The output the labels are for; the folder is ``.<name>.work.pid<PID>-<token>.partial``
        in its folder.

    Yields
    ------
    callable
        ``make(shape)`` returns a new all-zero uint32 :func:`label_array` of that shape. The
        folder is made
        at the first call; it and every array in it are removed when the block ends, whether
        it succeeds or fails, and so are the folders made for it that stayed empty (a run
        refused or failed leaves nothing behind).
    """
    next_to = Path(next_to)
    token = f"pid{os.getpid()}-{secrets.token_hex(4)}"
    folder = next_to.with_name(f".{next_to.name}.work.{token}{PARTIAL_SUFFIX}")
    missing = [p for p in (folder.parent, *folder.parent.parents) if not p.exists()]
    made = 0

    def make(shape: tuple[int, ...]) -> Any:
        nonlocal made
        if not made:
            folder.mkdir(parents=True, exist_ok=True)
        made += 1
        return label_array(folder / f"labels{made}", shape)

    try:
        yield make
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for parent in missing:  # deepest first; one that now holds the output stays
            with contextlib.suppress(OSError):
                parent.rmdir()


def iter_planes_of(labels: Any) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Each (Y, X) plane of a label array in memory or on disk, with its index, in C order."""
    for index in np.ndindex(*labels.shape[:-2]):
        yield index, np.asarray(labels[index])


def largest_label(labels: Any) -> int:
    """The largest value of a label array, read one plane at a time (0 when empty)."""
    if isinstance(labels, np.ndarray):
        return int(labels.max()) if labels.size else 0
    return max((int(plane.max()) for _, plane in iter_planes_of(labels) if plane.size), default=0)

"""Segment one large image on a Dask cluster: blocks with halos, merged across their faces.

The image is cut into a grid of Y/X blocks (every other axis whole; Z too, unless a block of
all its planes would not fit in a worker: then into slabs, see :func:`default_z_block`). Each block
is read with a halo wide enough for the tiles' context and the largest object, segmented on a
worker by :func:`~napari_unet.core.inference.iter_predict` (the single-process engine, with
the whole image's normalisation percentiles and one object diameter for every block), and
cropped back to its own pixels. Its objects are numbered 1..n and written, chunk-aligned,
into a work store next to the output; with them the block keeps a *frame*: the ids it gave the
pixels one step outside its own, which belong to its neighbours. An object cut by a face is
then seen twice on each frame: as this block's id and as the neighbour's. Pairs whose
pixels on the frame overlap with an IoU of at least :data:`MERGE_IOU` are the same object
(two distinct objects touching across a face overlap little there, so a plain adjacency test
would fuse them); the pairs form a graph whose connected components (scipy) are the final
objects, numbered 1..N in the order of the blocks.

A finished block leaves a marker in the work folder; a run started again with the same plan
skips those blocks. A block whose task raises is run once more and then fails the run with
its coordinates; a worker that dies loses nothing finished, and the scheduler reruns its
unfinished blocks elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, WorkerPlugin, as_completed, get_worker

from napari_unet.core.atomic import PARTIAL_SUFFIX, atomic_path
from napari_unet.core.diameter import GIVEN_BAND, rescale_factor
from napari_unet.core.errors import EngineError, InputError
from napari_unet.core.inference import (
    Progress,
    context_margin,
    decide_colour,
    iter_predict,
    labels_memory,
    nominal_tile,
    prediction_memory,
)
from napari_unet.core.io import LAZY_BYTES, Stack
from napari_unet.core.options import PredictOptions
from napari_unet.core.preprocess import (
    ColourChoice,
    channel_ranges,
    describe_colour_input,
    iter_planes,
    labels_axes_of,
    to_model_channels,
)
from napari_unet.core.seed_level import PlaneLevel
from napari_unet.core.tiling import aligned_margin, core_size, round_up
from napari_unet.core.version import __version__

MERGE_IOU = 0.5  # least IoU, on a block's frame, of two ids that are one object
DEFAULT_WINDOW = 3072  # most pixels along a default block's window edge (block and halos)
_BLOCK_MEMORY_SHARE = 0.5  # of a worker's memory, for one block's prediction
_PLAN_FILE = "plan.json"
CONNECT_TIMEOUT = "30s"  # to reach a scheduler
# a worker resource: one network at a time per worker holding it (see `connect`)
MODEL_SLOT = "napari-unet-model"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
ADAPTED_MMAP_THRESHOLD = 32 * 2**20  # the most glibc raises its mmap threshold to on 64-bit
CLIENT_READ_BYTES = LAZY_BYTES  # larger images have their plane percentiles measured by workers


@dataclass(frozen=True)
class Block:
    """One block of the grid: its own pixels (``core``) and what is read (``outer``).

    Attributes
    ----------
    grid : tuple of int
        (slab, row, column) in the block grid; slabs split Z, when it is split.
    core, outer : tuple of slice
        Planes (Z; ``slice(0, 1)`` without a Z axis), rows and columns of the image;
        ``outer`` is ``core`` plus the halo, clipped.
    """

    grid: tuple[int, int, int]
    core: tuple[slice, slice, slice]
    outer: tuple[slice, slice, slice]

    def where(self) -> str:
        """``block (0, 0, 1): rows 0-511, columns 512-1023`` (and its planes when Z is
        split) for messages."""
        (z0, z1), (r0, r1), (c0, c1) = ((s.start, s.stop - 1) for s in self.core)
        planes = f"planes {z0}-{z1}, " if self.grid[0] or self.outer[0] != self.core[0] else ""
        return f"block {self.grid}: {planes}rows {r0}-{r1}, columns {c0}-{c1}"


@dataclass(frozen=True)
class ImageSource:
    """How a worker reads its window of the image: reopened from a path (a shared file
    system or a URL) or sliced from an array sent with the task.

    Attributes
    ----------
    axes : str
        Axes of the image.
    path : str or None
        TIFF file, Zarr folder or URL, reopened by each worker.
    series : int or None
        Series of a multi-image TIFF.
    array : array-like or None
        The pixels themselves when there is no path (an ndarray or a dask array).
    """

    axes: str
    path: str | None = None
    series: int | None = None
    array: Any = None

    def open(self) -> Any:
        """The image's (lazy) array."""
        if self.path is None:
            return self.array
        from napari_unet.core.zarr_io import is_zarr, read_zarr

        if is_zarr(self.path):
            return read_zarr(self.path, axes=self.axes).data
        from napari_unet.core.io import read_image

        return read_image(self.path, axes=self.axes, series=self.series).data

    def window(self, planes: slice, rows: slice, cols: slice) -> np.ndarray:
        """Planes (Z, if the image has it), rows and columns; other axes whole."""
        where = {"Z": planes, "Y": rows, "X": cols}
        key = tuple(where.get(a, slice(None)) for a in self.axes)
        window = self.open()[key]
        if hasattr(window, "compute"):  # a lazy (dask) image: read here, not through the cluster
            window = window.compute(scheduler="sync")
        return np.asarray(window)


@dataclass(frozen=True)
class DistributedPrediction:
    """The result of :func:`iter_predict_blocks`.

    Attributes
    ----------
    labels : dask array
        Final labels (uint32, uint64 past 2**32 objects) of the image's non-channel axes,
        chunked like the block grid; computed from the work store, so write it before
        :func:`discard_work`.
    axes, mode : str
    class_names : list of str
    stats : dict
        ``blocks``, ``block_size``, ``z_block`` (planes per block; None: all), ``halo``,
        ``resumed`` (blocks already done),
        ``objects``, ``merged_pairs``, ``predict_seconds``, ``merge_seconds``, ``diameter``,
        ``levels`` (the one :class:`~napari_unet.core.seed_level.PlaneLevel` of every block
        of an instance segmentation; none in semantic mode), ``colour_input`` (the sentence
        of the colour input every block used; None for grey).
    """

    labels: Any
    axes: str
    mode: str
    class_names: list[str]
    stats: dict[str, Any]


@dataclass(frozen=True, eq=False)
class BlockLabels(Progress):
    """Progress after a block finished, with its labels (``iter_predict_blocks(...,
    show_blocks=True)``), to show them before the run ends.

    Attributes
    ----------
    where : tuple of slice
        The block's own pixels in the labels (whose axes are
        :attr:`DistributedPrediction.axes`).
    labels : ndarray
        The labels there: class indices, or object ids made unique across the blocks shown
        (a block's ids plus the objects of the blocks shown before it); an object cut by a
        block face has one id on each side until the merge.
    """

    where: tuple[slice, ...] = ()
    labels: np.ndarray | None = None


class BundlePlugin(WorkerPlugin):
    """Loads the model once per worker from the bytes of its file (no path needs to exist on
    the worker) and checks that the worker runs the same napari-unet as the client."""

    def __init__(self, data: bytes, torch_threads: int | None) -> None:
        self.data = data
        self.torch_threads = torch_threads
        self.version = __version__
        digest = hashlib.sha256(data).hexdigest()[:16]
        self.name = f"napari-unet-model-{digest}-{torch_threads}"
        self.bundle: Any = None

    def setup(self, worker: Any) -> None:
        if self.version != __version__:
            raise EngineError(
                f"worker {worker.address} runs napari-unet {__version__}, the client "
                f"{self.version}; install the same version on every worker"
            )
        import torch

        from napari_unet.core.bundle import load_bundle_bytes

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        restore_malloc_thresholds()
        self.bundle = load_bundle_bytes(self.data)


def restore_malloc_thresholds() -> bool:
    """Give back glibc's adaptive allocation thresholds where Dask's nanny froze them.

    The nanny starts workers with ``MALLOC_TRIM_THRESHOLD_`` set (to return freed memory to
    the system). Setting it also stops glibc from raising its mmap threshold above 128 KiB, so
    every large buffer torch allocates for a layer is mapped, zero-filled by page faults and
    unmapped again: a block ran ~20% slower on a worker than in one process
    (``benchmarks/RESULTS.md``). The thresholds glibc adapts to on its own (32 MiB for mmap,
    twice that for trimming) are set instead. Nothing happens without the variable or
    outside glibc (macOS, Windows, musl).

    Returns
    -------
    bool
        Whether the thresholds were set.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mapped = libc.mallopt(M_MMAP_THRESHOLD, ADAPTED_MMAP_THRESHOLD)
        trimmed = libc.mallopt(M_TRIM_THRESHOLD, 2 * ADAPTED_MMAP_THRESHOLD)
        return bool(mapped and trimmed)
    except (OSError, AttributeError):  # not glibc
        return False


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    scheduler_file: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    *,
    processes: bool = True,
    as_default: bool = True,
) -> Iterator[tuple[Client, int | None]]:
    """A Dask client: on a scheduler's address, through a scheduler file, or on a new local
    cluster (``scheduler="local"``), closed on exit.

    A local cluster runs ``workers`` processes (threads of this process when ``processes``
    is False), with the cores shared out among them: each worker has as many Dask threads as
    torch threads and one :data:`MODEL_SLOT`, so it runs one network at a time (using its
    cores through torch) while lighter tasks (plane percentiles, the final write) use all its
    threads. Yields the client and the torch threads per worker to use (None for an
    existing cluster, whose workers are set up by whoever started them). ``as_default``: dask
    computations of this process run on the cluster while the client is open (a viewer keeps
    reading its own lazy layers locally with False).
    """
    if workers is not None and scheduler != "local":
        raise InputError("--workers starts a local cluster: use it with --scheduler local")
    if scheduler and scheduler_file:
        raise InputError("give either --scheduler or --scheduler-file, not both")
    if scheduler == "local":
        from distributed import LocalCluster

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        workers = workers or max(1, min(4, (cores or 1) // 2))
        if not 1 <= workers <= 1024:
            raise InputError(f"--workers must be in [1, 1024], got {workers}")
        threads = max(1, (cores or 1) // workers)
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=threads,
                resources={MODEL_SLOT: 1},
                processes=processes,
                dashboard_address=":0",
                silence_logs=40,
            ) as cluster,
            Client(cluster, set_as_default=as_default) as client,
        ):
            yield client, threads
        return
    try:
        if scheduler_file:
            client = Client(
                scheduler_file=str(scheduler_file),
                timeout=CONNECT_TIMEOUT,
                set_as_default=as_default,
            )
        else:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=as_default)
    except (OSError, TimeoutError) as error:
        raise InputError(
            f"cannot reach the Dask scheduler {scheduler or scheduler_file}: {error}"
        ) from error
    with client:
        yield client, None


def plan_blocks(
    shape: tuple[int, int, int],
    block_size: int,
    halo: int,
    z_block: int | None = None,
    z_halo: int = 0,
) -> list[Block]:
    """The grid of blocks over a (depth, height, width) image, slab by slab, row by row:
    ``block_size`` in Y and X with ``halo``; ``z_block`` planes (default all) with
    ``z_halo``."""
    if block_size < 16:
        raise InputError(f"block size must be at least 16 pixels, got {block_size}")
    depth, height, width = shape
    z_block = z_block or depth
    blocks = []
    for k, z0 in enumerate(range(0, depth, z_block)):
        for r, y0 in enumerate(range(0, height, block_size)):
            for c, x0 in enumerate(range(0, width, block_size)):
                z1 = min(z0 + z_block, depth)
                y1, x1 = min(y0 + block_size, height), min(x0 + block_size, width)
                blocks.append(
                    Block(
                        (k, r, c),
                        (slice(z0, z1), slice(y0, y1), slice(x0, x1)),
                        (
                            slice(max(0, z0 - z_halo), min(depth, z1 + z_halo)),
                            slice(max(0, y0 - halo), min(height, y1 + halo)),
                            slice(max(0, x0 - halo), min(width, x1 + halo)),
                        ),
                    )
                )
    return blocks


def block_halo(bundle: Any, options: PredictOptions) -> int:
    """Halo in image pixels: the tiles' context margin plus two object diameters, so every
    object reaching into a block is whole, and seen with full context, in its window;
    on the image's grid (:func:`block_grid`)."""
    geometry = _TileGeometry.of(bundle, options)
    halo = math.ceil(geometry.context / geometry.factor + 2 * geometry.diameter)
    return round_up(halo, block_grid(bundle, options))


def block_grid(bundle: Any, options: PredictOptions) -> int:
    """The grid block edges and halos keep, in image pixels: the network's ``2**depth`` when
    the image is segmented at the model's scale, so every window starts on it and so do its
    tiles (:func:`~napari_unet.core.tiling.plan_axis`), and a block's tiles see their pixels
    as the single process's do; 1 when the image is rescaled, where no image grid maps onto
    the network's."""
    return bundle.network.size_multiple if _TileGeometry.of(bundle, options).factor == 1 else 1


def default_block_size(
    stack: Stack, bundle: Any, options: PredictOptions, worker_memory: int | None
) -> int:
    """The default block edge: the block's window (the block and a halo on each side) spans
    a whole number of tile cores, so the window is tiled with full tiles of the size the
    single process uses, none of them partly wasted. Of those, the largest whose window is
    at most :data:`DEFAULT_WINDOW` pixels (or one block at least a tile wide, for larger
    tiles) and whose prediction fits in half a worker's memory; the tile size when none fits."""
    geometry = _TileGeometry.of(bundle, options)
    halo = block_halo(bundle, options)
    tile = options.tile_size

    stride = bundle.network.size_multiple
    if geometry.core < 1:  # plan_axis refuses such a tile with the reason
        raise InputError(f"tile size {geometry.tile} leaves no core after its context margin")

    def block(cores: int) -> int:  # a window of `cores` tile cores, at the network's scale
        return math.floor(cores * geometry.core / geometry.factor) // stride * stride - 2 * halo

    most = 1
    while block(most + 1) + 2 * halo <= DEFAULT_WINDOW or block(most) < tile:
        most += 1
    sizes = [block(cores) for cores in range(most, 0, -1) if block(cores) >= tile] + [tile]
    if not worker_memory:
        return sizes[0]
    others = [n for n, a in zip(stack.data.shape, stack.axes, strict=True) if a not in "YXCS"]
    for size in sizes:
        edge = size + 2 * halo
        need = labels_memory((*others, edge, edge)) + prediction_memory(
            (edge, edge), bundle.config, min(geometry.tile, edge), 1, 1
        )
        if need <= _BLOCK_MEMORY_SHARE * worker_memory:
            return size
    return tile


@dataclass(frozen=True)
class _TileGeometry:
    """How the single-process engine tiles planes for ``options``: its tile, the context
    margin and core of a tile (network pixels), the object diameter (image pixels) and the
    scale from image to network pixels."""

    tile: int
    context: int
    core: int
    diameter: float
    factor: float

    @classmethod
    def of(cls, bundle: Any, options: PredictOptions) -> _TileGeometry:
        network = bundle.network
        tile = nominal_tile(network, options.tile_size)
        context = context_margin(tile, options.overlap, network)
        trained = bundle.config.get("object_diameter")
        diameter = options.diameter or trained or 30.0
        factor = rescale_factor(trained, diameter, GIVEN_BAND) if trained else 1.0
        context, stride = aligned_margin(tile, context, network.size_multiple)
        return cls(tile, context, core_size(tile, context, stride), diameter, factor)


def default_z_block(
    stack: Stack, bundle: Any, options: PredictOptions, block_size: int, worker_memory: int | None
) -> int | None:
    """Planes per block: all of them (None) unless a block of ``block_size`` with every
    plane would not fit in half a worker's memory; then as many as fit (at least one)."""
    if "Z" not in stack.axes or not worker_memory:
        return None
    sizes = dict(zip(stack.axes, stack.data.shape, strict=True))
    others = [n for a, n in sizes.items() if a not in "ZYXCS"]
    edge = block_size + 2 * block_halo(bundle, options)
    tile = min(options.tile_size, edge)

    def fits(planes: int) -> bool:
        need = labels_memory((*others, planes, edge, edge)) + prediction_memory(
            (edge, edge), bundle.config, tile, 1, 1
        )
        return need <= _BLOCK_MEMORY_SHARE * worker_memory

    if fits(sizes["Z"]):
        return None
    planes = sizes["Z"]
    while planes > 1 and not fits(planes):
        planes //= 2
    return planes


def work_folder(output: str | os.PathLike[str]) -> Path:
    """The folder a run keeps its finished blocks in until the output is written (found
    again by a resumed run; a dot name ending in ``.partial`` hides it from listings)."""
    output = Path(output)
    return output.with_name(f".{output.name}.work{PARTIAL_SUFFIX}")


def discard_work(output: str | os.PathLike[str]) -> None:
    """Remove the work folder of ``output`` (after the output is written)."""
    shutil.rmtree(work_folder(output), ignore_errors=True)


def iter_predict_blocks(
    stack: Stack,
    model: bytes,
    options: PredictOptions,
    client: Client,
    output: str | os.PathLike[str],
    *,
    block_size: int | None = None,
    z_block: int | None = None,
    torch_threads: int | None = None,
    predictor: Callable[[np.ndarray], np.ndarray] | None = None,
    show_blocks: bool = False,
) -> Generator[Progress, None, DistributedPrediction]:
    """Segment ``stack`` block by block on the cluster of ``client``.

    Parameters
    ----------
    stack : Stack
        The image; with a ``path``, workers reopen it there (a shared file system); a lazy
        (dask) image without one, such as an OME-Zarr URL, is read by the workers from its
        store; otherwise each block's window is sent with its task.
    model : bytes
        The model bundle's file.
    options : PredictOptions
        As for :func:`~napari_unet.core.inference.iter_predict`; the diameter is fixed here
        for every block.
    client : distributed.Client
    output : path-like
        The output the labels are for: the work folder goes next to it, and a run for the
        same output resumes from the blocks already finished.
    block_size : int, optional
        Block edge in Y/X pixels (at least the tile size); default from the workers'
        memory (:func:`default_block_size`).
    z_block : int, optional
        Planes per block; default all, unless they do not fit in a worker's memory
        (:func:`default_z_block`). Objects linked through Z are joined across slab faces as
        across Y/X faces (a one-plane halo in Z).
    torch_threads : int, optional
        Torch threads per worker (a local cluster's share of the cores).
    predictor : callable, optional
        Replaces the network (tests).
    show_blocks : bool
        Read each finished block's labels back here and yield them (:class:`BlockLabels`),
        for a viewer that shows the labels as they arrive.

    Yields
    ------
    Progress
        ``blocks`` done of total (the first carries the dashboard's address as notice; with
        ``show_blocks``, the others are :class:`BlockLabels`), then ``merging``.

    Returns
    -------
    DistributedPrediction
    """
    import dask

    from napari_unet.core.bundle import load_bundle_bytes

    options.check()
    if block_size is not None and block_size < options.tile_size:
        raise InputError(
            f"block size {block_size} is smaller than the tile size {options.tile_size}: give "
            "a larger --block-size or a smaller --tile-size"
        )
    bundle = load_bundle_bytes(model)
    mode = options.mode or bundle.mode
    plugin = _load_model(client, model, torch_threads)
    started = time.perf_counter()
    source = ImageSource(
        stack.axes,
        path=None if stack.path is None else str(stack.path),
        series=stack.series if stack.path is not None else None,
        array=stack.data if stack.path is None else None,
    )
    with dask.config.set(scheduler="threads"):  # a lazy image's first plane is read here
        colour = decide_colour(stack, bundle.config, options)
    ranges = _plane_ranges(client, stack, source, bundle.config, options.channel, colour)
    # one object diameter and one level for every block: those given, else those the engine
    # chooses on the whole image's most structured window; else the trained diameter (no
    # rescale)
    diameter = options.diameter
    level = None  # the one level every block's objects are cut apart at (instances only)
    if mode == "instances":
        given = options.threshold
        level = None if given is None else PlaneLevel(given, None)
        if diameter is None or level is None:
            diameter, level = _look_at_window(
                client, stack, ranges, bundle, options, plugin, predictor, colour
            )
    diameter = diameter or bundle.config.get("object_diameter")
    options = dataclasses.replace(options, diameter=diameter)
    memory = _worker_memory(client)
    if block_size is None:
        block_size = default_block_size(stack, bundle, options, memory)
    block_size = round_up(block_size, block_grid(bundle, options))
    if z_block is None:
        z_block = default_z_block(stack, bundle, options, block_size, memory)
    halo = block_halo(bundle, options)
    axes = stack.axes
    labels_axes = labels_axes_of(axes)
    sizes = dict(zip(axes, stack.data.shape, strict=True))
    # the work store's axes: the others, then Z (of size 1 when the image has none), Y, X
    others = "".join(a for a in labels_axes if a not in "ZYX")
    work_shape = (*(sizes[a] for a in others), sizes.get("Z", 1), sizes["Y"], sizes["X"])
    linked = "Z" in axes and options.link_z and mode == "instances"
    blocks = plan_blocks(work_shape[-3:], block_size, halo, z_block, z_halo=1 if linked else 0)
    plan = {
        "shape": list(stack.data.shape),
        "axes": axes,
        "block_size": block_size,
        "z_block": z_block,
        "halo": halo,
        "model": hashlib.sha256(model).hexdigest(),
        "options": repr(options),
        "level": repr(level),
        "predictor": repr(predictor),
    }
    token = hashlib.sha256(json.dumps([plan, str(output)]).encode()).hexdigest()[:12]
    work = _open_work(work_folder(output), plan, work_shape, block_size)
    counts = {b.grid: n for b in blocks if (n := work.count(b)) is not None}
    resumed = len(counts)
    shown = 0  # objects of the blocks shown so far (show_blocks)
    yield Progress(len(counts), len(blocks), "blocks", notice=dashboard_notice(client))
    slot = model_resources(client)
    futures = {
        client.submit(
            _segment_block,
            block,
            source if source.path or _is_lazy(source.array) else _with_window(source, block),
            ranges,
            options,
            plugin.name,
            str(work.path),
            mode,
            predictor,
            colour,
            level,
            key=f"napari-unet-block-{'-'.join(map(str, block.grid))}-{token}",
            retries=1,
            pure=False,
            resources=slot,
        ): block
        for block in blocks
        if block.grid not in counts
    }
    for future in as_completed(futures, loop=client.loop):
        block = futures[future]
        if future.status != "finished":
            error = future.exception()
            for other in futures:
                other.cancel()
            raise EngineError(f"{block.where()} failed twice: {error}") from error
        counts[block.grid] = future.result()
        if show_blocks:
            where, local = _block_labels(work, block, others, labels_axes)
            if mode == "instances":
                local = np.where(local > 0, local + np.uint32(shown), np.uint32(0))
                shown += counts[block.grid]
            yield BlockLabels(len(counts), len(blocks), "blocks", where=where, labels=local)
        else:
            yield Progress(len(counts), len(blocks), "blocks")
    predicted = time.perf_counter()
    yield Progress(0, 1, "merging")
    if mode == "instances":
        luts, pairs, objects = _merge(work, blocks, counts)
    else:
        luts, pairs, objects = None, 0, None
    labels = _as_labels_axes(work.final_labels(luts), others, labels_axes)
    merged = time.perf_counter()
    yield Progress(1, 1, "merging")
    return DistributedPrediction(
        labels=labels,
        axes=labels_axes,
        mode=mode,
        class_names=bundle.class_names,
        stats={
            "blocks": len(blocks),
            "block_size": block_size,
            "z_block": z_block,
            "halo": halo,
            "resumed": resumed,
            "objects": objects,
            "merged_pairs": pairs,
            "predict_seconds": predicted - started,
            "merge_seconds": merged - predicted,
            "diameter": diameter,
            "levels": [] if level is None else [level],
            "colour_input": None if colour is None else describe_colour_input(colour),
        },
    )


def iter_store(labels: Any, target: Any) -> Generator[Progress, None, None]:
    """Write a chunked (dask) label array into ``target`` (a Zarr array of its shape) chunk
    by chunk, computed in this process, so memory holds one chunk (one block of
    :func:`iter_predict_blocks`'s labels) at a time.

    Yields
    ------
    Progress
        ``writing labels``: chunks written of total.
    """
    bounds = [np.cumsum((0, *sizes)) for sizes in labels.chunks]
    indices = list(np.ndindex(*labels.numblocks))
    for done, index in enumerate(indices, start=1):
        where = tuple(slice(b[i], b[i + 1]) for b, i in zip(bounds, index, strict=True))
        target[where] = labels.blocks[index].compute(scheduler="threads")
        yield Progress(done, len(indices), "writing labels")


def iter_predict_files(
    targets: dict[str, Path],
    model: bytes,
    options: PredictOptions,
    client: Client,
    *,
    axes: str | None = None,
    series: int | None = None,
    overwrite: bool = False,
    torch_threads: int | None = None,
) -> Generator[Progress, None, list[str]]:
    """Many files: one task per file, segmented whole on a worker by the single-process
    engine and written there (inputs and outputs on a file system every worker sees).

    Parameters
    ----------
    targets : dict of str to Path
        Input (file, Zarr folder or URL) -> output (``.tif`` or ``.ome.zarr``), checked.
    model : bytes
        The model bundle's file.
    options : PredictOptions
    client : distributed.Client
    axes : str, optional
        Axis letters for every input.
    series : int, optional
        Series of multi-image TIFFs.
    overwrite : bool
        Replace existing outputs.
    torch_threads : int, optional
        Torch threads per worker.

    Yields
    ------
    Progress
        Files done of total (the first carries the dashboard's address as notice).

    Returns
    -------
    list of str
        One line per file: input, output, shape, objects.
    """
    options.check()
    plugin = _load_model(client, model, torch_threads)
    yield Progress(0, len(targets), "files", notice=dashboard_notice(client))
    slot = model_resources(client)
    futures = {
        client.submit(
            _predict_file,
            source,
            str(target),
            options,
            plugin.name,
            axes,
            series,
            overwrite,
            retries=1,
            pure=False,
            resources=slot,
        ): source
        for source, target in targets.items()
    }
    lines = []
    for future in as_completed(futures, loop=client.loop):
        if future.status != "finished":
            error = future.exception()
            for other in futures:
                other.cancel()
            raise EngineError(f"{futures[future]} failed twice: {error}") from error
        lines.append(future.result())
        yield Progress(len(lines), len(targets), "files")
    return lines


def _predict_file(
    source: str,
    target: str,
    options: PredictOptions,
    plugin: str,
    axes: str | None,
    series: int | None,
    overwrite: bool,
) -> str:
    """Segment one file on a worker and write its labels; a line saying what was done (and
    a second with the colour input of a colour image)."""
    from napari_unet.core.generators import run_to_end
    from napari_unet.core.io import read_image, write_labels
    from napari_unet.core.zarr_io import is_zarr, read_zarr, write_labels_zarr

    bundle = get_worker().plugins[plugin].bundle
    zarr_input = is_zarr(source)
    stack = (
        read_zarr(source, axes=axes) if zarr_input else read_image(source, axes=axes, series=series)
    )
    result = run_to_end(iter_predict(stack, bundle, options))
    keywords = {"axes": result.axes, "scale": stack.scale, "units": stack.units}
    if target.endswith(".zarr"):
        write_labels_zarr(target, result.labels, source=source, overwrite=overwrite, **keywords)
    else:
        write_labels(target, result.labels, overwrite=overwrite, **keywords)
    objects = result.stats.get("objects")
    what = f"{objects} objects" if objects is not None else f"{len(result.class_names)} classes"
    colour = result.stats["colour_input"]
    said = f"\n  {colour}" if colour else ""
    return f"{source} -> {target} ({result.axes} {tuple(result.labels.shape)}, {what}){said}"


def model_resources(client: Client) -> dict[str, int] | None:
    """What a task running the network asks of its worker: one :data:`MODEL_SLOT` where every
    worker has one (a local cluster; workers started with ``--resources
    napari-unet-model=1``), else nothing (a task waiting for a resource no worker has would
    wait for ever)."""
    slots = client.run_on_scheduler(  # every worker, whatever scheduler_info's Dask version lists
        lambda dask_scheduler: [
            w.resources.get(MODEL_SLOT) for w in dask_scheduler.workers.values()
        ]
    )
    return {MODEL_SLOT: 1} if slots and all(slots) else None


def dashboard_notice(client: Client) -> str:
    """Where the cluster's dashboard is, or why it has none: Dask serves its pages only where
    ``bokeh`` is installed beside the scheduler (a link without it leads nowhere)."""
    served = client.run_on_scheduler(lambda: importlib.util.find_spec("bokeh") is not None)
    if served and client.dashboard_link:
        return f"dashboard: {client.dashboard_link}"
    return "no dashboard: install bokeh where the scheduler runs to have one"


def model_bytes(bundle: Any) -> bytes:
    """The bytes of a model bundle's file, as the workers get it: the ``.safetensors`` file
    itself, or the bundle a bioimage.io package holds, saved for the purpose."""
    import tempfile

    from napari_unet.core.bundle import save_bundle

    if bundle.path is not None and bundle.path.suffix == ".safetensors":
        return bundle.path.read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        return save_bundle(bundle, Path(folder) / "model.safetensors").read_bytes()


def _load_model(client: Client, model: bytes, torch_threads: int | None) -> BundlePlugin:
    """Have every worker (and every worker that joins later) load the model once; a
    cluster that already has it keeps it."""
    plugin = BundlePlugin(model, torch_threads)
    known = client.run_on_scheduler(_worker_plugin_names)
    if plugin.name not in known:
        client.register_plugin(plugin, name=plugin.name)
    return plugin


def _worker_plugin_names(dask_scheduler: Any) -> list[str]:
    return list(dask_scheduler.worker_plugins)


def _worker_memory(client: Client) -> int | None:
    limits = [w.get("memory_limit") for w in client.scheduler_info()["workers"].values()]
    limits = [m for m in limits if m]
    return min(limits) if limits else None


def _is_lazy(array: Any) -> bool:
    """A dask array (an OME-Zarr URL, say): workers read their windows from its store."""
    return hasattr(array, "dask")


def _with_window(source: ImageSource, block: Block) -> ImageSource:
    """A source holding only the block's window (sent with its task)."""
    window = source.window(*block.outer)
    offset = [s.start for s in block.outer]
    return dataclasses.replace(source, array=_Shifted(window, offset, source.axes))


@dataclass(frozen=True)
class _Shifted:
    """A window of an image indexed in the image's coordinates (for :class:`ImageSource`)."""

    window: np.ndarray
    offset: list[int]
    axes: str

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        shifted = []
        for a, s in zip(self.axes, key, strict=True):
            if a in "ZYX":
                o = self.offset["ZYX".index(a)]
                s = slice(s.start - o, s.stop - o)
            shifted.append(s)
        return self.window[tuple(shifted)]


def _plane_ranges(
    client: Client,
    stack: Stack,
    source: ImageSource,
    config: dict[str, Any],
    channel: int | None,
    colour: ColourChoice | None,
) -> dict[tuple[int, ...], np.ndarray]:
    """Normalisation percentiles of every plane of the whole image: read plane by plane by
    the client for an image up to :data:`CLIENT_READ_BYTES` (or one only the client holds),
    else by the workers, one task per plane."""
    import dask

    nbytes = int(np.prod(stack.data.shape, dtype=np.int64)) * np.dtype(stack.data.dtype).itemsize
    if nbytes <= CLIENT_READ_BYTES or (source.path is None and not _is_lazy(source.array)):
        with dask.config.set(scheduler="threads"):  # a lazy image is read here, not sent
            return {
                index: _channel_ranges(plane, plane_axes, config, channel, colour)
                for index, plane, plane_axes in iter_planes(stack.data, stack.axes)
            }
    shape = [n for n, a in zip(stack.data.shape, stack.axes, strict=True) if a not in "YXCS"]
    indices = list(np.ndindex(*shape))
    futures = client.map(
        _plane_range,
        indices,
        source=source,
        config=config,
        channel=channel,
        colour=colour,
        pure=False,
    )
    return dict(zip(indices, client.gather(futures), strict=True))


def _plane_range(
    index: tuple[int, ...],
    *,
    source: ImageSource,
    config: dict[str, Any],
    channel: int | None,
    colour: ColourChoice | None,
) -> np.ndarray:
    """One plane's percentiles, on a worker."""
    import dask

    from napari_unet.core.preprocess import read_plane

    with dask.config.set(scheduler="sync"):  # read here, not back through the cluster
        plane, plane_axes = read_plane(source.open(), source.axes, index)
    return _channel_ranges(plane, plane_axes, config, channel, colour)


def _channel_ranges(
    plane: np.ndarray,
    plane_axes: str,
    config: dict[str, Any],
    channel: int | None,
    colour: ColourChoice | None,
) -> np.ndarray:
    x = to_model_channels(plane, plane_axes, config["input"], channel, colour)
    return channel_ranges(x, config["normalization"])


def _look_at_window(
    client: Client,
    stack: Stack,
    ranges: dict[tuple[int, ...], np.ndarray],
    bundle: Any,
    options: PredictOptions,
    plugin: BundlePlugin,
    predictor: Callable[[np.ndarray], np.ndarray] | None,
    colour: ColourChoice | None,
) -> tuple[float | None, PlaneLevel]:
    """The object diameter and the level of the middle plane's most structured window, as
    the engine itself chooses them (:func:`~napari_unet.core.inference.iter_predict`) on a
    worker: each the one ``options`` give, else the one chosen (a diameter of None when no
    object is found)."""
    import dask

    from napari_unet.core.diameter import sample_window
    from napari_unet.core.preprocess import normalize, read_plane

    shape = [n for n, a in zip(stack.data.shape, stack.axes, strict=True) if a not in "YXCS"]
    index = tuple(n // 2 for n in shape)
    with dask.config.set(scheduler="threads"):  # read here, not through the cluster
        plane, plane_axes = read_plane(stack.data, stack.axes, index)
    x = to_model_channels(plane, plane_axes, bundle.config["input"], options.channel, colour)
    rows, cols = sample_window(normalize(x, bundle.config["normalization"], ranges[index]))
    window = plane[rows, cols]
    future = client.submit(
        _choices_of_window,
        window,
        plane_axes,
        ranges[index],
        options,
        plugin.name,
        predictor,
        colour,
        pure=False,
        resources=model_resources(client),
    )
    return future.result()


def _choices_of_window(
    window: np.ndarray,
    axes: str,
    ranges: np.ndarray,
    options: PredictOptions,
    plugin: str,
    predictor: Callable[[np.ndarray], np.ndarray] | None,
    colour: ColourChoice | None,
) -> tuple[float | None, PlaneLevel]:
    from napari_unet.core.generators import run_to_end

    bundle = get_worker().plugins[plugin].bundle
    result = run_to_end(
        iter_predict(
            Stack(window, axes),
            bundle,
            options,
            predictor=predictor,
            plane_ranges={(): ranges},
            colour=colour,
        )
    )
    return result.stats["sizes"][0].diameter, result.stats["levels"][0]


def _segment_block(
    block: Block,
    source: ImageSource,
    ranges: dict[tuple[int, ...], np.ndarray],
    options: PredictOptions,
    plugin: str,
    work_path: str,
    mode: str,
    predictor: Callable[[np.ndarray], np.ndarray] | None,
    colour: ColourChoice | None,
    level: PlaneLevel | None,
) -> int:
    """Segment one block on a worker, store its own pixels and its frame; return its count
    of objects (of classes present, in semantic mode)."""
    from napari_unet.core.generators import run_to_end

    bundle = get_worker().plugins[plugin].bundle
    window = source.window(*block.outer)
    result = run_to_end(
        iter_predict(
            Stack(window, source.axes),
            bundle,
            options,
            predictor=predictor,
            plane_ranges=_window_ranges(ranges, source.axes, block.outer[0]),
            colour=colour,
            fixed_level=level,
        )
    )
    others = "".join(a for a in result.axes if a not in "ZYX")
    labels = result.labels.transpose(
        [result.axes.index(a) for a in others + "ZYX" if a in result.axes]
    )
    if "Z" not in result.axes:
        labels = labels[..., np.newaxis, :, :]
    inner = (
        ...,
        *(
            slice(c.start - o.start, c.stop - o.start)
            for c, o in zip(block.core, block.outer, strict=True)
        ),
    )
    work = _Work(Path(work_path))
    if mode != "instances":
        work.local[(..., *block.core)] = labels[inner]
        work.mark_done(block, 0, {})
        return 0
    present = np.unique(labels[inner])
    present = present[present > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.uint32)
    numbered = lut[labels]  # objects that never reach the core: 0
    work.local[(..., *block.core)] = numbered[inner]
    work.mark_done(block, int(present.size), _frame(numbered, block))
    return int(present.size)


def _window_ranges(
    ranges: dict[tuple[int, ...], np.ndarray], axes: str, planes: slice
) -> dict[tuple[int, ...], np.ndarray]:
    """The whole image's plane percentiles indexed as the planes of a window starting at
    ``planes.start`` along Z."""
    stack_axes = [a for a in axes if a not in "YXCS"]
    if "Z" not in stack_axes:
        return ranges
    z = stack_axes.index("Z")
    return {
        (*index[:z], index[z] - planes.start, *index[z + 1 :]): r
        for index, r in ranges.items()
        if planes.start <= index[z] < planes.stop
    }


def _frame(numbered: np.ndarray, block: Block) -> dict[str, np.ndarray]:
    """The block's ids (array of shape (..., Z, Y, X)) just outside its core, its neighbours'
    pixels: the lines beside its four Y/X faces through its planes, and the planes above and
    below it (when Z is split and linked), each with its window ``[z0, z1, r0, r1, c0, c1]``
    in image coordinates."""
    (low, high), (top, bottom), (left, right) = ((s.start, s.stop) for s in block.outer)
    (z0, z1), (y0, y1), (x0, x1) = ((s.start, s.stop) for s in block.core)
    r0, r1 = max(y0 - 1, top), min(y1 + 1, bottom)
    c0, c1 = max(x0 - 1, left), min(x1 + 1, right)  # the lines reach the corners
    faces = {
        "top": (z0, z1, y0 - 1, y0, c0, c1) if y0 > top else None,
        "bottom": (z0, z1, y1, y1 + 1, c0, c1) if y1 < bottom else None,
        "left": (z0, z1, y0, y1, x0 - 1, x0) if x0 > left else None,
        "right": (z0, z1, y0, y1, x1, x1 + 1) if x1 < right else None,
        "below": (z0 - 1, z0, r0, r1, c0, c1) if z0 > low else None,
        "above": (z1, z1 + 1, r0, r1, c0, c1) if z1 < high else None,
    }
    frame = {}
    for name, window in faces.items():
        if window is not None:
            p0, p1, q0, q1, w0, w1 = window
            frame[name] = numbered[
                ..., p0 - low : p1 - low, q0 - top : q1 - top, w0 - left : w1 - left
            ]
            frame[name + "_window"] = np.array(window)
    return frame


class _Work:
    """The work folder: block-local labels (``local.zarr``, one chunk per block) and one
    marker per finished block holding its object count and frame."""

    def __init__(self, path: Path) -> None:
        import zarr

        self.path = path
        self.local = zarr.open_array(str(path / "local.zarr"), mode="r+")

    def marker(self, block: Block) -> Path:
        return self.path / "blocks" / f"{'_'.join(map(str, block.grid))}.npz"

    def mark_done(self, block: Block, count: int, frame: dict[str, np.ndarray]) -> None:
        with atomic_path(self.marker(block)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, count=np.int64(count), **frame)

    def count(self, block: Block) -> int | None:
        marker = self.marker(block)
        if not marker.is_file():
            return None
        with np.load(marker) as saved:
            return int(saved["count"])

    def frame(self, block: Block) -> dict[str, np.ndarray]:
        with np.load(self.marker(block)) as saved:
            return {k: saved[k] for k in saved.files if k != "count"}

    def final_labels(self, luts: dict[tuple[int, int, int], np.ndarray] | None) -> Any:
        """The final labels as a dask array of shape (..., Z, Y, X), one chunk per block,
        each chunk's ids through its block's table."""
        import dask
        import dask.array as da

        plan = json.loads((self.path / _PLAN_FILE).read_text())
        z_block = plan["z_block"] or self.local.shape[-3]
        block = plan["block_size"]
        local = da.from_zarr(self.local, chunks=(*self.local.shape[:-3], z_block, block, block))
        if luts is None:
            return local
        dtype = next(iter(luts.values())).dtype
        chunks = local.to_delayed()
        grid = chunks.reshape(chunks.shape[-3:])  # the other axes are one chunk
        slabs = []
        for k in range(grid.shape[0]):
            rows = []
            for r in range(grid.shape[1]):
                row = []
                for c in range(grid.shape[2]):
                    shape = local.blocks[(0,) * (local.ndim - 3) + (k, r, c)].shape
                    lookup = dask.delayed(_through, pure=True)(grid[k, r, c], luts[(k, r, c)])
                    row.append(da.from_delayed(lookup, shape, dtype))
                rows.append(da.concatenate(row, axis=-1))
            slabs.append(da.concatenate(rows, axis=-2))
        return da.concatenate(slabs, axis=-3)


def _through(local: np.ndarray, lut: np.ndarray) -> np.ndarray:
    return lut[local]


def _as_labels_axes(array: Any, others: str, labels_axes: str) -> Any:
    """An array of the work store's axes (``others`` + ZYX, Z of size 1 when the image has
    none) in the labels' axes."""
    work_axes = others + "ZYX"
    if "Z" not in labels_axes:
        array, work_axes = array[..., 0, :, :], others + "YX"
    return array.transpose([work_axes.index(a) for a in labels_axes])


def _block_labels(
    work: _Work, block: Block, others: str, labels_axes: str
) -> tuple[tuple[slice, ...], np.ndarray]:
    """A finished block's own pixels in the labels, and its block-local labels there."""
    local = _as_labels_axes(np.asarray(work.local[(..., *block.core)]), others, labels_axes)
    place = dict(zip("ZYX", block.core, strict=True))
    return tuple(place.get(a, slice(None)) for a in labels_axes), local


def _open_work(path: Path, plan: dict[str, Any], shape: tuple[int, ...], block_size: int) -> _Work:
    """The work folder for this plan: the previous run's when it had the same plan (resume),
    else a new one."""
    import zarr

    plan_file = path / _PLAN_FILE
    if plan_file.is_file():
        try:
            same = json.loads(plan_file.read_text()) == plan
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            return _Work(path)
    shutil.rmtree(path, ignore_errors=True)
    (path / "blocks").mkdir(parents=True)
    # a chunk per plane of a block: a block's planes are compressed and written in parallel
    chunks = (*(1 for _ in shape[:-3]), 1, block_size, block_size)
    zarr.open_array(str(path / "local.zarr"), mode="w", shape=shape, chunks=chunks, dtype=np.uint32)
    with atomic_path(plan_file) as tmp:
        tmp.write_text(json.dumps(plan))
    return _Work(path)


def _merge(
    work: _Work, blocks: list[Block], counts: dict[tuple[int, int, int], int]
) -> tuple[dict[tuple[int, int, int], np.ndarray], int, int]:
    """Tables from block-local to final ids, the number of merged pairs, and of objects."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    grid = tuple(max(b.grid[i] for b in blocks) + 1 for i in range(3))
    offsets = np.zeros(grid, dtype=np.int64)
    running = 0
    for block in blocks:  # slab, row, column order: final ids follow the blocks
        offsets[block.grid] = running
        running += counts[block.grid]
    total = running
    # the grid is regular: the first block's extent is every block's step
    step = [s.stop - s.start for s in blocks[0].core]
    sources, targets = [], []
    for block in blocks:
        frame = work.frame(block)
        for name in ("top", "bottom", "left", "right", "below", "above"):
            if name not in frame:
                continue
            p0, p1, r0, r1, c0, c1 = (int(v) for v in frame[name + "_window"])
            mine = frame[name].astype(np.int64)
            mine = np.where(mine > 0, mine + offsets[block.grid], 0)
            local = np.asarray(work.local[..., p0:p1, r0:r1, c0:c1]).astype(np.int64)
            owner = offsets[
                np.ix_(
                    *(
                        np.arange(u, v) // n
                        for (u, v), n in zip(((p0, p1), (r0, r1), (c0, c1)), step, strict=True)
                    )
                )
            ]
            theirs = np.where(local > 0, local + owner, 0)
            a, b = _same_objects(mine.ravel(), theirs.ravel())
            sources.append(a)
            targets.append(b)
    a = np.concatenate(sources) if sources else np.zeros(0, np.int64)
    b = np.concatenate(targets) if targets else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(total + 1, total + 1))
    _, component = connected_components(graph, directed=False)
    # final ids: components numbered in the order of their first (lowest) global id
    _, first, inverse = np.unique(component[1:], return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    dtype = np.uint32 if first.size < 2**32 else np.uint64
    final = np.zeros(total + 1, dtype=dtype)
    final[1:] = (rank[inverse] + 1).astype(dtype)
    luts = {}
    for block in blocks:
        start = offsets[block.grid]
        lut = final[start : start + counts[block.grid] + 1].copy()
        lut[0] = 0
        luts[block.grid] = lut
    return luts, int(a.size), int(first.size)


def _same_objects(mine: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of ids (this block's, the neighbour's) covering the same pixels of a frame line
    with an IoU of at least :data:`MERGE_IOU`."""
    both = (mine > 0) & (theirs > 0)
    if not both.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs, overlap = np.unique(np.stack([mine[both], theirs[both]]), axis=1, return_counts=True)
    ids_a, size_a = np.unique(mine[mine > 0], return_counts=True)
    ids_b, size_b = np.unique(theirs[theirs > 0], return_counts=True)
    area_a = size_a[np.searchsorted(ids_a, pairs[0])]
    area_b = size_b[np.searchsorted(ids_b, pairs[1])]
    keep = overlap / (area_a + area_b - overlap) >= MERGE_IOU
    return pairs[0][keep], pairs[1][keep]

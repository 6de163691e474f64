"""Segment a stack with a model bundle: plane by plane, tile by tile, with progress.

:func:`iter_predict` is a generator: it yields a :class:`Progress` after every batch of
tiles and every post-processed plane, and returns a :class:`Prediction`. A consumer (the GUI's
worker, the CLI's progress bar) can stop it at any yield by closing it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from napari_unet.core.bundle import Bundle
from napari_unet.core.devices import Compute, resolve_compute
from napari_unet.core.diameter import (
    GIVEN_BAND,
    DiameterEstimate,
    PlaneSize,
    confirms_enlargement,
    measure_diameter,
    rescale_factor,
    sample_window,
)
from napari_unet.core.disk_labels import LabelMaker, labels_in_memory
from napari_unet.core.errors import EngineError, InputError
from napari_unet.core.generators import run_to_end
from napari_unet.core.io import Stack
from napari_unet.core.label_pipeline import LabelPipeline, auto_workers
from napari_unet.core.memory_fallback import MemoryFallback, is_out_of_memory
from napari_unet.core.model import fold_batch_norm
from napari_unet.core.options import PredictOptions
from napari_unet.core.postprocess import (
    default_min_size,
    instance_labels,
    link_to_previous,
    seed_smoothing_sigma,
    semantic_labels,
)
from napari_unet.core.preprocess import (
    ColourChoice,
    check_channels,
    colour_input_of,
    describe_colour_input,
    iter_planes,
    labels_axes_of,
    plane_count,
    plane_key,
    prepare_plane,
    read_plane,
)
from napari_unet.core.resources import check_fits
from napari_unet.core.seed_level import DEFAULT_LEVEL, PlaneLevel, choose_level
from napari_unet.core.tiling import (
    AxisPlan,
    Predictor,
    count_tiles,
    iter_predict_plane,
    plan_axis,
)
from napari_unet.core.tta import DihedralAverage


@dataclass(frozen=True)
class Progress:
    """Progress of a prediction: ``done`` of ``total`` steps of ``stage``, and any notice."""

    done: int
    total: int
    stage: str
    notice: str | None = None  # something the user should be told (e.g. a memory fallback)


@dataclass(frozen=True)
class Prediction:
    """The result of :func:`iter_predict`.

    Attributes
    ----------
    labels : ndarray or array on disk
        uint32 object ids (instances) or class indices (semantic), one value per pixel of the
        input's non-channel axes, in the array ``make_labels`` made (an ndarray by default).
    axes : str
        Axes of ``labels``.
    mode : str
    class_names : list of str
    compute : str
        Device and precision used, e.g. ``"cpu (bf16)"``.
    stats : dict
        ``tiles``, ``processed_pixel_ratio`` (network input pixels / image pixels), ``planes``,
        ``look_pixel_ratio`` (the same for the looks of the size estimate), ``sizes`` (one
        :class:`~napari_unet.core.diameter.PlaneSize` per plane), ``scale_factor`` (their
        median), ``levels`` (one :class:`~napari_unet.core.seed_level.PlaneLevel` per plane
        of an instance segmentation), ``objects``, ``colour_input`` (how a colour image
        became the model's input, a sentence from
        :func:`~napari_unet.core.preprocess.describe_colour_input`; None for a grey image).
    """

    labels: Any
    axes: str
    mode: str
    class_names: list[str]
    compute: str
    stats: dict[str, Any] = field(default_factory=dict)


class NetworkPredictor:
    """Callable running a network on batches of tiles; returns softmax probabilities.

    Batch norms are folded into the convolutions (one memory pass less per layer). On CUDA,
    tiles go up through page-locked memory, cuDNN picks the fastest convolution algorithms for
    the tile shape on first use (a plane's last, smaller batch is padded to the full batch so
    that choice is not made again), and probabilities come back as fp16 through a page-locked
    buffer: half the bytes, and several times the bandwidth of a pageable copy.
    """

    def __init__(self, network: torch.nn.Module, compute: Compute) -> None:
        self.compute = compute
        self.network = fold_batch_norm(network).to(compute.device)
        self._host: torch.Tensor | None = None  # page-locked landing buffer (CUDA)
        if compute.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self._cuda = compute.device.type == "cuda"
        self._full_batch: tuple[int, ...] | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        count = batch.shape[0]
        if self._cuda:
            batch = self._pad_to_full_batch(batch)
        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self._cuda:
                x = x.pin_memory()
            x = x.to(self.compute.device, non_blocking=True)
            if self.compute.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.compute.autocast(), _cudnn_benchmark(self._cuda):
                logits = self.network(x)
            probabilities = torch.softmax(logits[:count].float(), dim=1)
            if self._cuda:
                return self._to_host(probabilities.to(torch.float16))
        return probabilities.cpu().numpy()

    def _to_host(self, probabilities: torch.Tensor) -> np.ndarray:
        if self._host is None or self._host.shape != probabilities.shape:
            self._host = torch.empty(probabilities.shape, dtype=torch.float16, pin_memory=True)
        self._host.copy_(probabilities, non_blocking=True)
        torch.cuda.current_stream(probabilities.device).synchronize()
        return self._host.numpy().astype(np.float32)  # a copy: the buffer is reused

    def _pad_to_full_batch(self, batch: np.ndarray) -> np.ndarray:
        full = self._full_batch
        if full is None or full[1:] != batch.shape[1:] or full[0] < batch.shape[0]:
            self._full_batch = batch.shape
            return batch
        if batch.shape[0] == full[0]:
            return batch
        padded = np.zeros(full, dtype=batch.dtype)
        padded[: batch.shape[0]] = batch
        return padded

    def on_cpu(self) -> NetworkPredictor:
        """The same network on the CPU (fallback when the GPU runs out of memory)."""
        return NetworkPredictor(self.network, resolve_compute("cpu"))


@contextlib.contextmanager
def _cudnn_benchmark(wanted: bool) -> Iterator[None]:
    """Let cuDNN pick its fastest algorithms for our fixed tile shape during one call, then
    put the process-wide setting back (it belongs to whoever else runs torch here)."""
    if not wanted:
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _resolve_mode(bundle: Bundle, mode: str | None) -> str:
    mode = mode or bundle.mode
    if mode not in ("instances", "semantic"):
        raise InputError(f"mode {mode!r} is not valid; choose instances or semantic")
    if mode == "instances" and bundle.mode != "instances":
        raise InputError(
            f"model {bundle.name!r} is a semantic model (classes {', '.join(bundle.class_names)}); "
            "it cannot produce instances: use mode semantic"
        )
    return mode


def _as_stack(image: Stack | np.ndarray, axes: str | None) -> Stack:
    if isinstance(image, Stack):
        return (
            image
            if axes is None
            else Stack(image.data, axes.upper(), image.scale, image.units, image.path)
        )
    data = np.asarray(image) if not hasattr(image, "shape") else image
    if axes is None:
        if data.ndim != 2:
            raise InputError(f"an image with {data.ndim} dimensions needs its axes, e.g. 'ZYX'")
        axes = "YX"
    return Stack(data, axes.upper())


def decide_colour(
    stack: Stack, config: dict[str, Any], options: PredictOptions
) -> ColourChoice | None:
    """How the colours of ``stack`` become a grey model's input, decided once on its first
    plane for the whole stack (every plane, or every block of a large image, then uses the
    same colour): ``options.rgb`` when set, else the bundle's ``input.rgb`` rule.

    Returns
    -------
    ColourChoice or None
        None when no colours are combined (see
        :func:`~napari_unet.core.preprocess.colour_input_of`).
    """
    if "S" not in stack.axes or "C" in stack.axes or options.channel is not None:
        return None  # nothing to decide: no need to read a plane
    spec = dict(config["input"])
    if options.rgb is not None:
        spec["rgb"] = options.rgb
    first = tuple(0 for a in stack.axes if a not in "YXCS")
    plane, plane_axes = read_plane(stack.data, stack.axes, first)
    return colour_input_of(plane, plane_axes, spec, options.channel)


def iter_predict(
    image: Stack | np.ndarray,
    bundle: Bundle,
    options: PredictOptions | None = None,
    *,
    axes: str | None = None,
    predictor: Predictor | None = None,
    plane_ranges: Mapping[tuple[int, ...], np.ndarray] | None = None,
    make_labels: LabelMaker = labels_in_memory,
    colour: ColourChoice | None = None,
    fixed_level: PlaneLevel | None = None,
) -> Generator[Progress, None, Prediction]:
    """Segment every plane of an image.

    Parameters
    ----------
    image : Stack or ndarray
        The image; an ndarray with more than two dimensions needs ``axes``.
    bundle : Bundle
        The model and its config.
    options : PredictOptions, optional
        Tile size, device, mode...
    axes : str, optional
        Axis letters for an ndarray (or to override a Stack's).
    predictor : callable, optional
        Replaces the network (used to test tiling and fault handling).
    plane_ranges : mapping, optional
        Normalisation percentiles per plane index (see ``preprocess.channel_ranges``),
        measured on the whole image: a block of it is normalised as the whole would be.
    make_labels : callable, optional
        ``make_labels(shape)`` returns the all-zero uint32 array the labels are written into,
        one plane at a time: in memory by default; on disk
        (:func:`~napari_unet.core.disk_labels.labels_on_disk`) for stacks larger than memory.
    colour : ColourChoice, optional
        How a colour image becomes the model's input, decided for the whole image (a block
        of a larger image gets the whole image's choice); by default :func:`decide_colour`
        on the first plane.
    fixed_level : PlaneLevel, optional
        The level every plane's objects are cut apart at, decided for the whole image (a
        block of a larger image gets the whole image's); by default chosen for each plane
        (:func:`~napari_unet.core.seed_level.choose_level`).

    Yields
    ------
    Progress
        After every batch of tiles and every post-processed or linked plane. Which colour
        input a colour image became is said once, in the result's ``stats``, not as a notice.

    Returns
    -------
    Prediction
    """
    options = options or PredictOptions()
    options.check()
    stack = _as_stack(image, axes)
    mode = _resolve_mode(bundle, options.mode)
    config = bundle.config
    check_channels(stack.data.shape, stack.axes, config["input"], options.channel)
    network = bundle.network
    compute = resolve_compute(options.device, options.precision)
    predictor = predictor or NetworkPredictor(network, compute)
    if options.tta:
        predictor = DihedralAverage(predictor)
    fallback = MemoryFallback(
        predictor,
        options.batch_size,
        nominal_tile(network, options.tile_size),
        network.fit_input_size,
        compute.label,
    )
    sizer = _PlaneSizer(config.get("object_diameter"), options, mode)
    labels_axes = labels_axes_of(stack.axes)
    labels_shape = tuple(
        n for n, a in zip(stack.data.shape, stack.axes, strict=True) if a in labels_axes
    )
    plane_shape = (labels_shape[labels_axes.index("Y")], labels_shape[labels_axes.index("X")])
    work_shape = _scaled(plane_shape, sizer.nominal_factor)
    workers = options.post_workers
    if workers is None:
        workers = auto_workers(plane_shape[0] * plane_shape[1])
    labels_bytes = labels_memory(labels_shape) if make_labels is labels_in_memory else 0
    check_fits(
        labels_bytes
        + prediction_memory(work_shape, config, fallback.tile, options.batch_size, workers),
        f"segmenting an image of shape {tuple(stack.data.shape)} ({stack.axes})",
        "crop it or split the stack into parts, or give a larger object diameter if the "
        "image is being enlarged",
    )
    labels = make_labels(labels_shape)
    n_planes = plane_count(stack.data.shape, stack.axes)
    tiler = _PlaneTiler(fallback, network, options, work_shape, len(bundle.class_names), n_planes)
    to_labels = partial(
        _plane_labels,
        mode=mode,
        object_diameter=config.get("object_diameter"),
        shape=plane_shape,
    )
    pipeline = LabelPipeline(to_labels, workers)
    store = _LabelStore(labels, labels_axes, mode)
    levels: list[PlaneLevel] = []

    def store_finished(drain: bool = False) -> Generator[Progress, None, None]:
        for finished in pipeline.collect(drain=drain):
            store.put(*finished)
            yield Progress(tiler.done, tiler.total, "post-processing")

    if colour is None:
        colour = decide_colour(stack, config, options)
    colour_input = None if colour is None else describe_colour_input(colour)
    yield Progress(0, tiler.total, "predicting")
    try:
        planes = iter_planes(stack.data, stack.axes)
        for plane_number, (index, plane, plane_axes) in enumerate(planes):
            ranges = None if plane_ranges is None else plane_ranges[index]
            x = prepare_plane(plane, plane_axes, config, options.channel, ranges, colour)
            planes_left = n_planes - plane_number
            size, probabilities = yield from sizer.size_plane(x, tiler, planes_left)
            if probabilities is None:
                if size.factor != 1.0:
                    shape = _scaled(plane_shape, size.factor)
                    if size.factor > 1.0 and size.source == "estimated":  # given: checked above
                        check_fits(
                            labels_bytes
                            + prediction_memory(
                                shape, config, fallback.tile, options.batch_size, workers
                            ),
                            f"segmenting a plane enlarged {size.factor:.2f}x for its small objects",
                            "give the object diameter yourself (a larger value enlarges less)",
                        )
                    x = _resize(x, shape)
                probabilities = yield from tiler.predict(x, planes_left)
            settings: dict[str, Any] = {"min_size": sizer.min_size(size)}
            if mode == "instances":
                level = fixed_level or choose_level(probabilities, options.threshold)
                levels.append(level)
                settings.update(threshold=level.foreground, seed_level=level.level)
            pipeline.submit(index, probabilities, **settings)
            yield from store_finished()
        yield from store_finished(drain=True)
    finally:
        pipeline.close()
    next_id = store.next_id
    link = mode == "instances" and options.link_z and "Z" in stack.axes
    coarse = _z_too_coarse(stack, sizer.sizes, sizer.trained) if link else None
    if coarse:
        yield Progress(tiler.done, tiler.total, "linking", notice=coarse)
    elif link:
        next_id = (yield from _link_along_z(labels, labels_axes)) + 1
    return Prediction(
        labels=labels,
        axes=labels_axes,
        mode=mode,
        class_names=bundle.class_names,
        compute=fallback.device,
        stats={
            "tiles": tiler.total,
            "planes": n_planes,
            "processed_pixel_ratio": tiler.processed
            / max(1, n_planes * plane_shape[0] * plane_shape[1]),
            "look_pixel_ratio": tiler.looked / max(1, n_planes * plane_shape[0] * plane_shape[1]),
            "tile_size": fallback.tile,
            "batch_size": fallback.batch_size,
            "memory_fallbacks": tiler.notices,
            "post_workers": workers,
            "scale_factor": float(np.median([s.factor for s in sizer.sizes])),
            "sizes": sizer.sizes,
            "levels": levels,
            "objects": next_id - 1 if mode == "instances" else None,
            "colour_input": colour_input,
        },
    )


def labels_memory(labels_shape: tuple[int, ...]) -> int:
    """Bytes of the uint32 labels of ``labels_shape`` held in memory."""
    return 4 * int(np.prod(labels_shape, dtype=np.int64))


def prediction_memory(
    work_shape: tuple[int, ...],
    config: dict[str, Any],
    tile: int,
    batch_size: int,
    post_workers: int,
) -> int:
    """Bytes of host memory :func:`iter_predict` needs besides the labels, from shapes alone.

    Per plane in flight (the one being predicted and
    one per post-processing worker) its normalised input and its blended class
    probabilities and weights at the working scale, in float32; and the network's
    activations for one batch of tiles (about 12 feature maps of the first level's width per
    pixel, an upper bound for a U-Net whose deeper levels are 4x smaller at twice the width).
    The input image itself is not counted: it is in memory already, or read plane by plane.
    """
    architecture = config["architecture"]
    n_classes = int(architecture.get("n_classes", 1))
    in_channels = int(architecture.get("in_channels", 1))
    width = int(architecture.get("base_channels", 32))
    plane = 4 * int(np.prod(work_shape, dtype=np.int64)) * (in_channels + n_classes + 1)
    tiles = 4 * batch_size * tile * tile * width * 12
    return (1 + post_workers) * plane + tiles


def predict(
    image: Stack | np.ndarray,
    bundle: Bundle,
    options: PredictOptions | None = None,
    *,
    axes: str | None = None,
    predictor: Predictor | None = None,
) -> Prediction:
    """Run :func:`iter_predict` to completion and return its :class:`Prediction`."""
    return run_to_end(iter_predict(image, bundle, options, axes=axes, predictor=predictor))


class _PlaneTiler:
    """Predicts planes tile by tile, keeps the progress tally, and steps down on out-of-memory.

    A plane that runs out of memory is predicted again from its start with the next smaller
    setting of the :class:`MemoryFallback`, so no plane is assembled from two settings.
    """

    def __init__(
        self,
        fallback: MemoryFallback,
        network: torch.nn.Module,
        options: PredictOptions,
        work_shape: tuple[int, ...],
        n_classes: int,
        n_planes: int,
    ) -> None:
        self.fallback, self.network, self.options = fallback, network, options
        self.work_shape, self.n_classes = work_shape, n_classes
        self.done = 0
        self.total = self._count(work_shape) * n_planes
        self.processed = 0  # network input pixels of the planes' predictions
        self.looked = 0  # network input pixels of the looks for the size estimate
        self.notices: list[str] = []

    def _count(self, shape: tuple[int, ...]) -> int:
        return count_tiles(*self._plan(shape))

    def _plan(self, shape: tuple[int, ...]) -> tuple[AxisPlan, AxisPlan]:
        return _plan(shape, self.fallback.tile, self.options.overlap, self.network)

    def predict(
        self, x: np.ndarray, planes_left: int, *, look: bool = False
    ) -> Generator[Progress, None, np.ndarray]:
        """Class probabilities of a prepared plane (or a window of one); yields per batch.

        ``planes_left`` counts the planes still to be predicted, this one included, for the
        forecast of the total; a ``look`` (a sample window for the size estimate) comes on
        top of its plane's prediction. Only this plane's tiles are counted exactly: the rest
        are forecast at the nominal scale, so the total can grow as planes are resized.
        """
        plane_start = self.done
        while True:
            ahead = planes_left if look else planes_left - 1
            self.total = (
                plane_start + self._count(x.shape[1:]) + self._count(self.work_shape) * ahead
            )
            rows, cols = self._plan(x.shape[1:])
            planner = iter_predict_plane(
                x,
                self.fallback.predictor,
                rows,
                cols,
                n_classes=self.n_classes,
                batch_size=self.fallback.batch_size,
                blending=self.options.blending,
            )
            try:
                while True:
                    self.done += next(planner)
                    yield Progress(self.done, self.total, "predicting")
            except StopIteration as finished:
                pixels = count_tiles(rows, cols) * rows.tile * cols.tile
                if look:
                    self.looked += pixels
                else:
                    self.processed += pixels
                return finished.value
            except RuntimeError as error:  # torch errors: report as ours
                if not is_out_of_memory(error):
                    raise EngineError(
                        f"the network failed on {self.fallback.device}: {error}"
                    ) from error
                notice = self.fallback.step_down(error)
                self.notices.append(notice)
                self.done = plane_start
                yield Progress(self.done, self.total, "predicting", notice=notice)


def nominal_tile(network: torch.nn.Module, tile_size: int) -> int:
    """The tile the network is given for a ``tile_size`` option, before any out-of-memory
    step-down: the smallest accepted size at least as large."""
    return network.fit_input_size(max(tile_size, network.fit_input_size(1)))


def context_margin(tile: int, overlap: float, network: torch.nn.Module) -> int:
    """Context pixels excluded from each side of a tile's core: half the overlap, at least
    what the network crops (the tiler rounds it to the network's grid, see
    :func:`~napari_unet.core.tiling.aligned_margin`)."""
    return max(int(round(overlap * tile / 2)), network.crop_per_side(tile))


def _plan(
    work_shape: tuple[int, ...], tile: int, overlap: float, network: torch.nn.Module
) -> tuple[AxisPlan, AxisPlan]:
    """Tile placement along Y and X for a tile size."""
    margin = context_margin(tile, overlap, network)
    crop = network.crop_per_side(tile)
    return tuple(
        plan_axis(
            n,
            tile,
            margin,
            crop=crop,
            fit=network.fit_input_size,
            stride=network.size_multiple,
        )
        for n in work_shape
    )


class _PlaneSizer:
    """Chooses the scale of each plane: the user's object diameter, or an estimate per plane.

    With no diameter given, an instance model that knows the size it was trained on looks at
    a sample window of the plane first (:func:`~napari_unet.core.diameter.sample_window`) and
    measures the objects it finds; when they are off by more than the no-rescale band, it
    looks again at the scale that estimate suggests (objects near the trained size are
    measured best) and keeps that second measure. An enlargement the second look does not
    confirm (:func:`~napari_unet.core.diameter.confirms_enlargement`) is refused: the plane
    is segmented at the model's scale. A window that is the whole plane is not predicted
    twice when it needs no rescale.
    """

    def __init__(self, trained: float | None, options: PredictOptions, mode: str) -> None:
        self.trained = trained
        self.options = options
        self.estimate = trained is not None and options.diameter is None and mode == "instances"
        if trained is not None and options.diameter is not None:
            factor = rescale_factor(trained, options.diameter, GIVEN_BAND)
            self.given = PlaneSize(factor, options.diameter, "given")
        else:
            self.given = PlaneSize(1.0, None, "model")
        self.sizes: list[PlaneSize] = []

    @property
    def nominal_factor(self) -> float:
        """The scale planes are expected at before any is looked at."""
        return self.given.factor

    def min_size(self, size: PlaneSize) -> int:
        """Smallest object kept in a plane, in its own pixels."""
        if self.options.min_size is not None:
            return self.options.min_size
        return default_min_size(size.diameter or self.trained)

    def size_plane(
        self, x: np.ndarray, tiler: _PlaneTiler, planes_left: int
    ) -> Generator[Progress, None, tuple[PlaneSize, np.ndarray | None]]:
        """The plane's size and, when the look already predicted it whole, its probabilities."""
        if not self.estimate:
            self.sizes.append(self.given)
            return self.given, None
        assert self.trained is not None
        sample = x[(slice(None), *sample_window(x))]
        whole = sample.shape == x.shape
        first = yield from tiler.predict(sample, planes_left, look=not whole)
        look_level = self.options.threshold or DEFAULT_LEVEL
        found = measure_diameter(first, look_level)
        factor = 1.0 if found.diameter is None else rescale_factor(self.trained, found.diameter)
        if factor == 1.0:
            size = self._estimated(found)
        else:
            closer = _resize(sample, _scaled(sample.shape[1:], factor))
            second = measure_diameter(
                (yield from tiler.predict(closer, planes_left, look=True)), look_level
            )
            if factor > 1.0 and not confirms_enlargement(found, second):
                size = PlaneSize(1.0, None, "unconfirmed", found.objects)
            elif second.diameter is None:
                size = self._estimated(found)
            else:
                size = self._estimated(
                    DiameterEstimate(second.diameter / factor, second.objects, second.undecided)
                )
        self.sizes.append(size)
        return size, (first if whole and size.factor == 1.0 else None)

    def _estimated(self, found: DiameterEstimate) -> PlaneSize:
        """The plane's size from a measure in its own pixels (the model's with no measure)."""
        assert self.trained is not None
        if found.diameter is None:
            return PlaneSize(1.0, None, "model")
        factor = rescale_factor(self.trained, found.diameter)
        return PlaneSize(factor, found.diameter, "estimated", found.objects)


def _scaled(shape: tuple[int, ...], factor: float) -> tuple[int, ...]:
    return tuple(max(1, round(n * factor)) for n in shape)


def _resize(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize (C, Y, X) to (C, *shape) with linear interpolation (anti-aliased when shrinking)."""
    from skimage.transform import resize

    out = np.empty((x.shape[0], *shape), dtype=np.float32)
    shrinking = shape[0] < x.shape[1] or shape[1] < x.shape[2]
    for c in range(x.shape[0]):
        out[c] = resize(x[c], shape, order=1, anti_aliasing=shrinking, preserve_range=True)
    return out


def _plane_labels(
    probabilities: np.ndarray,
    *,
    mode: str,
    min_size: int,
    threshold: float = DEFAULT_LEVEL,
    seed_level: float | None = None,
    object_diameter: float | None,
    shape: tuple,
) -> np.ndarray:
    """Labels of one plane from its class probabilities (at the model's scale, where objects
    are ``object_diameter`` across), resized back to ``shape``; instances are seeded above
    ``seed_level`` (None: ``threshold``) and grown into the foreground above ``threshold``."""
    scale = shape[0] / probabilities.shape[1]
    if probabilities.shape[1:] != tuple(shape):
        probabilities = _resize(probabilities, shape)
    if mode == "semantic":
        return semantic_labels(probabilities)
    return instance_labels(
        probabilities,
        threshold=threshold,
        seed_level=seed_level,
        min_size=min_size,
        seed_sigma=seed_smoothing_sigma(object_diameter, scale),
    )


class _LabelStore:
    """Writes planes' labels into the stack's labels; instance ids run on across planes."""

    def __init__(self, labels: Any, labels_axes: str, mode: str) -> None:
        self.labels, self.labels_axes, self.mode = labels, labels_axes, mode
        self.next_id = 1

    def put(self, index: tuple[int, ...], plane_labels: np.ndarray) -> None:
        """Store the labels of the plane at stack ``index`` (planes come in stack order)."""
        if self.mode == "instances":
            offset = np.uint32(self.next_id - 1)
            plane_labels = np.where(plane_labels > 0, plane_labels + offset, 0).astype(np.uint32)
            self.next_id = max(self.next_id, int(plane_labels.max()) + 1)
        self.labels[plane_key(index, self.labels_axes)] = plane_labels


def _z_too_coarse(stack: Stack, sizes: list[PlaneSize], trained: float | None) -> str | None:
    """Why the planes of a Z stack are not linked into 3D objects, or None to link them.

    An object spans several planes only when the Z step is shorter than the object; with a
    coarser step (from the file's Z and X pixel sizes, in the same unit) each object lies in
    about one plane, and objects of neighbouring planes that overlap in Y and X are different
    objects at different depths, which linking would merge.
    """
    z, x = stack.scale.get("Z"), stack.scale.get("X")
    if not z or not x or stack.units.get("Z") != stack.units.get("X"):
        return None
    diameters = [s.diameter for s in sizes if s.diameter is not None]
    diameter = float(np.median(diameters)) if diameters else trained
    step = z / x
    if diameter is None or step <= diameter:
        return None
    return (
        f"Z step ({step:.0f} px) longer than the objects ({diameter:.0f} px across): planes "
        "segmented separately, not linked into 3D objects"
    )


def _link_along_z(labels: Any, labels_axes: str) -> Generator[Progress, None, int]:
    """Relink object ids through Z, in place, for each position of the other axes.

    Two planes are read at a time, so ``labels`` may be an array on disk. Returns the number
    of objects after linking.
    """
    z_axis = labels_axes.index("Z")
    outer_axes = [i for i in range(labels.ndim - 2) if i != z_axis]
    n_z = labels.shape[z_axis]
    total = (n_z - 1) * int(np.prod([labels.shape[i] for i in outer_axes], dtype=np.int64))
    done = 0
    next_id = 1
    for rest in np.ndindex(*(labels.shape[i] for i in outer_axes)):

        def plane_at(z: int, rest: tuple[int, ...] = rest) -> tuple[Any, ...]:
            index = dict(zip(outer_axes, rest, strict=True))
            index[z_axis] = z
            return tuple(index.get(i, slice(None)) for i in range(labels.ndim))

        previous = np.zeros(labels.shape[-2:], dtype=np.uint32)
        for z in range(n_z):
            current, next_id = link_to_previous(previous, np.asarray(labels[plane_at(z)]), next_id)
            labels[plane_at(z)] = current
            previous = current
            if z:
                done += 1
                yield Progress(done, total, "linking")
    return next_id - 1

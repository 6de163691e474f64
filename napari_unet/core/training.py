"""Fine-tune (or train from scratch) a model bundle on labelled planes.

:func:`iter_finetune` is a generator that yields a :class:`TrainStep` after every optimiser
step and returns a :class:`TrainResult` holding a complete bundle, compared with the base
model on held-out labels (:mod:`napari_unet.core.heldout`). Stopping is cooperative: set the
``stop`` event, or send ``"stop"`` into the generator, and it returns the result so far.

Fine-tuning on a few corrections must not make a model worse elsewhere. Training only on the
corrected regions tells the network nothing about the untouched background, and it learns to
fire everywhere; so the labels the person left as predicted are trained on too, with a lower
weight (``context_weight``), and the weights are pulled towards the base model's (L2-SP,
``anchor_weight``).

Inside napari, run it through :mod:`napari_unet.core.training_process` (a child process).
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_unet.core.augment import augment, draw_zoom, zoom_patch
from napari_unet.core.bundle import Bundle, clone_bundle, network_state
from napari_unet.core.devices import Compute, resolve_compute, usable_cores
from napari_unet.core.diameter import labels_diameter, rescale_factor
from napari_unet.core.errors import EngineError, TrainingDataError
from napari_unet.core.heldout import (
    HeldOut,
    VersionComparison,
    compare_classes,
    compare_instances,
    held_out_regions,
)
from napari_unet.core.inference import predict
from napari_unet.core.options import PredictOptions, TrainSettings
from napari_unet.core.preprocess import prepare_plane
from napari_unet.core.retention import (
    RetentionCheck,
    blended_state,
    metric_name,
    pull_back,
    scorer,
)
from napari_unet.core.review import certainty_map, iter_flipped_views
from napari_unet.core.samples import TrainingSample
from napari_unet.core.targets import (
    IGNORE,
    border_weights,
    check_labels,
    class_border_weights,
    training_target,
)

MAX_BAD_STEPS = 5
# the untouched context's weight for a base without replay patches (the default before replay)
CONTEXT_WEIGHT_WITHOUT_REPLAY = 0.3
# how far from a trained base towards the fine-tuned weights the new version lies
# (TrainSettings.finetuned_share; chosen on benchmarks/finetune_gain.py's tuning scenarios)
FINETUNED_SHARE = 0.5
# how many levels of a trained base, from the input, a fine-tune trains
# (TrainSettings.trained_levels; chosen on benchmarks/finetune_gain.py's tuning scenarios)
TRAINED_LEVELS = 2
_HOLD_OUT_MARGIN = 16  # pixels around a held-out region that are not trained on either


@dataclass(frozen=True)
class TrainStatus:
    """A phase of a training job without optimiser steps (start-up, scoring), for display."""

    text: str


@dataclass(frozen=True)
class TrainStep:
    """Progress of training after one optimiser step.

    ``val_score`` (at validation steps) and ``initial_score`` (the base model's) are the
    held-out score of :class:`~napari_unet.core.heldout.VersionComparison`; both are None
    when nothing was held out or the held-out labels hold no object.
    """

    step: int
    total: int
    loss: float
    val_score: float | None
    elapsed: float
    skipped: bool = False
    initial_score: float | None = None


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`iter_finetune`.

    Attributes
    ----------
    bundle : Bundle
        The trained model with its final weights (not yet saved).
    history : list of dict
        One record per step: ``step``, ``loss``, ``val_score`` (or None).
    stopped : bool
        True when the run ended before its last step (user stop or failure).
    reason : str
        Why it ended.
    comparison : VersionComparison or None
        The base model against the new weights on the held-out labels (None when nothing
        was held out).
    retention : RetentionCheck or None
        Both versions on the base's check patches and which weights were kept (None when the
        base ships none or the check is off).
    """

    bundle: Bundle
    history: list[dict[str, Any]]
    stopped: bool
    reason: str
    comparison: VersionComparison | None
    retention: RetentionCheck | None = None


@dataclass
class _Prepared:
    x: np.ndarray  # (C, Y, X) float32, normalised
    target: np.ndarray  # (Y, X) int64, IGNORE where the weight is 0
    weights: np.ndarray  # (Y, X) float32 loss weight per pixel
    known_index: np.ndarray  # flat indices of person-labelled pixels (patch centres)
    labels: np.ndarray  # (Y, X) int64 the target was built from (rebuilt after a zoom)
    mode: str  # "instances" or "semantic"


def prepare_sample(
    sample: TrainingSample,
    config: dict[str, Any],
    settings: TrainSettings,
    certainty: np.ndarray | None = None,
) -> _Prepared:
    """Normalise one sample's image and build its target and per-pixel loss weights.

    Outside the sample's known-mask the weight is ``settings.context_weight``, times
    ``certainty`` (0 to 1 per pixel, see :func:`~napari_unet.core.review.certainty_map`)
    when given.
    """
    labels = np.asarray(sample.labels)
    if labels.ndim != 2:
        raise TrainingDataError(
            f"labels must be one plane (Y, X), got shape {labels.shape} ({sample.source})"
        )
    mode = config["mode"]
    check_labels(labels, mode, len(config["class_names"]))
    labels = labels.astype(np.int64)
    x = prepare_plane(sample.image, sample.plane_axes, config, settings.channel)
    if x.shape[1:] != labels.shape:
        raise TrainingDataError(
            f"labels of shape {labels.shape} do not match the image plane {x.shape[1:]} ({sample.source})"
        )
    target = training_target(labels, None, mode)
    if sample.known is None:
        known = np.ones(labels.shape, bool)
    else:
        if sample.known.shape != labels.shape:
            raise TrainingDataError(
                f"the known-mask shape {sample.known.shape} differs from the labels' {labels.shape}"
            )
        known = np.asarray(sample.known) != 0
    weight = settings.context_weight or 0.0  # None (not decided against a base) ignores it
    context = weight if certainty is None else weight * certainty
    weights = np.where(known, 1.0, context).astype(np.float32)
    if settings.context_outlines is False and mode == "instances" and sample.known is not None:
        weights[_outline_band(labels) & ~known] = 0.0
    if settings.border_weights:
        if mode == "instances":
            weights *= border_weights(labels)
        else:
            weights *= class_border_weights(labels, len(config["class_names"]))
    target[weights == 0] = IGNORE
    return _Prepared(x, target, weights, np.flatnonzero(known), labels, mode)


def _outline_band(labels: np.ndarray) -> np.ndarray:
    """Pixels within 2 of an object's outline: where the labels change, widened by one."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    return ndi.binary_dilation(find_boundaries(labels, mode="thick"))


def _hold_out(item: _Prepared, region: np.ndarray) -> _Prepared:
    """The item with ``region`` (grown by a margin against leaks) removed from training."""
    from scipy import ndimage as ndi

    held = ndi.binary_dilation(region, iterations=_HOLD_OUT_MARGIN)
    weights = np.where(held, 0.0, item.weights).astype(np.float32)
    target = np.where(held, IGNORE, item.target)
    known_index = item.known_index[~held.ravel()[item.known_index]]
    return _Prepared(item.x, target, weights, known_index, item.labels, item.mode)


def _extract(
    p: _Prepared, top: int, left: int, span: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patch of edge ``span`` at (top, left), in coordinates of the plane padded by ``span`` on
    every side, resized to ``size`` when ``span`` differs (a zoom)."""
    window = (slice(top, top + span), slice(left, left + span))
    x = _padded(p.x, span, "symmetric")[(slice(None), *window)]
    w = _padded(p.weights, span, 0.0)[window]
    if span == size:
        return x, _padded(p.target, span, IGNORE)[window], w
    x, labels, w = zoom_patch(x, _padded(p.labels, span, 0)[window], w, size)
    t = training_target(labels, None, p.mode)
    t[w <= 0] = IGNORE
    return x, t, w


def _padded(a: np.ndarray, size: int, how: Any) -> np.ndarray:
    widths = [(0, 0)] * (a.ndim - 2) + [(size, size), (size, size)]
    if how == "symmetric":
        return np.pad(a, widths, mode="symmetric" if min(a.shape[-2:]) > 1 else "edge")
    return np.pad(a, widths, mode="constant", constant_values=how)


def iter_patches(
    items: list[_Prepared],
    settings: TrainSettings,
    size: int,
    crop: int,
    seed: int,
    replay: Sequence[_Prepared] = (),
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless batches (x, target, weights) of augmented patches, mostly centred on labels.

    ``items`` may change while batches are drawn (corrections made during training): the
    sampling chances are recomputed when it does. With a ``replay`` set, each patch comes
    from one of its items (chosen uniformly) with chance ``settings.replay_fraction``.
    """
    rng = np.random.default_rng(seed)
    seen: tuple[int, ...] = ()
    while True:
        current = list(items)
        if tuple(map(id, current)) != seen:
            seen = tuple(map(id, current))
            usable = [p for p in current if p.known_index.size]
            sizes = np.array([p.known_index.size for p in usable], dtype=np.float64)
            chances = sizes / sizes.sum()
        xs, ts, ws = [], [], []
        for _ in range(settings.batch_size):
            if replay and rng.random() < settings.replay_fraction:
                p = replay[int(rng.integers(len(replay)))]
            else:
                p = usable[int(rng.choice(len(usable), p=chances))]
            height, width = p.target.shape
            span = max(8, round(size / draw_zoom(settings.augment, rng)))
            if rng.random() < settings.annotated_fraction:
                flat = int(p.known_index[rng.integers(p.known_index.size)])
                cy, cx = divmod(flat, width)
                cy += int(rng.integers(-span // 4, span // 4 + 1))
                cx += int(rng.integers(-span // 4, span // 4 + 1))
            else:
                cy, cx = int(rng.integers(height)), int(rng.integers(width))
            top = int(np.clip(cy - span // 2, -span // 2, max(height - span // 2, 0))) + span
            left = int(np.clip(cx - span // 2, -span // 2, max(width - span // 2, 0))) + span
            x, t, w = augment(*_extract(p, top, left, span, size), rng, settings.augment)
            if crop:
                t, w = t[crop:-crop, crop:-crop], w[crop:-crop, crop:-crop]
            xs.append(x)
            ts.append(t)
            ws.append(w)
        yield np.stack(xs), np.stack(ts), np.stack(ws)


class _Prefetcher:
    """Builds batches in background threads so the optimiser never waits on augmentation.

    One thread per source iterator. Batches come out as CPU tensors, in page-locked memory when
    ``pin_memory`` (CUDA), so their copy to the GPU can overlap with compute. With one source
    the batch order is reproducible; with several it depends on thread timing.
    """

    def __init__(
        self,
        sources: Sequence[Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]],
        depth: int = 4,
        *,
        pin_memory: bool = False,
    ) -> None:
        self._pin_memory = pin_memory
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._run, args=(source,), name="napari-unet-patches", daemon=True
            )
            for source in sources
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, batches: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        try:
            for arrays in batches:
                batch = tuple(torch.from_numpy(a) for a in arrays)
                if self._pin_memory:
                    batch = tuple(t.pin_memory() for t in batch)
                while not self._closed.is_set():
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._closed.is_set():
                    return
        except BaseException as error:  # hand any failure to the consumer
            self._queue.put(error)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._closed.set()
        for thread in self._threads:
            thread.join(timeout=2.0)


def patch_workers(compute: Compute) -> int:
    """Threads building training batches: one on the CPU (the network needs the cores), more
    on a GPU, where augmentation would otherwise be the bottleneck (up to 4, leaving a core)."""
    if compute.device.type == "cpu":
        return 1
    return max(1, min(4, usable_cores() - 1))


class _Validation:
    """Held-out parts of the labelled planes, scored by predicting them as inference does.

    Both versions are judged the way the user meets them: whole planes through
    :func:`~napari_unet.core.inference.iter_predict` (normalisation, tiling, post-processing),
    then compared object by object with the user's labels in the held-out regions.
    """

    def __init__(
        self,
        samples: Sequence[TrainingSample],
        held: list[HeldOut],
        config: dict[str, Any],
        options: PredictOptions,
    ) -> None:
        self.samples = [samples[h.sample] for h in held]
        self.regions = [h.region for h in held]
        self.truths = [np.asarray(s.labels) for s in self.samples]
        self.config = config
        self.options = options  # from plane_options, shared with the context's certainty
        self.base_labels: list[np.ndarray] = []

    def __bool__(self) -> bool:
        return bool(self.samples)

    def predict(self, network: torch.nn.Module) -> list[np.ndarray]:
        """Labels of every held-out plane predicted by ``network`` (left in its modes)."""
        modes = [(module, module.training) for module in network.modules()]
        bundle = Bundle(network=network.eval(), config=self.config)
        try:
            return [
                predict(s.image, bundle, self.options, axes=s.plane_axes).labels
                for s in self.samples
            ]
        finally:
            for module, training in modes:
                module.training = training

    def compare(self, labels: list[np.ndarray]) -> VersionComparison:
        """The base model's labels against ``labels`` on the held-out regions."""
        if self.config["mode"] == "instances":
            return compare_instances(self.truths, self.base_labels, labels, self.regions)
        n_classes = len(self.config["class_names"])
        return compare_classes(self.truths, self.base_labels, labels, self.regions, n_classes)


def plane_options(
    config: dict[str, Any], settings: TrainSettings, options: PredictOptions | None
) -> PredictOptions:
    """How a model segments training planes (already at the model's scale): the user's
    prediction options, at the model's own object size, device and precision of ``settings``,
    no Z-linking."""
    return replace(
        options or PredictOptions(),
        mode=None,
        # the planes are at the model's scale already (at_model_scale), from their labels: no
        # estimate needed, and a diameter the user gave for the raw image would be wrong there
        diameter=config.get("object_diameter") if config["mode"] == "instances" else None,
        link_z=False,
        device=settings.device,
        precision=settings.precision,
        channel=settings.channel,
        post_workers=0,
    )


class _ContextCertainty:
    """How sure a model is of the labels a person left as it predicted them.

    Called with a sample at the model's scale: None when the whole plane is known (labelled
    by a person) or the setting is off, else :func:`~napari_unet.core.review.certainty_map`
    of its labels against the model's flipped predictions of the plane (three more
    predictions of it).
    """

    def __init__(self, base: Bundle, settings: TrainSettings, options: PredictOptions) -> None:
        self.base = base
        self.options = options
        self.on = (
            settings.weigh_context and bool(settings.context_weight) and base.mode == "instances"
        )

    def __call__(self, sample: TrainingSample) -> np.ndarray | None:
        if not self.on or sample.known is None:
            return None
        views = [
            view
            for view in iter_flipped_views(sample.image, sample.plane_axes, self.base, self.options)
            if isinstance(view, np.ndarray)
        ]
        return certainty_map(sample.labels, views)


def _loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, use_dice: bool
) -> torch.Tensor:
    logits = logits.float()
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    counted = (weights > 0).float()
    loss = (per_pixel * weights).sum() / counted.sum().clamp_min(1.0)
    if use_dice:
        probabilities = torch.softmax(logits, dim=1)
        one_hot = F.one_hot(target.clamp_min(0), logits.shape[1]).permute(0, 3, 1, 2).float()
        mask = counted.unsqueeze(1)
        intersection = (probabilities * one_hot * mask).sum((0, 2, 3))
        total = ((probabilities + one_hot) * mask).sum((0, 2, 3))
        loss = loss + 1.0 - ((2 * intersection + 1.0) / (total + 1.0)).mean()
    return loss


def _anchor_penalty(
    network: torch.nn.Module, anchor: list[tuple[torch.nn.Parameter, torch.Tensor]], weight: float
) -> torch.Tensor | float:
    """L2-SP: ``weight * sum((w - w_base) ** 2)`` over the network's parameters."""
    if not weight:
        return 0.0
    return weight * sum(((p - p0) ** 2).sum() for p, p0 in anchor)


def _optimizer(network: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """The optimiser of the parameters ``settings.trained_levels`` (decided by
    :func:`with_base_defaults`) lets train; the others get no gradient and keep their values
    (their batch-norm statistics still follow the batches, as :func:`_train_mode` sets)."""
    trained = network.input_side_parameters(settings.trained_levels)
    chosen = {id(p) for p in trained}
    for parameter in network.parameters():
        parameter.requires_grad_(id(parameter) in chosen)
    if settings.optimizer == "adamw":
        # weight decay pulls towards zero; with an anchor the pull is towards the base instead
        decay = 0.0 if settings.anchor_weight else 1e-4
        return torch.optim.AdamW(trained, lr=settings.learning_rate, weight_decay=decay)
    return torch.optim.SGD(trained, lr=settings.learning_rate, momentum=0.99)


def _train_mode(network: torch.nn.Module, freeze_norm: bool) -> None:
    """Put ``network`` in training mode; with ``freeze_norm``, its trained batch-norm layers
    in eval mode.

    A frozen layer normalises with its running statistics and does not update them; its
    scale and shift are still trained. Layers that have never tracked a batch are not frozen.
    """
    network.train()
    if freeze_norm:
        for module in network.modules():
            if (
                isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                and module.num_batches_tracked is not None
                and int(module.num_batches_tracked) > 0
            ):
                module.eval()


def _learning_rate_factor(step: int, total: int) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10%."""
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def iter_finetune(
    base: Bundle,
    samples: Sequence[TrainingSample],
    settings: TrainSettings | None = None,
    *,
    stop: threading.Event | None = None,
    more_samples: Callable[[], Sequence[TrainingSample]] | None = None,
    predict_options: PredictOptions | None = None,
) -> Generator[TrainStatus | TrainStep, Any, TrainResult]:
    """Train a copy of ``base`` on labelled planes.

    Parameters
    ----------
    base : Bundle
        Starting model (a pretrained bundle, or a fresh one from
        :func:`~napari_unet.core.bundle.bundle_from_config` to train from scratch). It is
        not modified.
    samples : sequence of TrainingSample
        Labelled planes. Inside a sample's known-mask the labels weigh fully; outside it they
        weigh ``settings.context_weight``.
    settings : TrainSettings, optional
    stop : threading.Event, optional
        Set it to stop at the next step; sending ``"stop"`` into the generator does the same.
    more_samples : callable, optional
        Called before every step; the samples it returns join the training data (batches
        already built, at most the prefetch depth of 4, come first). A sample from a plane
        with a held-out region (same ``source``) is trained on outside that region only, so
        the held-out comparison stays fixed and fair.
    predict_options : PredictOptions, optional
        How both versions segment the held-out labels: the options the user segmented with
        (diameter, threshold, tiles...), so the comparison judges what the user will get.
        Device, precision and channel come from ``settings``; Z-linking does not apply.

    Yields
    ------
    TrainStatus
        Before the first step, while the held-out labels are scored with the base model.
    TrainStep
        After every optimiser step (also after skipped, non-finite ones).

    Returns
    -------
    TrainResult
        Always holds a complete, loadable bundle: the final weights (or the last good ones
        after repeated non-finite losses), compared with the base model on held-out labels.
    """
    settings = with_base_defaults(settings or TrainSettings(), base)
    settings.check()
    if not samples:
        raise TrainingDataError(
            "the training set is empty: label or correct at least one plane first"
        )
    bundle = clone_bundle(base)
    _measure_object_diameter(samples, bundle.config)
    options = plane_options(bundle.config, settings, predict_options)
    certainty = _ContextCertainty(base, settings, options)
    if certainty.on:
        yield TrainStatus("checking which of the untouched labels the base model is sure of")
    data = _TrainingData.split(samples, bundle.config, settings, certainty)
    torch.manual_seed(settings.seed)
    replay = _replay_items(base, settings)
    validation = _Validation(data.samples, data.held, bundle.config, options)
    kept = _KeptShare(base.network, settings.finetuned_share)
    trainer = _Trainer(bundle.network, settings)
    start = time.perf_counter()
    initial_score, scored = None, False
    if validation:
        yield TrainStatus("scoring the base model on the held-out labels")
        validation.base_labels = validation.predict(trainer.network)
        before = validation.compare(validation.base_labels)
        scored = before.scored  # held-out labels without an object: no curve to follow
        initial_score = before.base_score if scored else None
    history: list[dict[str, Any]] = []
    reason, stopped = "finished", False
    prefetcher = trainer.prefetcher(data.train, replay)
    _train_mode(trainer.network, settings.freeze_norm)
    try:
        for step in range(1, settings.steps + 1):
            if more_samples is not None:
                data.add(more_samples())
            loss, skipped = trainer.step(step, prefetcher.next())
            val_score = None
            if skipped and trainer.gave_up():
                reason, stopped = (
                    f"stopped after {MAX_BAD_STEPS} non-finite losses in a row; kept the last good weights",
                    True,
                )
            elif not skipped and trainer.checkpoint(step) and scored:
                version = kept.version(trainer.network)
                val_score = validation.compare(validation.predict(version)).new_score
            history.append({"step": step, "loss": loss, "val_score": val_score})
            request = yield TrainStep(
                step=step,
                total=settings.steps,
                loss=loss,
                val_score=val_score,
                elapsed=time.perf_counter() - start,
                skipped=skipped,
                initial_score=initial_score,
            )
            if stopped:
                break
            if request == "stop" or (stop is not None and stop.is_set()):
                reason, stopped = f"stopped by the user at step {step}", True
                break
    finally:
        prefetcher.close()
    network = trainer.network.eval()
    retention = None
    checks = _check_patches(base, settings)
    if checks:
        yield TrainStatus("checking what the new version kept of the model's training data")
        # the base's own grey patches: the user's channel choice does not apply to them
        score = scorer(checks, bundle.config, replace(options, channel=None))
        tolerance = settings.retention_tolerance
        metric = metric_name(bundle.config)
        retention = pull_back(network, base.network, score, tolerance, len(checks), metric)
    # the check judges the trained weights and the average is taken after it: checking the
    # average instead lost twice as much in the tune set's worst scenario (RESULTS.md)
    network = kept.version(network).eval()
    comparison = None
    if validation:
        yield TrainStatus("scoring the new version on the held-out labels")
        comparison = validation.compare(validation.predict(network))
    bundle.network = network.to("cpu", memory_format=torch.contiguous_format)
    seconds = time.perf_counter() - start
    _record(bundle, base, data.used, settings, history, comparison, reason, seconds, retention)
    return TrainResult(bundle, history, stopped, reason, comparison, retention)


class _KeptShare:
    """What a run saves of its trained weights: ``share`` of the way from the base's
    (:attr:`TrainSettings.finetuned_share`, a weight-space average as in WiSE-FT)."""

    def __init__(self, base: torch.nn.Module, share: float) -> None:
        self.share = share
        self.base_state = network_state(base) if share < 1.0 else {}

    def version(self, network: torch.nn.Module) -> torch.nn.Module:
        """``network`` itself when the whole change is kept, else an averaged copy."""
        if self.share >= 1.0:
            return network
        kept = copy.deepcopy(network)
        kept.load_state_dict(blended_state(self.base_state, network_state(network), self.share))
        return kept


def with_base_defaults(settings: TrainSettings, base: Bundle) -> TrainSettings:
    """``settings`` with what depends on the base decided (values given are kept).

    ``border_weights`` None follows the base model's last training run recorded in its config
    (off when it has none); ``context_weight`` None is 0 when the base carries replay patches
    to rehearse (they teach the background) and :data:`CONTEXT_WEIGHT_WITHOUT_REPLAY` when it
    does not, where the context is the network's only view of the untouched background;
    ``finetuned_share`` None is :data:`FINETUNED_SHARE` when the base's config records a
    training run and 1 when it records none (random weights: no base to stay near);
    ``trained_levels`` None likewise is :data:`TRAINED_LEVELS` or 0 (every level).
    """
    runs = base.config.get("training", {}).get("history", [])
    if settings.border_weights is None:
        trained_with = bool(runs and runs[-1].get("settings", {}).get("border_weights"))
        settings = replace(settings, border_weights=trained_with)
    if settings.context_weight is None:
        rehearses = base.replay is not None and base.replay.rehearsed > 0
        weight = 0.0 if rehearses else CONTEXT_WEIGHT_WITHOUT_REPLAY
        settings = replace(settings, context_weight=weight)
    if settings.finetuned_share is None:
        settings = replace(settings, finetuned_share=FINETUNED_SHARE if runs else 1.0)
    if settings.trained_levels is None:
        settings = replace(settings, trained_levels=TRAINED_LEVELS if runs else 0)
    return settings


def _measure_object_diameter(samples: Sequence[TrainingSample], config: dict[str, Any]) -> None:
    """Give a new instance model (``config`` without an object diameter) the diameter of the
    objects in ``samples``' labels, the size its images are brought to from then on."""
    if config["mode"] == "instances" and not config.get("object_diameter"):
        check_labels_of(samples, config)
        config["object_diameter"] = labels_diameter([s.labels for s in samples]).diameter


@dataclass
class _TrainingData:
    """A run's labelled planes at the model's scale: what trains and what is held out.

    Attributes
    ----------
    config : dict
        The bundle config the planes are prepared for.
    settings : TrainSettings
    samples : list of TrainingSample
        The planes given at the start, at the model's scale (held-out regions index them).
    held : list of HeldOut
        The held-out regions that score the versions.
    train : list of _Prepared
        What the batches are drawn from. Patch iterators hold this very list: it is changed
        in place as corrections arrive, never replaced.
    sources : list of str
        ``samples``' source of each item of ``train``.
    held_by : dict
        The held-out region of each source that has one.
    factors : dict
        The scale of each source: a re-corrected plane keeps its first scale.
    used : list of TrainingSample
        Every sample trained on, as given (recorded in the bundle's history).
    certainty : callable
        A sample at the model's scale -> the certainty weighing its context, or None.
    """

    config: dict[str, Any]
    settings: TrainSettings
    samples: list[TrainingSample]
    held: list[HeldOut]
    train: list[_Prepared]
    sources: list[str]
    held_by: dict[str, HeldOut]
    factors: dict[str, float]
    used: list[TrainingSample]
    certainty: Callable[[TrainingSample], np.ndarray | None]

    @classmethod
    def split(
        cls,
        given: Sequence[TrainingSample],
        config: dict[str, Any],
        settings: TrainSettings,
        certainty: Callable[[TrainingSample], np.ndarray | None],
    ) -> _TrainingData:
        """Bring ``given`` to the model's scale, prepare it and hold out part of it."""
        factors: dict[str, float] = {}
        samples = [at_model_scale(s, config, factors) for s in given]
        prepared = [prepare_sample(s, config, settings, certainty(s)) for s in samples]
        if all(p.known_index.size == 0 for p in prepared):
            raise TrainingDataError("no labelled pixels: every known-mask is empty")
        held = held_out_regions(
            [p.target.shape for p in prepared],
            [s.known for s in samples],
            settings.val_fraction,
            np.random.default_rng(settings.seed),
        )
        train, sources = _training_items(prepared, held, samples)
        held_by = {samples[h.sample].source: h for h in held if samples[h.sample].source}
        return cls(
            config,
            settings,
            samples,
            held,
            train,
            sources,
            held_by,
            factors,
            list(given),
            certainty,
        )

    def add(self, new: Sequence[TrainingSample]) -> None:
        """Train on samples that arrived during the run: a plane already trained on (same
        source) is replaced, and held-out parts stay out (see :func:`_held_out_of`)."""
        for sample in new:
            scaled = at_model_scale(sample, self.config, self.factors)
            prepared = prepare_sample(scaled, self.config, self.settings, self.certainty(scaled))
            item = _held_out_of(prepared, scaled, self.held_by)
            if item is None:
                continue
            if sample.source and sample.source in self.sources:  # a re-corrected plane
                self.train[self.sources.index(sample.source)] = item
            else:
                self.train.append(item)
                self.sources.append(sample.source)
            self.used.append(sample)


class _Trainer:
    """The network on its device and one optimiser step at a time: learning-rate schedule,
    mixed precision, the anchor to the base weights, and the last good weights to return to
    after non-finite losses."""

    def __init__(self, network: torch.nn.Module, settings: TrainSettings) -> None:
        self.settings = settings
        self.compute = resolve_compute(settings.device, settings.precision)
        self.network = network.to(self.compute.device)
        if self.compute.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.size = self.network.fit_input_size(settings.patch_size)
        self.anchor = [(p, p.detach().clone()) for p in self.network.parameters()]
        self.optimizer = _optimizer(self.network, settings)
        self.good_state = network_state(self.network)
        self.bad_in_row = 0
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
        self.scaler = torch.amp.GradScaler(
            self.compute.device.type, enabled=self.compute.autocast_dtype == torch.float16
        )

    def prefetcher(self, train: list[_Prepared], replay: list[_Prepared]) -> _Prefetcher:
        """Batch builders in background threads, one seed each, for this network's input."""
        crop = self.network.crop_per_side(self.size)
        seed = self.settings.seed
        return _Prefetcher(
            [
                iter_patches(train, self.settings, self.size, crop, seed + 1 + worker, replay)
                for worker in range(patch_workers(self.compute))
            ],
            pin_memory=self.compute.device.type == "cuda",
        )

    def step(
        self, step: int, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[float, bool]:
        """One optimiser step (number ``step``, from 1) on ``batch``; returns the loss and
        whether the step was skipped because the loss was not finite."""
        compute, settings = self.compute, self.settings
        for group in self.optimizer.param_groups:
            group["lr"] = settings.learning_rate * _learning_rate_factor(step - 1, settings.steps)
        x, target, weights = (t.to(compute.device, non_blocking=True) for t in batch)
        if compute.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with compute.autocast():
                logits = self.network(x)
            loss = _loss(logits, target, weights, settings.dice)
            loss_value = float(loss.detach())  # the one host sync per step, before the yield
            skipped = not math.isfinite(loss_value)
            if not skipped:
                total = loss + _anchor_penalty(self.network, self.anchor, settings.anchor_weight)
                self.scaler.scale(total).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
        except RuntimeError as error:
            raise EngineError(f"training failed on {compute.label}: {error}") from error
        self.bad_in_row = self.bad_in_row + 1 if skipped else 0
        return loss_value, skipped

    def gave_up(self) -> bool:
        """After a skipped step: whether it was the last of MAX_BAD_STEPS in a row, in which
        case the last good weights are back in the network."""
        if self.bad_in_row < MAX_BAD_STEPS:
            return False
        self.network.load_state_dict(self.good_state)
        return True

    def checkpoint(self, step: int) -> bool:
        """After a good step: at every ``val_every`` steps and the last, keep the weights as
        the last good ones and return True (the held-out labels are scored then)."""
        due = step % self.settings.val_every == 0 or step == self.settings.steps
        if due:
            self.good_state = network_state(self.network)
        return due


def _replay_items(base: Bundle, settings: TrainSettings) -> list[_Prepared]:
    """The base bundle's replay patches, prepared for training (none if it has no replay set
    or ``settings.replay_fraction`` is 0). Their labels are complete: no context weighting,
    and the user's channel choice does not apply to them; the border weights do, as when the
    base was trained on them."""
    if base.replay is None or not settings.replay_fraction:
        return []
    own = replace(settings, channel=None)
    return [
        prepare_sample(at_model_scale(sample, base.config, {}), base.config, own)
        for sample in base.replay.samples()
    ]


def _check_patches(base: Bundle, settings: TrainSettings) -> list[TrainingSample]:
    """The base bundle's check patches at the model's scale, as its rehearsed replay patches
    are, when the retention check is on (else none)."""
    if base.replay is None or settings.retention_tolerance is None:
        return []
    return [at_model_scale(s, base.config, {}) for s in base.replay.check_samples()]


def _held_out_of(
    item: _Prepared, sample: TrainingSample, held_by: dict[str, HeldOut]
) -> _Prepared | None:
    """A sample added during training, with the held-out part of its plane removed.

    A correction made while training runs may be in a plane (same ``source``) whose held-out
    region scores the versions: that region stays out of training, and a plane held out whole
    is not trained on at all, so the comparison stays fair.
    """
    h = held_by.get(sample.source)
    if h is None:
        return item
    if h.whole_plane or h.region.shape != item.target.shape:
        return None
    return _hold_out(item, h.region)


def _training_items(
    prepared: list[_Prepared], held: list[HeldOut], samples: Sequence[TrainingSample]
) -> tuple[list[_Prepared], list[str]]:
    """The prepared planes with the held-out regions (and whole held-out planes) removed, and
    their sources."""
    regions = {h.sample: h for h in held}
    train, sources = [], []
    for index, item in enumerate(prepared):
        h = regions.get(index)
        if h is not None and h.whole_plane:
            continue
        train.append(item if h is None else _hold_out(item, h.region))
        sources.append(samples[index].source)
    if not any(p.known_index.size for p in train):
        raise TrainingDataError("nothing left to train on after holding out validation pixels")
    return train, sources


def _record(
    bundle: Bundle,
    base: Bundle,
    samples: Sequence[TrainingSample],
    settings: TrainSettings,
    history: list[dict[str, Any]],
    comparison: VersionComparison | None,
    reason: str,
    seconds: float,
    retention: RetentionCheck | None,
) -> None:
    """Write the training run into the bundle's config (history, provenance, parent)."""
    config = bundle.config
    run = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "parent": base.name if base.path else None,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("device",)},
        "samples": [s.source for s in samples],
        "replay_patches": base.replay.rehearsed
        if base.replay is not None and settings.replay_fraction
        else 0,
        "corrected_pixels": int(
            sum(s.labels.size if s.known is None else np.count_nonzero(s.known) for s in samples)
        ),
        "steps_run": len(history),
        "seconds": round(seconds, 1),
        "comparison": None
        if comparison is None
        else {
            **asdict(comparison),
            "verdict": comparison.verdict,
        },
        "retention": None if retention is None else asdict(retention),
        "end": reason,
        "loss": [round(h["loss"], 5) for h in history[:: max(1, len(history) // 200)]],
    }
    config.setdefault("training", {}).setdefault("history", []).append(run)
    config["parent"] = base.name if base.path else config.get("parent")
    config["created"] = run["date"]
    config["name"] = None


def at_model_scale(
    sample: TrainingSample, config: dict[str, Any], factors: dict[str, float]
) -> TrainingSample:
    """The sample rescaled so its objects have the size the model works at.

    Prediction rescales each plane by its estimated object size
    (:mod:`napari_unet.core.diameter`); training does the same from the labels' own median
    diameter, so that the network learns at the scale it is used at. Semantic models, models
    without a trained diameter and planes without objects are left as they are. ``factors``
    remembers the factor of each source, so that a plane corrected again during a run keeps
    the scale (and the held-out regions) it had.
    """
    trained = config.get("object_diameter")
    shapes = {np.shape(sample.image)[:2], np.shape(sample.labels)}
    if sample.known is not None:
        shapes.add(np.shape(sample.known))
    if config["mode"] != "instances" or not trained or len(shapes) > 1:
        return sample  # shapes that disagree are reported by prepare_sample
    factor = factors.get(sample.source) if sample.source else None
    if factor is None:
        check_labels_of([sample], config)
        diameter = labels_diameter([sample.labels]).diameter
        factor = 1.0 if diameter is None else rescale_factor(trained, diameter)
        if sample.source:
            factors[sample.source] = factor
    return sample.rescaled(factor)


def check_labels_of(samples: Sequence[TrainingSample], config: dict[str, Any]) -> None:
    """Raise TrainingDataError for label images the model's mode cannot read."""
    for sample in samples:
        check_labels(np.asarray(sample.labels), config["mode"], len(config["class_names"]))

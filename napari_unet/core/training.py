"""Fine-tune (or train from scratch) a model bundle on labelled planes.

:func:`iter_finetune` is a generator that yields a :class:`TrainStep` after every optimiser
step and returns a :class:`TrainResult` holding a complete bundle with the best weights.
Stopping is cooperative: set the ``stop`` event, or send ``"stop"`` into the generator, and
it returns the best-so-far result at the next step.
"""

from __future__ import annotations

import datetime as _dt
import math
import queue
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_unet.core.augment import AugmentSettings, augment
from napari_unet.core.bundle import Bundle, clone_bundle, network_state
from napari_unet.core.devices import Compute, resolve_compute, usable_cores
from napari_unet.core.errors import EngineError, TrainingDataError
from napari_unet.core.generators import run_to_end
from napari_unet.core.inference import NetworkPredictor
from napari_unet.core.metrics import class_iou
from napari_unet.core.preprocess import prepare_plane
from napari_unet.core.targets import IGNORE, border_weights, check_labels, training_target
from napari_unet.core.tiling import iter_predict_plane, plan_axis

OPTIMIZERS = ("adamw", "sgd")
MAX_BAD_STEPS = 5
_CONTEXT = 32  # pixels of context around validation regions


@dataclass(frozen=True)
class TrainingSample:
    """One labelled plane.

    Attributes
    ----------
    image : ndarray
        Raw pixels with axes ``plane_axes`` (``"YX"``, optionally followed by C and/or S).
    labels : ndarray of shape (Y, X)
        Instance ids or class indices.
    known : ndarray of shape (Y, X) or None
        Nonzero where ``labels`` are trusted; None = everywhere.
    plane_axes : str
    source : str
        Where it came from (file and plane), recorded in the model's provenance.
    """

    image: np.ndarray
    labels: np.ndarray
    known: np.ndarray | None = None
    plane_axes: str = "YX"
    source: str = ""


@dataclass(frozen=True)
class TrainSettings:
    """Training schedule and options. The defaults are the GUI's one-click schedule."""

    steps: int = 150
    learning_rate: float = 1e-4  # at most the base's final rate: fresh Adam moments overshoot
    patch_size: int = 256
    batch_size: int = 4
    val_fraction: float = 0.2
    val_every: int = 25
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    border_weights: bool = False
    dice: bool = False
    optimizer: str = "adamw"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channel: int | None = None
    annotated_fraction: float = 0.9  # share of patches centred on known pixels


@dataclass(frozen=True)
class TrainStep:
    """Progress of training after one optimiser step."""

    step: int
    total: int
    loss: float
    val_score: float | None
    best_score: float | None
    elapsed: float
    skipped: bool = False
    initial_score: float | None = None  # the base model's validation score, before step 1


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`iter_finetune`.

    Attributes
    ----------
    bundle : Bundle
        The trained model with the best weights (not yet saved).
    history : list of dict
        One record per step: ``step``, ``loss``, ``val_score`` (or None).
    stopped : bool
        True when the run ended before its last step (user stop or failure).
    reason : str
        Why it ended.
    initial_score, best_score : float or None
        Validation score (mean IoU of the non-background classes on held-out labelled
        pixels) before training and at the kept weights.
    best_step : int
    """

    bundle: Bundle
    history: list[dict[str, Any]]
    stopped: bool
    reason: str
    initial_score: float | None
    best_score: float | None
    best_step: int


@dataclass
class _Prepared:
    x: np.ndarray  # (C, Y, X) float32, normalised
    target: np.ndarray  # (Y, X) int64 with IGNORE
    weights: np.ndarray | None
    known_index: np.ndarray  # flat indices of trainable pixels


def prepare_samples(
    samples: Sequence[TrainingSample], config: dict[str, Any], settings: TrainSettings
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Normalise images and build targets for a list of samples (checked)."""
    if not samples:
        raise TrainingDataError(
            "the training set is empty: label or correct at least one plane first"
        )
    mode = config["mode"]
    n_classes = len(config["class_names"])
    prepared = []
    for sample in samples:
        labels = np.asarray(sample.labels)
        if labels.ndim != 2:
            raise TrainingDataError(
                f"labels must be one plane (Y, X), got shape {labels.shape} ({sample.source})"
            )
        check_labels(labels, mode, n_classes)
        labels = labels.astype(np.int64)
        x = prepare_plane(sample.image, sample.plane_axes, config, settings.channel)
        if x.shape[1:] != labels.shape:
            raise TrainingDataError(
                f"labels of shape {labels.shape} do not match the image plane {x.shape[1:]} ({sample.source})"
            )
        target = training_target(labels, sample.known, mode)
        weights = (
            border_weights(labels) if settings.border_weights and mode == "instances" else None
        )
        prepared.append((x, target, weights))
    if all((t == IGNORE).all() for _, t, _ in prepared):
        raise TrainingDataError("no labelled pixels: every known-mask is empty")
    return prepared


def split_validation(
    prepared: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    fraction: float,
    rng: np.random.Generator,
) -> tuple[
    list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], list[tuple[np.ndarray, np.ndarray]]
]:
    """Hold out whole planes (3 or more planes) or a strip of each plane's known region.

    Returns the training items (with held-out pixels ignored) and the validation items as
    ``(image crop, target crop)`` with context around the held-out pixels.
    """
    if fraction <= 0:
        return prepared, []
    if len(prepared) >= 3:
        n_val = max(1, int(round(fraction * len(prepared))))
        order = rng.permutation(len(prepared))
        val_ids = set(order[:n_val].tolist())
        train = [p for i, p in enumerate(prepared) if i not in val_ids]
        val = [_crop_to_known(prepared[i][0], prepared[i][1]) for i in sorted(val_ids)]
        return train, [v for v in val if v is not None]
    train, val = [], []
    for x, target, weights in prepared:
        rows, cols = np.nonzero(target != IGNORE)
        if rows.size < 64:
            train.append((x, target, weights))
            continue
        vertical = (cols.max() - cols.min()) >= (rows.max() - rows.min())
        coordinate = cols if vertical else rows
        cut = np.quantile(coordinate, 1.0 - fraction)
        held = np.zeros(target.shape, bool)
        if vertical:
            held[:, int(cut) :] = True
        else:
            held[int(cut) :, :] = True
        held &= target != IGNORE
        val_target = np.where(held, target, IGNORE)
        train_target = np.where(held, IGNORE, target)
        if (train_target != IGNORE).any():
            train.append((x, train_target, weights))
        cropped = _crop_to_known(x, val_target)
        if cropped is not None:
            val.append(cropped)
    return train, val


def _crop_to_known(x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    rows, cols = np.nonzero(target != IGNORE)
    if rows.size == 0:
        return None
    r0, r1 = max(rows.min() - _CONTEXT, 0), min(rows.max() + 1 + _CONTEXT, target.shape[0])
    c0, c1 = max(cols.min() - _CONTEXT, 0), min(cols.max() + 1 + _CONTEXT, target.shape[1])
    return x[:, r0:r1, c0:c1], target[r0:r1, c0:c1]


def _to_prepared(items: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> list[_Prepared]:
    return [_Prepared(x, t, w, np.flatnonzero(t != IGNORE)) for x, t, w in items]


def _extract(
    p: _Prepared, top: int, left: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Patch at (top, left) in coordinates of the plane padded by ``size`` on every side."""
    x = _padded(p.x, size, "symmetric")[:, top : top + size, left : left + size]
    t = _padded(p.target, size, IGNORE)[top : top + size, left : left + size]
    w = (
        None
        if p.weights is None
        else _padded(p.weights, size, 0.0)[top : top + size, left : left + size]
    )
    return x, t, w


def _padded(a: np.ndarray, size: int, how: Any) -> np.ndarray:
    widths = [(0, 0)] * (a.ndim - 2) + [(size, size), (size, size)]
    if how == "symmetric":
        return np.pad(a, widths, mode="symmetric" if min(a.shape[-2:]) > 1 else "edge")
    return np.pad(a, widths, mode="constant", constant_values=how)


def iter_patches(
    items: list[_Prepared], settings: TrainSettings, size: int, crop: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless batches (x, target, weights) of augmented patches, preferring labelled pixels."""
    rng = np.random.default_rng(seed)
    usable = [p for p in items if p.known_index.size]
    sizes = np.array([p.known_index.size for p in usable], dtype=np.float64)
    chances = sizes / sizes.sum()
    while True:
        xs, ts, ws = [], [], []
        for _ in range(settings.batch_size):
            p = usable[int(rng.choice(len(usable), p=chances))]
            height, width = p.target.shape
            if rng.random() < settings.annotated_fraction:
                flat = int(p.known_index[rng.integers(p.known_index.size)])
                cy, cx = divmod(flat, width)
                cy += int(rng.integers(-size // 4, size // 4 + 1))
                cx += int(rng.integers(-size // 4, size // 4 + 1))
            else:
                cy, cx = int(rng.integers(height)), int(rng.integers(width))
            top = int(np.clip(cy - size // 2, -size // 2, max(height - size // 2, 0))) + size
            left = int(np.clip(cx - size // 2, -size // 2, max(width - size // 2, 0))) + size
            x, t, w = _extract(p, top, left, size)
            x, t, w = augment(x, t, w, rng, settings.augment)
            if crop:
                t = t[crop:-crop, crop:-crop]
                w = None if w is None else w[crop:-crop, crop:-crop]
            xs.append(x)
            ts.append(t)
            ws.append(np.ones(t.shape, np.float32) if w is None else w)
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


def validation_score(
    network: torch.nn.Module,
    compute: Compute,
    val: list[tuple[np.ndarray, np.ndarray]],
    n_classes: int,
) -> float | None:
    """Mean IoU of the non-background classes over the held-out labelled pixels."""
    if not val:
        return None
    was_training = network.training
    network.eval()
    predictor = NetworkPredictor(network, compute)
    tile = network.fit_input_size(256)
    crop = network.crop_per_side(tile)
    predictions, truths = [], []
    for x, target in val:
        rows = plan_axis(x.shape[1], tile, max(crop, 16), crop=crop, fit=network.fit_input_size)
        cols = plan_axis(x.shape[2], tile, max(crop, 16), crop=crop, fit=network.fit_input_size)
        probabilities = run_to_end(
            iter_predict_plane(x, predictor, rows, cols, n_classes=n_classes, batch_size=4)
        )
        keep = target != IGNORE
        predictions.append(np.argmax(probabilities, axis=0)[keep])
        truths.append(target[keep])
    network.train(was_training)
    iou = class_iou(np.concatenate(predictions), np.concatenate(truths), n_classes)[1:]
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0


def _loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, use_dice: bool
) -> torch.Tensor:
    logits = logits.float()
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    known = (target != IGNORE).float()
    loss = (per_pixel * weights * known).sum() / known.sum().clamp_min(1.0)
    if use_dice:
        probabilities = torch.softmax(logits, dim=1)
        one_hot = F.one_hot(target.clamp_min(0), logits.shape[1]).permute(0, 3, 1, 2).float()
        mask = known.unsqueeze(1)
        intersection = (probabilities * one_hot * mask).sum((0, 2, 3))
        total = ((probabilities + one_hot) * mask).sum((0, 2, 3))
        loss = loss + 1.0 - ((2 * intersection + 1.0) / (total + 1.0)).mean()
    return loss


def _optimizer(network: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(network.parameters(), lr=settings.learning_rate, momentum=0.99)
    raise TrainingDataError(
        f"optimizer {settings.optimizer!r} is not valid; choose one of {', '.join(OPTIMIZERS)}"
    )


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
) -> Generator[TrainStep, Any, TrainResult]:
    """Train a copy of ``base`` on labelled planes.

    Parameters
    ----------
    base : Bundle
        Starting model (a pretrained bundle, or a fresh one from
        :func:`~napari_unet.core.bundle.bundle_from_config` to train from scratch). It is
        not modified.
    samples : sequence of TrainingSample
        Labelled planes; unknown pixels (``known == 0``) are ignored by the loss.
    settings : TrainSettings, optional
    stop : threading.Event, optional
        Set it to stop at the next step; sending ``"stop"`` into the generator does the same.

    Yields
    ------
    TrainStep
        After every optimiser step (also after skipped, non-finite ones).

    Returns
    -------
    TrainResult
        Always holds a complete, loadable bundle: the best weights seen (or the base
        weights when no step succeeded).
    """
    settings = settings or TrainSettings()
    if settings.steps < 1:
        raise TrainingDataError(f"steps must be at least 1, got {settings.steps}")
    if not 0.0 <= settings.val_fraction < 1.0:
        raise TrainingDataError(
            f"validation fraction must be in [0, 1), got {settings.val_fraction}"
        )
    bundle = clone_bundle(base)
    config = bundle.config
    n_classes = len(config["class_names"])
    prepared = prepare_samples(samples, config, settings)
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    train_items, val_items = split_validation(prepared, settings.val_fraction, rng)
    train = _to_prepared(train_items)
    if not any(p.known_index.size for p in train):
        raise TrainingDataError("nothing left to train on after holding out validation pixels")
    compute = resolve_compute(settings.device, settings.precision)
    network = bundle.network.to(compute.device)
    if compute.channels_last:
        network = network.to(memory_format=torch.channels_last)
    size = network.fit_input_size(settings.patch_size)
    crop = network.crop_per_side(size)
    optimizer = _optimizer(network, settings)
    start = time.perf_counter()
    initial_score = validation_score(network, compute, val_items, n_classes)
    best_score, best_step = initial_score, 0
    best_state = network_state(network)
    good_state = best_state
    history: list[dict[str, Any]] = []
    bad_in_row = 0
    reason, stopped = "finished", False
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
    scaler = torch.amp.GradScaler(
        compute.device.type, enabled=compute.autocast_dtype == torch.float16
    )
    prefetcher = _Prefetcher(
        [
            iter_patches(train, settings, size, crop, settings.seed + 1 + worker)
            for worker in range(patch_workers(compute))
        ],
        pin_memory=compute.device.type == "cuda",
    )
    network.train()
    try:
        for step in range(1, settings.steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = settings.learning_rate * _learning_rate_factor(
                    step - 1, settings.steps
                )
            x, target, weights = (
                t.to(compute.device, non_blocking=True) for t in prefetcher.next()
            )
            if compute.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            try:
                with compute.autocast():
                    logits = network(x)
                loss = _loss(logits, target, weights, settings.dice)
                loss_value = float(loss.detach())  # the one host sync per step, before the yield
                skipped = not math.isfinite(loss_value)
                if not skipped:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
            except RuntimeError as error:
                raise EngineError(f"training failed on {compute.label}: {error}") from error
            val_score = None
            if skipped:
                bad_in_row += 1
                if bad_in_row >= MAX_BAD_STEPS:
                    network.load_state_dict(good_state)
                    reason, stopped = (
                        f"stopped after {bad_in_row} non-finite losses in a row; kept the last good weights",
                        True,
                    )
            else:
                bad_in_row = 0
                if step % settings.val_every == 0 or step == settings.steps:
                    val_score = validation_score(network, compute, val_items, n_classes)
                    good_state = network_state(network)
                    if val_score is not None and (best_score is None or val_score >= best_score):
                        best_score, best_step, best_state = val_score, step, good_state
            history.append({"step": step, "loss": loss_value, "val_score": val_score})
            request = yield TrainStep(
                step=step,
                total=settings.steps,
                loss=loss_value,
                val_score=val_score,
                best_score=best_score,
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
    diverged = bad_in_row >= MAX_BAD_STEPS
    if not val_items:
        best_state = good_state if diverged else network_state(network)
        best_step = best_step if diverged else len(history)
    elif stopped and not diverged and history and history[-1]["val_score"] is None:
        score = validation_score(network, compute, val_items, n_classes)
        if score is not None and (best_score is None or score >= best_score):
            best_score, best_step, best_state = score, len(history), network_state(network)
    if val_items and best_step == 0 and history:
        reason += "; no step beat the base model on the held-out pixels, so its weights were kept"
    network.load_state_dict(best_state)
    network = network.to("cpu", memory_format=torch.contiguous_format).eval()
    bundle.network = network
    _record(
        bundle,
        base,
        samples,
        settings,
        history,
        initial_score,
        best_score,
        best_step,
        reason,
        time.perf_counter() - start,
    )
    return TrainResult(bundle, history, stopped, reason, initial_score, best_score, best_step)


def _record(
    bundle: Bundle,
    base: Bundle,
    samples: Sequence[TrainingSample],
    settings: TrainSettings,
    history: list[dict[str, Any]],
    initial_score: float | None,
    best_score: float | None,
    best_step: int,
    reason: str,
    seconds: float,
) -> None:
    """Write the training run into the bundle's config (history, provenance, parent)."""
    config = bundle.config
    run = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "parent": base.name if base.path else None,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("device",)},
        "samples": [s.source for s in samples],
        "steps_run": len(history),
        "seconds": round(seconds, 1),
        "initial_val_score": initial_score,
        "best_val_score": best_score,
        "best_step": best_step,
        "end": reason,
        "loss": [round(h["loss"], 5) for h in history[:: max(1, len(history) // 200)]],
    }
    config.setdefault("training", {}).setdefault("history", []).append(run)
    config["parent"] = base.name if base.path else config.get("parent")
    config["created"] = run["date"]
    config["name"] = None
    labelled = [s.labels for s in samples if s.labels.size]
    if config["mode"] == "instances" and labelled and not config.get("object_diameter"):
        config["object_diameter"] = median_diameter(labelled)


def median_diameter(label_images: Sequence[np.ndarray]) -> float | None:
    """Median equivalent diameter of the objects in instance label images, in pixels."""
    areas = []
    for labels in label_images:
        counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel())[1:]
        areas.extend(counts[counts > 0].tolist())
    if not areas:
        return None
    return float(2.0 * math.sqrt(float(np.median(areas)) / math.pi))

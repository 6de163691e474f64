"""Segmentation metrics: per-class IoU and Dice, pixel error, instance average precision.

Average precision follows the 2018 Data Science Bowl: at an IoU threshold t, a predicted
object matches a true one when their IoU exceeds t (one-to-one), and
AP(t) = TP / (TP + FP + FN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_unet.core.errors import InputError

DSB_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


def overlap_iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every overlapping pair of objects in two label images of the same shape.

    Returns
    -------
    ids_a, ids_b, iou : ndarray
        Parallel arrays: object ``ids_a[i]`` of ``a`` overlaps object ``ids_b[i]`` of ``b``
        with ``iou[i]``. Background (0) is excluded.
    """
    ids_a, ids_b, intersection, size_a, size_b = overlaps(a, b)
    return ids_a, ids_b, intersection / (size_a + size_b - intersection)


def overlaps(
    a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every overlapping pair of objects in two label images of the same shape.

    Returns
    -------
    ids_a, ids_b, intersection, size_a, size_b : ndarray
        Parallel arrays: object ``ids_a[i]`` of ``a`` (``size_a[i]`` pixels) shares
        ``intersection[i]`` pixels with object ``ids_b[i]`` of ``b`` (``size_b[i]`` pixels).
        Background (0) is excluded.
    """
    if a.shape != b.shape:
        raise InputError(f"label images differ in shape: {a.shape} vs {b.shape}")
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    both = (a > 0) & (b > 0)
    if not both.any():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    pairs, intersection = np.unique(
        np.stack([a[both].astype(np.int64), b[both].astype(np.int64)]), axis=1, return_counts=True
    )
    return pairs[0], pairs[1], intersection, _sizes_of(a, pairs[0]), _sizes_of(b, pairs[1])


def _sizes_of(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Pixel counts of the objects ``ids`` in ``labels``; memory follows the number of objects,
    not the largest id (ids near 2**31 are fine)."""
    values, counts = np.unique(labels, return_counts=True)
    return counts[np.searchsorted(values, ids)]


def match_objects(a: np.ndarray, b: np.ndarray, min_iou: float) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(id_a, id_b, iou)`` with IoU >= ``min_iou``, best pairs first."""
    ids_a, ids_b, iou = overlap_iou(a, b)
    order = np.argsort(-iou, kind="stable")
    used_a: set[int] = set()
    used_b: set[int] = set()
    matches = []
    for i in order:
        if iou[i] < min_iou:
            break
        ia, ib = int(ids_a[i]), int(ids_b[i])
        if ia in used_a or ib in used_b:
            continue
        used_a.add(ia)
        used_b.add(ib)
        matches.append((ia, ib, float(iou[i])))
    return matches


@dataclass(frozen=True)
class InstanceScores:
    """Instance-matching scores of a prediction against ground truth."""

    thresholds: tuple[float, ...]
    ap: tuple[float, ...]  # TP / (TP + FP + FN) per threshold
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]
    n_true: int
    n_pred: int

    def at(self, threshold: float) -> float:
        """AP at one of the thresholds."""
        return self.ap[self.thresholds.index(round(threshold, 2))]

    @property
    def mean_ap(self) -> float:
        """AP averaged over the thresholds (the DSB score for 0.5...0.95)."""
        return float(np.mean(self.ap))

    def precision(self, threshold: float = 0.5) -> float:
        i = self.thresholds.index(round(threshold, 2))
        return self.tp[i] / max(self.tp[i] + self.fp[i], 1)

    def recall(self, threshold: float = 0.5) -> float:
        i = self.thresholds.index(round(threshold, 2))
        return self.tp[i] / max(self.tp[i] + self.fn[i], 1)


def instance_scores(
    prediction: np.ndarray, truth: np.ndarray, thresholds: tuple[float, ...] = DSB_THRESHOLDS
) -> InstanceScores:
    """Match predicted objects to true ones and count TP/FP/FN at each IoU threshold.

    Matching needs IoU strictly above the threshold; for thresholds >= 0.5 matches are
    unique by construction.
    """
    n_true = len(np.unique(truth[truth > 0]))
    n_pred = len(np.unique(prediction[prediction > 0]))
    _, _, iou = overlap_iou(prediction, truth)
    matches = np.sort(iou[iou > 0.5])[::-1] if iou.size else iou
    tps, fps, fns, aps = [], [], [], []
    for t in thresholds:
        tp = int(np.sum(matches > t))
        fp, fn = n_pred - tp, n_true - tp
        tps.append(tp)
        fps.append(fp)
        fns.append(fn)
        denominator = tp + fp + fn
        aps.append(1.0 if denominator == 0 else tp / denominator)
    return InstanceScores(
        tuple(float(t) for t in thresholds),
        tuple(aps),
        tuple(tps),
        tuple(fps),
        tuple(fns),
        n_true,
        n_pred,
    )


def class_iou(
    prediction: np.ndarray, truth: np.ndarray, n_classes: int, ignore: np.ndarray | None = None
) -> np.ndarray:
    """IoU per class (NaN for a class absent from both); ``ignore`` marks pixels to skip."""
    keep = np.ones(truth.shape, bool) if ignore is None else ~ignore
    p = prediction[keep].astype(np.int64)
    t = truth[keep].astype(np.int64)
    confusion = np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def class_dice(prediction: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice coefficient per class (NaN for a class absent from both)."""
    iou = class_iou(prediction, truth, n_classes)
    return 2 * iou / (1 + iou)


def pixel_error(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pixels whose class differs."""
    if prediction.shape != truth.shape:
        raise InputError(f"shapes differ: {prediction.shape} vs {truth.shape}")
    return float(np.mean(prediction != truth))


def rand_error(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Foreground-restricted Rand error, 1 - Rand F-score (ISBI 2012 style).

    Both inputs are segmentations into regions (e.g. connected cells between membranes); only
    pixels inside a true region (truth > 0) count.
    """
    keep = truth > 0
    t = truth[keep].astype(np.int64)
    p = prediction[keep].astype(np.int64)
    if t.size == 0:
        return 0.0
    _, counts = np.unique(np.stack([t, p]), axis=1, return_counts=True)
    sum_pairs = float(np.sum(counts.astype(np.float64) ** 2))
    sum_truth = float(np.sum(np.bincount(t).astype(np.float64) ** 2))
    sum_pred = float(np.sum(np.bincount(p).astype(np.float64) ** 2))
    precision = sum_pairs / sum_pred
    recall = sum_pairs / sum_truth
    return 1.0 - 2 * precision * recall / (precision + recall)

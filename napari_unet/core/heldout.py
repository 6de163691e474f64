"""Hold out part of the user's labelled planes and compare model versions on it, object by object.

Scoring only the objects a person corrected is biased: the base model got them wrong by
definition, so any new version looks better. The comparison here counts every object in the
held-out regions: the ones the base model got wrong (the person repainted, added or erased
them) and the ones it got right (the person left them as predicted). Both versions are judged
with the same instance metric, AP@0.5 = TP / (TP + FP + FN), summed over the held-out regions.

A difference on a dozen objects can be one object's luck, either way: the objects a person
left as predicted were not all checked, and a version that fixes one of them counts as breaking
it. The new version is called better only when the objects it fixed outnumber those it broke by
more than chance would (a one-sided sign test over the objects the two versions disagree on, at
:data:`SIGNIFICANCE`), worse only when the broken ones do; anything between is too close to
tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_unet.core.metrics import class_iou, match_objects
from napari_unet.core.wording import counted

MIN_WRONG = 3  # fewer objects the base model got wrong than this: too few to tell
MIN_OBJECTS = 8  # fewer held-out objects than this: too few to tell
SIGNIFICANCE = 0.05  # largest chance of as many fixes (breaks) by luck for "better" ("worse")


@dataclass(frozen=True)
class HeldOut:
    """Held-out pixels of one labelled plane.

    Attributes
    ----------
    sample : int
        Index of the plane in the training samples.
    region : ndarray of bool, shape (Y, X)
        Pixels held out of training and scored.
    whole_plane : bool
        True when the whole plane is held out (it is then not trained on at all).
    """

    sample: int
    region: np.ndarray
    whole_plane: bool


@dataclass(frozen=True)
class ObjectCounts:
    """Object matches of one model version against the user's labels in held-out regions."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        return ObjectCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def ap(self) -> float:
        """AP@0.5: TP / (TP + FP + FN); 1.0 when there is nothing to find and nothing found."""
        total = self.tp + self.fp + self.fn
        return 1.0 if total == 0 else self.tp / total


@dataclass(frozen=True)
class VersionComparison:
    """The base model against the new version on the held-out part of the user's labels.

    Attributes
    ----------
    metric : str
        ``"AP@0.5"`` (instances: TP / (TP + FP + FN) over objects) or ``"mean IoU"``
        (semantic classes, over pixels).
    base_score, new_score : float
    n_items : int
        Held-out objects (instances) or pixels (semantic) in the user's labels.
    n_wrong : int
        Of those, the ones the base model got wrong: objects it missed or that the person
        erased (instances), or pixels of another class (semantic).
    unit : {"objects", "pixels"}
    fixed, broken : int
        Objects only the new version gets right (a true object it alone finds, or a false one
        fewer), and objects only the base gets right (instances; 0 for pixels).
    """

    metric: str
    base_score: float
    new_score: float
    n_items: int
    n_wrong: int
    unit: str
    fixed: int = 0
    broken: int = 0

    @property
    def scored(self) -> bool:
        """Whether the scores mean something: the held-out part holds at least one object (or
        pixel); with none, both versions score a perfect 1.00 for finding nothing."""
        return self.n_items > 0

    @property
    def enough(self) -> bool:
        """Whether the held-out sample is large enough to tell the versions apart."""
        low_wrong, low_items = (MIN_WRONG, MIN_OBJECTS) if self.unit == "objects" else (200, 2000)
        return self.n_wrong >= low_wrong and self.n_items >= low_items

    @property
    def chance(self) -> float:
        """How likely as many fixes against breaks are by luck: the one-sided sign-test p-value
        of ``fixed`` among the ``fixed + broken`` objects the versions disagree on."""
        return _at_least(self.fixed, self.fixed + self.broken)

    @property
    def chance_worse(self) -> float:
        """How likely as many breaks against fixes are by luck (the other side's p-value)."""
        return _at_least(self.broken, self.fixed + self.broken)

    @property
    def verdict(self) -> str:
        """``"better"``, ``"worse"``, ``"too close"`` or ``"too few"`` (not enough held-out
        corrections).

        Objects: better (worse) when the score is higher (lower) and the fixes (breaks) are
        unlikely to be luck (:attr:`chance`, :attr:`chance_worse` <= :data:`SIGNIFICANCE`);
        otherwise too close to tell. Pixels: by the score alone.
        """
        if not self.enough:
            return "too few"
        objects = self.unit == "objects"
        if self.new_score > self.base_score and not (objects and self.chance > SIGNIFICANCE):
            return "better"
        if self.new_score < self.base_score and not (objects and self.chance_worse > SIGNIFICANCE):
            return "worse"
        return "too close"

    def describe(self, base_name: str, new_name: str) -> str:
        """What the user is told: the verdict, both scores (when :attr:`scored`) and the
        sample they rest on."""
        if not self.scored:
            return (
                f"Too few corrections to tell whether {new_name} is better: the held-out part "
                f"of your labels holds no {self.unit.removesuffix('s')}."
            )
        held = counted(self.n_items, f"held-out {self.unit.removesuffix('s')}")
        sample = f"{held}, {self.n_wrong} of which {base_name} got wrong"
        scores = (
            f"{self.metric} {base_name} {self.base_score:.2f} -> {new_name} {self.new_score:.2f}"
        )
        if self.unit == "objects":
            scores += f" ({counted(self.fixed, 'object')} fixed, {self.broken} broken)"
        if self.verdict == "too few":
            return f"Too few corrections to tell whether {new_name} is better ({sample}). {scores}."
        if self.verdict == "better":
            return f"{new_name} is better on {sample}: {scores}."
        if self.verdict == "worse":
            return f"{new_name} is worse than {base_name} on {sample}: {scores}."
        return (
            f"Too close to tell whether {new_name} is better than {base_name} on {sample}: "
            f"{scores}, a difference luck could make."
        )


def _at_least(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2): 1.0 when ``n`` is 0."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def held_out_regions(
    shapes: Sequence[tuple[int, int]],
    known: Sequence[np.ndarray | None],
    fraction: float,
    rng: np.random.Generator,
) -> list[HeldOut]:
    """Choose what to hold out: whole planes when there are 3 or more, else a strip of each.

    Parameters
    ----------
    shapes : sequence of (Y, X)
        Plane shapes.
    known : sequence of ndarray or None
        Where each plane was labelled by a person (None = everywhere).
    fraction : float
        Share of the labelled pixels (or planes) to hold out; 0 holds out nothing.
    rng : numpy Generator
        Picks the held-out planes.

    Returns
    -------
    list of HeldOut
        Regions restricted to where each plane was labelled (objects next to a correction
        were looked at; far ones maybe not).
    """
    if fraction <= 0:
        return []
    looked_at = [_looked_at(shape, k) for shape, k in zip(shapes, known, strict=True)]
    if len(shapes) >= 3:
        n_val = max(1, int(round(fraction * len(shapes))))
        chosen = sorted(rng.permutation(len(shapes))[:n_val].tolist())
        return [HeldOut(i, looked_at[i], True) for i in chosen if looked_at[i].any()]
    held = []
    for i, (shape, k) in enumerate(zip(shapes, known, strict=True)):
        labelled = np.ones(shape, bool) if k is None else k.astype(bool)
        rows, cols = np.nonzero(labelled)
        if rows.size < 64:
            continue
        strip = np.zeros(shape, bool)
        if (cols.max() - cols.min()) >= (rows.max() - rows.min()):
            strip[:, int(np.quantile(cols, 1.0 - fraction)) :] = True
        else:
            strip[int(np.quantile(rows, 1.0 - fraction)) :, :] = True
        held.append(HeldOut(i, strip & looked_at[i], False))
    return held


def _looked_at(shape: tuple[int, int], known: np.ndarray | None) -> np.ndarray:
    """Where the person looked: the known-mask (edits and their margin), or the whole plane.

    Objects far from any edit were left as predicted but maybe never looked at, so they are
    not scored: counting them would reward a version for repeating unchecked mistakes.
    """
    if known is None:
        return np.ones(shape, bool)
    return np.asarray(known) != 0


@dataclass(frozen=True)
class ObjectOutcomes:
    """Which held-out objects one model version gets right.

    Attributes
    ----------
    found : frozenset of int
        True objects centred in the region that the prediction matches (IoU > 0.5).
    present : frozenset of int
        All true objects centred in the region.
    false : int
        Predicted objects centred in the region that match no true object.
    """

    found: frozenset[int]
    present: frozenset[int]
    false: int

    @property
    def counts(self) -> ObjectCounts:
        """TP, FP and FN."""
        return ObjectCounts(len(self.found), self.false, len(self.present) - len(self.found))


def count_objects(prediction: np.ndarray, truth: np.ndarray, region: np.ndarray) -> ObjectOutcomes:
    """Match objects (IoU > 0.5, one to one) and keep those whose centre lies in ``region``.

    A true object in the region is found when matched; a predicted object in the region that
    matches no true object is false.
    """
    matches = match_objects(prediction, truth, min_iou=0.5 + 1e-9)
    matched_pred = {p for p, _, _ in matches}
    present = frozenset(_ids_centred_in(truth, region))
    false = sum(1 for p in _ids_centred_in(prediction, region) if p not in matched_pred)
    return ObjectOutcomes(present & {t for _, t, _ in matches}, present, false)


def compare_instances(
    truths: Sequence[np.ndarray],
    base: Sequence[np.ndarray],
    new: Sequence[np.ndarray],
    regions: Sequence[np.ndarray],
) -> VersionComparison:
    """Score the base model's and the new version's instance labels on held-out regions."""
    base_counts, new_counts = ObjectCounts(), ObjectCounts()
    n_objects = fixed = broken = 0
    for truth, base_labels, new_labels, region in zip(truths, base, new, regions, strict=True):
        old = count_objects(base_labels, truth, region)
        now = count_objects(new_labels, truth, region)
        base_counts, new_counts = base_counts + old.counts, new_counts + now.counts
        n_objects += len(old.present)
        fixed += len(now.found - old.found) + max(0, old.false - now.false)
        broken += len(old.found - now.found) + max(0, now.false - old.false)
    return VersionComparison(
        "AP@0.5",
        base_counts.ap,
        new_counts.ap,
        n_objects,
        base_counts.fn + base_counts.fp,
        "objects",
        fixed,
        broken,
    )


def compare_classes(
    truths: Sequence[np.ndarray],
    base: Sequence[np.ndarray],
    new: Sequence[np.ndarray],
    regions: Sequence[np.ndarray],
    n_classes: int,
) -> VersionComparison:
    """Score the base model's and the new version's class maps on held-out regions."""
    truth = np.concatenate([t[r] for t, r in zip(truths, regions, strict=True)])
    scores = []
    for labels in (base, new):
        predicted = np.concatenate([p[r] for p, r in zip(labels, regions, strict=True)])
        iou = class_iou(predicted, truth, n_classes)[1:]
        scores.append(float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0)
    wrong = sum(int((p[r] != t[r]).sum()) for p, t, r in zip(base, truths, regions, strict=True))
    return VersionComparison("mean IoU", scores[0], scores[1], int(truth.size), wrong, "pixels")


def _ids_centred_in(labels: np.ndarray, region: np.ndarray) -> set[int]:
    """Ids of the objects whose centroid (rounded) lies in ``region``."""
    flat = labels.ravel().astype(np.int64)
    if not flat.any():
        return set()
    rows, cols = np.indices(labels.shape)
    counts = np.bincount(flat)
    present = np.flatnonzero(counts)
    present = present[present > 0]
    cy = np.rint(np.bincount(flat, rows.ravel())[present] / counts[present]).astype(int)
    cx = np.rint(np.bincount(flat, cols.ravel())[present] / counts[present]).astype(int)
    inside = region[np.clip(cy, 0, labels.shape[0] - 1), np.clip(cx, 0, labels.shape[1] - 1)]
    return {int(i) for i in present[inside]}

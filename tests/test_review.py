"""Correct this next: ranking objects by how much flipped predictions disagree."""

import numpy as np
import pytest

from napari_unet.core.errors import InputError
from napari_unet.core.generators import run_to_end
from napari_unet.core.inference import predict
from napari_unet.core.options import PredictOptions
from napari_unet.core.preprocess import read_plane
from napari_unet.core.review import (
    FALSE,
    MERGED,
    MISSED,
    OUTLINE,
    PINCHED,
    SPLIT,
    Uncertain,
    iter_review,
    rank_plane,
    review,
)


def _squares() -> np.ndarray:
    labels = np.zeros((40, 60), np.uint32)
    labels[2:10, 2:10] = 1
    labels[2:10, 20:30] = 2  # 8 x 10
    labels[20:28, 2:10] = 3
    labels[20:28, 12:20] = 4  # 3 and 4: neighbours with a 2-pixel gap
    labels[30:38, 40:48] = 5
    return labels


def test_views_that_agree_leave_nothing_to_check():
    labels = _squares()
    assert rank_plane(labels, [labels.copy() for _ in range(3)]) == []
    assert rank_plane(np.zeros((8, 8), np.uint32), [np.zeros((8, 8), np.uint32)]) == []


def test_each_kind_of_disagreement_gets_its_reason_and_the_worst_ranks_first():
    labels = _squares()
    split_view = labels.copy()
    split_view[2:10, 25:30] = 9  # object 2 is two objects in this view: merged?
    joined = labels.copy()
    joined[20:28, 2:20] = 8  # 3 and 4 are one object in this view: split?
    joined[12:18, 40:50] = 7  # an object where the labels have none: missed?
    joined[30:38, 40:48] = 0  # object 5 is not there: false?
    outline = labels.copy()
    outline[2:10, 2:12] = 1  # object 1 two columns wider: IoU 0.8
    views = [split_view, joined, outline]

    items = rank_plane(labels, views, plane=(3,), min_score=0.05)

    by_label = {item.label: item for item in items}
    assert by_label[2].reason == MERGED
    assert by_label[2].score == pytest.approx((1 - 0.5) / 3, abs=1e-4)
    assert by_label[3].reason == by_label[4].reason == SPLIT
    assert by_label[3].score == pytest.approx((1 - 64 / 144) / 3, abs=1e-4)
    assert by_label[5].reason == FALSE  # absent in one view of three
    assert by_label[5].score == pytest.approx(1 / 3, abs=1e-4)
    assert by_label[1].reason == OUTLINE
    assert by_label[1].score == pytest.approx(0.2 / 3, abs=1e-4)
    assert by_label[0] == Uncertain(0, (3,), (14.5, 44.5), (12, 40, 18, 50), 0.3333, MISSED)
    scores = [item.score for item in items]
    assert scores == sorted(scores, reverse=True)
    assert items[0].label in (0, 5)  # one view of three: an object or a place that is all wrong
    assert rank_plane(labels, views)[-1].score >= 0.2  # the default leaves out small doubts
    assert 1 not in {item.label for item in rank_plane(labels, views)}


def test_an_object_no_view_finds_is_a_likely_false_one():
    labels = _squares()
    view = labels.copy()
    view[labels == 5] = 0
    items = rank_plane(labels, [view, view])
    assert [(item.label, item.reason, item.score) for item in items] == [(5, FALSE, 1.0)]
    assert items[0].centroid == (33.5, 43.5)
    assert items[0].bbox == (30, 40, 38, 48)


def test_rank_plane_rejects_what_it_cannot_compare():
    labels = _squares()
    with pytest.raises(InputError, match="at least one view"):
        rank_plane(labels, [])
    with pytest.raises(InputError, match="shape"):
        rank_plane(labels, [labels[:10]])
    with pytest.raises(InputError, match="2D"):
        rank_plane(labels[None], [labels[None]])


# ----- through the real prediction pipeline --------------------------------------------------
def _cells(with_pair: bool = True) -> np.ndarray:
    """Isolated disks, and two disks joined by a neck of exactly the threshold's brightness, 7 px
    wide (a thinner one would be cut by the smoothing of the seeds)."""
    rows, cols = np.mgrid[:96, :192]
    image = np.zeros((96, 192), np.float32)
    centres = [(30, 30), (70, 60), (30, 100)]
    if with_pair:
        centres += [(60, 140), (60, 162)]
        image[57:64, 146:157] = 0.5
    for cy, cx in centres:
        image[(rows - cy) ** 2 + (cols - cx) ** 2 <= 64] = 1.0
    return image


AT_THE_NECK = PredictOptions(threshold=0.5)  # the level the pair's neck is built around


class Tilted:
    """A pixel-wise predictor whose interior probability rises by ``tilt`` from the left to the
    right of each tile: objects far from 0.5 do not notice; the neck of the pair joins it on
    the right and is cut when the image is flipped left-right."""

    def __init__(self, tilt: float) -> None:
        self.tilt = tilt
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        ramp = np.linspace(-1.0, 1.0, batch.shape[-1], dtype=np.float32)
        interior = np.clip(batch[:, 0] + self.tilt * ramp, 0.0, 1.0)
        return np.stack([1.0 - interior, interior, np.zeros_like(interior)], axis=1)


def test_a_deliberately_ambiguous_object_ranks_first(instance_bundle):
    image = _cells()
    predictor = Tilted(0.1)
    labels = predict(image, instance_bundle, AT_THE_NECK, predictor=predictor).labels
    assert len(np.unique(labels)) - 1 == 4  # the pair is one object, as segmented
    pair = int(labels[60, 140])

    steps = []
    generator = iter_review(image, labels, instance_bundle, AT_THE_NECK, predictor=predictor)
    while True:
        try:
            steps.append(next(generator))
        except StopIteration as finished:
            items = finished.value
            break

    assert items[0].label == pair
    assert items[0].reason == MERGED
    assert items[0].score > 0.3
    assert items[0].bbox == (52, 132, 69, 171)
    assert [item.label for item in items] == [pair]  # the clear disks agree in every view
    assert steps[-1].done == steps[-1].total and steps[-1].stage == "checking"
    assert all(a.done <= b.done for a, b in zip(steps, steps[1:], strict=False))


def test_a_flip_symmetric_model_leaves_nothing_to_check(instance_bundle):
    image = _cells()
    labels = predict(image, instance_bundle, AT_THE_NECK, predictor=Tilted(0.0)).labels
    assert review(image, labels, instance_bundle, AT_THE_NECK, predictor=Tilted(0.0)) == []


def test_only_the_chosen_planes_of_a_stack_are_predicted(instance_bundle):
    stack = np.stack([_cells(with_pair=False), _cells()])
    options = AT_THE_NECK
    labels = predict(stack, instance_bundle, options, axes="ZYX", predictor=Tilted(0.1)).labels
    counting = Tilted(0.1)

    items = review(
        stack, labels, instance_bundle, options, axes="ZYX", planes=[(1,)], predictor=counting
    )

    assert counting.calls == 3  # one tile per flipped view, plane 1 only
    assert [(item.plane, item.label) for item in items] == [((1,), int(labels[1, 60, 140]))]
    assert review(stack, labels, instance_bundle, options, axes="ZYX", predictor=Tilted(0.1))
    with pytest.raises(InputError, match="plane"):
        review(stack, labels, instance_bundle, options, axes="ZYX", planes=[(2,)])


def test_review_rejects_bad_inputs(instance_bundle, semantic_bundle):
    image = _cells()
    labels = np.zeros(image.shape, np.uint32)
    with pytest.raises(InputError, match="do not fit"):
        review(image, labels[:10], instance_bundle)
    with pytest.raises(InputError, match="flips"):
        review(image, labels, instance_bundle, flips=["sideways"])
    with pytest.raises(InputError, match="instance segmentation"):
        review(image, labels, semantic_bundle)


def test_scoring_imports_neither_torch_nor_qt():
    from tests.test_core_imports import GUI, _modules_after

    loaded = _modules_after("import napari_unet.core.review")
    assert "torch" not in loaded
    assert not any(m.split(".")[0] in GUI for m in loaded)


def test_stop_ranks_with_the_views_done_so_far(instance_bundle):
    import threading

    image = _cells()
    labels = predict(image, instance_bundle, AT_THE_NECK, predictor=Tilted(0.1)).labels
    stop = threading.Event()
    predictor = Tilted(0.1)
    generator = iter_review(
        image, labels, instance_bundle, flips=["left-right", "both"], predictor=predictor, stop=stop
    )
    while predictor.calls < 2:  # the left-right view is done, the second has begun
        next(generator)
    stop.set()
    items = run_to_end(generator)
    assert predictor.calls == 2
    assert [(item.label, item.reason) for item in items] == [(int(labels[60, 140]), MERGED)]
    assert items[0].score > 0.5  # one view of one, not two of three


def test_read_plane_reads_one_plane_in_any_axis_order():
    data = np.arange(2 * 3 * 4 * 5).reshape(2, 4, 5, 3)  # Z Y X C
    plane, axes = read_plane(data, "ZYXC", (1,))
    assert axes == "YXC"
    np.testing.assert_array_equal(plane, data[1])
    moved = np.moveaxis(data, 0, 2)  # Y X Z C
    plane, axes = read_plane(moved, "YXZC", (1,))
    np.testing.assert_array_equal(plane, data[1])
    with pytest.raises(InputError, match="plane"):
        read_plane(data, "ZYXC", (0, 1))


def test_certainty_is_per_object_and_counts_misses():
    from napari_unet.core.review import certainty_map

    labels = np.zeros((40, 40), np.int32)
    labels[2:12, 2:12] = 1  # every view sees it
    labels[20:30, 2:12] = 2  # no view sees it (a false object?)
    view = np.zeros_like(labels)
    view[2:12, 2:12] = 5
    view[20:30, 25:35] = 7  # an object the labels lack (a miss?)
    other = view.copy()
    other[20:30, 25:35] = 0
    certainty = certainty_map(labels, [view, other])
    assert np.all(certainty[labels == 1] == 1.0)
    assert np.all(certainty[labels == 2] == 0.0)
    assert np.all(certainty[20:30, 25:35] == 0.5)  # one view of two finds it
    assert certainty[35, 35] == 1.0


def _disks(centres: list[tuple[int, int]], radius: int = 8) -> np.ndarray:
    """One label per disk, in the order given; later disks overwrite earlier ones."""
    rows, cols = np.mgrid[:120, :160]
    labels = np.zeros((120, 160), np.uint32)
    for k, (r, c) in enumerate(centres, start=1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = k
    return labels


def test_a_large_object_pinched_at_a_waist_is_listed_even_when_every_view_repeats_it():
    centres = [(15, 15), (15, 50), (15, 85), (60, 15), (60, 50), (100, 120)]
    labels = _disks([*centres, (60, 100), (60, 114)])  # the last two: one nucleus pair
    labels[labels == 8] = 7  # ... merged into one object, as a model that is sure of it would
    ellipse = (np.mgrid[:120, :160][0] - 100) ** 2 / 64 + (np.mgrid[:120, :160][1] - 40) ** 2 / 400
    labels[ellipse <= 1] = 9  # long but convex: not pinched

    items = rank_plane(labels, [labels.copy() for _ in range(3)])

    assert [(item.label, item.reason) for item in items] == [(7, PINCHED)]
    assert 0.2 <= items[0].score <= 1.0
    # too few objects to know the plane's typical shape: shape alone lists nothing
    few = np.where(np.isin(labels, [1, 2, 7]), labels, 0)
    assert rank_plane(few, [few.copy()]) == []


def test_a_pinched_object_the_views_also_doubt_keeps_the_higher_score():
    labels = _disks([(15, 15), (15, 50), (15, 85), (60, 15), (60, 50), (60, 100), (60, 114)])
    labels[labels == 7] = 6
    view = labels.copy()
    view[labels == 6] = 0  # one view of one misses the pair entirely: disagreement 1.0

    (item,) = rank_plane(labels, [view])

    assert (item.label, item.reason, item.score) == (6, FALSE, 1.0)


def test_degenerate_objects_do_not_break_the_shape_cue():
    labels = np.zeros((50, 50), np.uint32)
    labels[1, 1] = 1  # a single pixel
    labels[5, 2:20] = 2  # a line: its convex hull has no area
    labels[10:12, 10:12] = 3
    labels[20, 20] = 4
    labels[30:40, 30] = 5
    labels[45, 45:47] = 6
    labels[40:48, 2:10] = 7

    assert rank_plane(labels, [labels.copy()]) == []

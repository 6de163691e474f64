"""The held-out comparison of two model versions, checked against hand-counted cases."""

import numpy as np

from napari_unet.core.heldout import (
    MIN_OBJECTS,
    MIN_WRONG,
    ObjectCounts,
    VersionComparison,
    compare_classes,
    compare_instances,
    count_objects,
    held_out_regions,
)


def squares(positions, shape=(100, 100), size=8):
    """Label image with one square object per (row, col), ids 1, 2, ..."""
    labels = np.zeros(shape, np.uint16)
    for i, (r, c) in enumerate(positions, start=1):
        labels[r : r + size, c : c + size] = i
    return labels


GRID = [(r, c) for r in range(5, 95, 15) for c in range(5, 95, 15)]  # 36 objects


def test_counts_follow_centroids_in_the_region():
    truth = squares(GRID[:4])
    prediction = squares([GRID[0], GRID[1], (80, 80)])  # two right, one false, two missed
    region = np.ones(truth.shape, bool)
    assert count_objects(prediction, truth, region).counts == ObjectCounts(tp=2, fp=1, fn=2)
    left = np.zeros(truth.shape, bool)
    left[:, :15] = True  # only GRID[0] (5, 5) is centred here
    assert count_objects(prediction, truth, left).counts == ObjectCounts(tp=1, fp=0, fn=0)
    assert ObjectCounts(tp=2, fp=1, fn=2).ap == 2 / 5
    assert ObjectCounts().ap == 1.0


def test_fixing_the_corrections_ranks_better_and_breaking_accepted_objects_ranks_worse():
    truth = squares(GRID)  # what the user left: 36 objects
    base = squares(GRID[5:])  # the base model missed the first 5 (the user painted them)
    region = np.ones(truth.shape, bool)
    fixed = compare_instances([truth], [base], [squares(GRID)], [region])
    assert fixed.base_score == 31 / 36 and fixed.new_score == 1.0
    assert fixed.n_items == 36 and fixed.n_wrong == 5 and fixed.verdict == "better"
    # a deliberately worse model: it finds two of the corrected ones but loses 10 accepted
    worse = compare_instances([truth], [base], [squares(GRID[3:26])], [region])
    assert worse.new_score == 23 / 36 < worse.base_score and worse.verdict == "worse"
    assert (worse.fixed, worse.broken) == (2, 10) and worse.chance_worse == 79 / 4096
    text = worse.describe("nuclei", "nuclei-ft1")
    assert text.startswith("nuclei-ft1 is worse than nuclei")
    assert "36 held-out objects, 5 of which nuclei got wrong" in text


def test_two_changed_accepted_objects_are_too_close_to_call_worse():
    """Objects left as predicted were not all checked: a version that changes two of them
    (it may have fixed them) scores lower against the user's labels, but two disagreements
    are luck's size (p = 1/4), so the panel must not call it worse."""
    truth = squares(GRID[:14])
    base = squares(GRID[5:14])  # 9 of 14 found: the user repainted 5
    new = squares(GRID[7:14])  # misses two of the objects the user accepted
    changed = compare_instances([truth], [base], [new], [np.ones((100, 100), bool)])
    assert changed.enough and changed.new_score < changed.base_score
    assert (changed.fixed, changed.broken) == (0, 2) and changed.chance_worse == 0.25
    assert changed.verdict == "too close"


def test_too_few_corrections_to_tell():
    truth = squares(GRID[: MIN_OBJECTS - 1])
    base = squares(GRID[MIN_WRONG : MIN_OBJECTS - 1])
    result = compare_instances([truth], [base], [truth], [np.ones(truth.shape, bool)])
    assert result.new_score > result.base_score and result.verdict == "too few"
    assert result.describe("a", "b").startswith("Too few corrections to tell")


def test_semantic_versions_compare_by_class_iou():
    truth = np.zeros((60, 60), np.uint8)
    truth[:, 30:] = 1
    base = np.zeros_like(truth)  # misses the whole class
    region = np.ones(truth.shape, bool)
    result = compare_classes([truth], [base], [truth], [region], n_classes=2)
    assert result.base_score == 0.0 and result.new_score == 1.0
    assert result.n_items == 3600 and result.n_wrong == 1800 and result.verdict == "better"


def test_held_out_regions_stay_inside_what_was_labelled():
    rng = np.random.default_rng(0)
    known = np.zeros((100, 200), bool)
    known[10:60, 20:180] = True
    (held,) = held_out_regions([known.shape], [known], 0.25, rng)
    assert not held.whole_plane and held.region.any()
    assert not (held.region & ~known).any()  # only labelled pixels are scored
    share = held.region.sum() / known.sum()
    assert 0.2 <= share <= 0.3
    planes = held_out_regions([(50, 50)] * 4, [None] * 4, 0.25, rng)
    assert len(planes) == 1 and planes[0].whole_plane and planes[0].region.all()
    assert held_out_regions([(50, 50)], [None], 0.0, rng) == []


def test_one_object_of_luck_is_not_called_better():
    """12 held-out objects, the new version finds one more: the panel must not call it
    better (a sign test over the objects the versions disagree on), and says why."""
    truth = squares(GRID[:12])
    base = squares(GRID[4:12])  # 8 of 12 found: 4 wrong
    one_more = compare_instances(
        [truth], [base], [squares(GRID[3:12])], [np.ones((100, 100), bool)]
    )
    assert one_more.new_score > one_more.base_score and one_more.enough
    assert (one_more.fixed, one_more.broken) == (1, 0) and one_more.chance == 0.5
    assert one_more.verdict == "too close"
    assert one_more.describe("a", "b").startswith("Too close to tell whether b is better than a")
    # fixing all four and breaking one: 4 of 5 disagreements is still luck (p = 6/32)
    swap = squares(GRID[:11])
    mixed = compare_instances([truth], [base], [swap], [np.ones((100, 100), bool)])
    assert (mixed.fixed, mixed.broken) == (4, 1) and mixed.verdict == "too close"
    # five fixes and nothing broken: p = 1/32
    truth13 = squares(GRID[:13])
    base13 = squares(GRID[5:13])
    five = compare_instances([truth13], [base13], [truth13], [np.ones((100, 100), bool)])
    assert (five.fixed, five.broken) == (5, 0) and five.verdict == "better"


def test_one_object_is_counted_as_one():
    one = VersionComparison("AP@0.5", 0.0, 1.0, n_items=1, n_wrong=1, unit="objects", fixed=1)
    text = one.describe("nuclei", "nuclei-ft1")
    assert "(1 held-out object, 1 of which nuclei got wrong)" in text
    assert "(1 object fixed, 0 broken)" in text


def test_an_empty_held_out_part_gives_no_scores():
    truth = np.zeros((100, 100), np.uint16)
    false = squares([GRID[0]])  # the new version finds an object where there is none
    result = compare_instances([truth], [truth], [false], [np.ones(truth.shape, bool)])
    assert result.n_items == 0 and not result.scored and result.verdict == "too few"
    text = result.describe("a", "b")
    assert (
        text
        == "Too few corrections to tell whether b is better: the held-out part of your labels holds no object."
    )

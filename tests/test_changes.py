import numpy as np
import pytest

from napari_unet.core.changes import (
    APPEARED,
    CHANGED,
    VANISHED,
    Change,
    compare_labels,
    iter_changes,
)
from napari_unet.core.errors import InputError


def _all_kinds() -> tuple[np.ndarray, np.ndarray]:
    old = np.zeros((16, 32), np.uint32)
    new = np.zeros_like(old)
    old[0:4, 0:4], new[0:4, 0:4] = 1, 5  # the same object: not a change
    old[0:4, 10:14], new[0:4, 10:13] = 2, 6  # IoU 12/16 = 0.75: changed
    old[10:14, 0:4] = 3  # vanished
    new[10:14, 10:14] = 7  # appeared
    old[6:10, 20:24], new[6:10, 22:26] = 4, 8  # IoU 8/24: too little to match
    old[10:15, 20:24], new[10:14, 20:24] = 9, 10  # IoU 16/20 = 0.8: not changed enough
    return old, new


def test_appeared_vanished_and_changed_objects():
    old, new = _all_kinds()
    found = compare_labels(old, new)
    assert found.changes == (
        Change(1, APPEARED, (), 0, 7, 0.0, 16),
        Change(2, APPEARED, (), 0, 8, 0.0, 16),
        Change(3, VANISHED, (), 3, 0, 0.0, 16),
        Change(4, VANISHED, (), 4, 0, 0.0, 16),
        Change(5, CHANGED, (), 2, 6, 0.75, 16),
    )
    expected = np.zeros_like(old)
    expected[10:14, 10:14] = 1
    expected[6:10, 20:22] = 4  # vanished object 4, under appeared object 8 where they overlap
    expected[6:10, 22:26] = 2
    expected[10:14, 0:4] = 3
    expected[0:4, 10:14] = 5  # a changed object covers its old and new pixels
    np.testing.assert_array_equal(found.labels, expected)
    assert found.labels.dtype == np.uint32
    assert found.counts() == {APPEARED: 2, VANISHED: 2, CHANGED: 1}
    assert found.describe() == "2 appeared, 2 vanished, 1 changed"
    columns = found.columns()
    assert list(columns) == ["index", "kind", "old_id", "new_id", "iou", "pixels"]
    assert columns["index"].tolist() == [1, 2, 3, 4, 5]
    assert columns["kind"].tolist() == ["appeared", "appeared", "vanished", "vanished", "changed"]
    assert columns["old_id"].tolist() == [0, 0, 3, 4, 2]
    assert columns["new_id"].tolist() == [7, 8, 0, 0, 6]


def test_split_and_merge_stay_visible():
    old = np.zeros((4, 8), np.uint16)
    old[:, 0:8] = 1
    new = np.zeros_like(old)
    new[:, 0:5], new[:, 5:8] = 1, 2  # 1 split: its bigger part matches (IoU 20/32)
    split = compare_labels(old, new)
    assert split.changes == (
        Change(1, APPEARED, (), 0, 2, 0.0, 12),
        Change(2, CHANGED, (), 1, 1, 0.625, 32),
    )
    expected = np.zeros(old.shape, np.uint32)
    expected[:, 0:5], expected[:, 5:8] = 2, 1
    np.testing.assert_array_equal(split.labels, expected)
    merged = compare_labels(new, old)  # the two merged: the lost one shows over the change
    assert merged.changes == (
        Change(1, VANISHED, (), 2, 0, 0.0, 12),
        Change(2, CHANGED, (), 1, 1, 0.625, 32),
    )
    np.testing.assert_array_equal(merged.labels, expected)


def test_nested_changes_stay_visible():
    old = np.zeros((12, 12), np.uint8)
    new = np.zeros_like(old)
    old[4:8, 4:8] = 1  # grew far beyond IoU 0.5: it vanished, and a bigger one appeared
    new[2:10, 2:10] = 1
    grown = compare_labels(old, new)
    assert grown.changes == (
        Change(1, APPEARED, (), 0, 1, 0.0, 64),
        Change(2, VANISHED, (), 1, 0, 0.0, 16),
    )
    expected = np.zeros(old.shape, np.uint32)
    expected[2:10, 2:10], expected[4:8, 4:8] = 1, 2
    np.testing.assert_array_equal(grown.labels, expected)
    shrunk = compare_labels(new, old)
    expected[2:10, 2:10], expected[4:8, 4:8] = 2, 1
    np.testing.assert_array_equal(shrunk.labels, expected)


def test_stacks_are_compared_plane_by_plane():
    old = np.zeros((3, 10, 10), np.uint32)
    new = np.zeros_like(old)
    old[:, 2:6, 2:6] = 1  # the same id in every plane, as z-linked objects have
    new[0, 2:6, 2:6] = 1
    new[2, 2:6, 2:6] = 1
    new[2, 7:9, 7:9] = 2
    found = compare_labels(old, new, axes="ZYX")
    assert found.changes == (
        Change(1, VANISHED, (1,), 1, 0, 0.0, 16),
        Change(2, APPEARED, (2,), 0, 2, 0.0, 4),
    )
    expected = np.zeros_like(old)
    expected[1, 2:6, 2:6] = 1
    expected[2, 7:9, 7:9] = 2
    np.testing.assert_array_equal(found.labels, expected)
    assert found.columns()["z"].tolist() == [1, 2]
    # the plane axes need not come first
    moved = compare_labels(np.moveaxis(old, 0, 1), np.moveaxis(new, 0, 1), axes="YZX")
    assert moved.changes == found.changes
    np.testing.assert_array_equal(moved.labels, np.moveaxis(expected, 0, 1))
    # two plane axes; unnamed ones are called I, J, ...
    both = compare_labels(old.reshape(3, 1, 10, 10), new.reshape(3, 1, 10, 10))
    assert [c.plane for c in both.changes] == [(1, 0), (2, 0)]
    assert list(both.columns())[2:4] == ["i", "j"]
    steps = list(iter_changes(old, new, axes="ZYX"))
    assert steps == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_empty_inputs():
    empty = np.zeros((6, 6), np.uint32)
    nothing = compare_labels(empty, empty)
    assert nothing.changes == () and not nothing.labels.any()
    assert nothing.describe() == "0 appeared, 0 vanished, 0 changed"
    assert nothing.columns()["index"].size == 0
    full = np.ones_like(empty)
    assert compare_labels(empty, full).changes == (Change(1, APPEARED, (), 0, 1, 0.0, 36),)
    assert compare_labels(full, empty).changes == (Change(1, VANISHED, (), 1, 0, 0.0, 36),)
    no_planes = compare_labels(np.zeros((0, 4, 4), np.uint8), np.zeros((0, 4, 4), np.uint8))
    assert no_planes.changes == () and no_planes.labels.shape == (0, 4, 4)
    no_pixels = compare_labels(np.zeros((2, 0), np.int32), np.zeros((2, 0), np.int32))
    assert no_pixels.changes == () and no_pixels.labels.shape == (2, 0)
    assert compare_labels(empty, empty, mode="semantic").describe() == (
        "0 pixels changed class (0.0%)"
    )


def test_semantic_pixels_whose_class_changed():
    old = np.array([[[0, 1], [1, 2]], [[0, 0], [0, 0]]], np.uint8)
    new = np.array([[[0, 2], [1, 0]], [[0, 0], [0, 2]]], np.uint8)
    found = compare_labels(old, new, mode="semantic", axes="ZYX")
    assert [(c.label, c.kind, c.plane, c.old, c.new, c.pixels) for c in found.changes] == [
        (1, CHANGED, (0,), 1, 2, 1),
        (2, CHANGED, (0,), 2, 0, 1),
        (3, CHANGED, (1,), 0, 2, 1),
    ]
    assert all(np.isnan(c.iou) for c in found.changes)
    np.testing.assert_array_equal(found.labels, [[[0, 1], [0, 2]], [[0, 0], [0, 3]]])
    assert found.counts() == {CHANGED: 3}
    assert found.describe() == "3 pixels changed class (37.5%)"
    assert list(found.columns())[2:5] == ["z", "old_class", "new_class"]


@pytest.mark.parametrize(
    ("old", "new", "kwargs", "message"),
    [
        (np.zeros((4, 4), int), np.zeros((4, 5), int), {}, "differ in shape"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {}, "must be integers"),
        (-np.ones((4, 4), int), np.zeros((4, 4), int), {}, "must not be negative"),
        (np.zeros((2, 4, 4), int), np.zeros((2, 4, 4), int), {"axes": "YX"}, "do not fit"),
        (np.zeros((2, 4, 4), int), np.zeros((2, 4, 4), int), {"axes": "ZYY"}, "do not fit"),
        (np.zeros(4, int), np.zeros(4, int), {}, "at least 2 axes"),
        (np.zeros((4, 4), int), np.zeros((4, 4), int), {"mode": "panoptic"}, "mode must be"),
    ],
)
def test_inputs_that_cannot_be_compared(old, new, kwargs, message):
    with pytest.raises(InputError, match=message):
        compare_labels(old, new, **kwargs)


def test_torch_free():
    from tests.test_core_imports import _modules_after

    loaded = _modules_after("import napari_unet.core.changes")
    assert "torch" not in loaded
    assert not {"napari", "qtpy", "superqt"} & {m.split(".")[0] for m in loaded}

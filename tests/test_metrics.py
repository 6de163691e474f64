import numpy as np
import pytest

from napari_unet.core.metrics import class_iou, instance_scores, pixel_error


def test_perfect_and_shifted_objects():
    truth = np.zeros((20, 20), np.uint16)
    truth[2:8, 2:8] = 1
    truth[10:16, 10:16] = 2
    perfect = instance_scores(truth, truth)
    assert perfect.at(0.5) == 1.0 and perfect.mean_ap == 1.0
    shifted = np.zeros_like(truth)
    shifted[2:8, 3:9] = 5  # IoU 30/42 = 0.714
    scores = instance_scores(shifted, truth)
    assert scores.at(0.5) == pytest.approx(1 / 2)  # 1 TP, 0 FP, 1 FN
    assert scores.at(0.75) == 0.0
    assert scores.precision(0.5) == 1.0 and scores.recall(0.5) == 0.5
    assert instance_scores(np.zeros_like(truth), np.zeros_like(truth)).at(0.5) == 1.0


def test_class_iou_and_pixel_error():
    truth = np.array([[0, 1], [1, 1]])
    prediction = np.array([[0, 1], [0, 1]])
    iou = class_iou(prediction, truth, 3)
    assert iou[0] == pytest.approx(0.5) and iou[1] == pytest.approx(2 / 3) and np.isnan(iou[2])
    assert pixel_error(prediction, truth) == 0.25

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from napari_unet.core.inference import PredictOptions, iter_predict, predict
from napari_unet.core.label_pipeline import LabelPipeline, auto_workers
from tests.synthetic import disks

# At the tiny model's own object size: these tests are about the pipeline, not the size estimate.
OPTIONS = PredictOptions(tile_size=64, device="cpu", precision="fp32", diameter=14.0)


def _worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("napari-unet-labels")}


def _stack(planes: int = 5) -> np.ndarray:
    return np.stack([disks((96, 96), n=8, seed=s)[0] for s in range(planes)])


def _bright_is_interior(batch: np.ndarray) -> np.ndarray:
    """Probabilities from the normalised intensity: bright disks are object interiors."""
    interior = np.clip(batch[:, :1], 0.0, 1.0)
    return np.concatenate([1.0 - interior, interior, np.zeros_like(interior)], axis=1)


@pytest.mark.parametrize("workers", [1, 3])
def test_workers_give_the_serial_labels(instance_bundle, workers):
    def run(workers):
        options = replace(OPTIONS, post_workers=workers)
        return predict(
            _stack(), instance_bundle, options, axes="ZYX", predictor=_bright_is_interior
        )

    serial, threaded = run(0), run(workers)
    assert threaded.stats["post_workers"] == workers
    assert serial.labels.max() > 5 * 4  # objects in every plane, ids running on
    np.testing.assert_array_equal(threaded.labels, serial.labels)


def test_stopping_mid_stack_waits_for_running_workers(instance_bundle, monkeypatch):
    import napari_unet.core.inference as inference

    calls = {"started": 0, "finished": 0}

    def slow_instance_labels(probabilities, **kwargs):
        calls["started"] += 1
        time.sleep(0.3)
        calls["finished"] += 1
        return np.zeros(probabilities.shape[1:], np.uint32)

    monkeypatch.setattr(inference, "instance_labels", slow_instance_labels)
    options = replace(OPTIONS, post_workers=2)
    before = _worker_threads()  # other tests' pools may not be collected yet
    generator = iter_predict(_stack(6), instance_bundle, options, axes="ZYX")
    for progress in generator:
        if progress.stage == "post-processing":
            break
    assert calls["started"] > calls["finished"]  # a plane is being post-processed now
    generator.close()
    assert calls["started"] == calls["finished"] < 6  # it finished; queued planes dropped
    assert _worker_threads() <= before


def test_results_come_back_in_submission_order():
    def slow_for_small_keys(plane):
        time.sleep(0.05 * (4 - int(plane[0])))  # the first planes finish last
        return plane * 10

    pipeline = LabelPipeline(slow_for_small_keys, workers=4)
    seen = []
    for key in range(4):
        pipeline.submit(key, np.array([key]))
        seen += [k for k, _ in pipeline.collect()]
    seen += [k for k, _ in pipeline.collect(drain=True)]
    pipeline.close()
    assert seen == [0, 1, 2, 3]


def test_at_most_workers_planes_stay_in_flight():
    gates = {key: threading.Event() for key in "abc"}
    pipeline = LabelPipeline(lambda key: (gates[key].wait(5), key)[1], workers=2)
    pipeline.submit("a", "a")
    pipeline.submit("b", "b")
    assert list(pipeline.collect()) == []  # two workers busy: no need to wait yet
    pipeline.submit("c", "c")
    threading.Timer(0.1, gates["a"].set).start()
    assert [k for k, _ in pipeline.collect()] == ["a"]  # waited for the oldest only
    gates["b"].set()
    gates["c"].set()
    assert [k for k, _ in pipeline.collect(drain=True)] == ["b", "c"]
    pipeline.close()


def test_errors_of_a_worker_reach_the_caller():
    def fail(plane):
        raise ValueError("bad plane")

    pipeline = LabelPipeline(fail, workers=1)
    pipeline.submit(0, np.zeros(1))
    with pytest.raises(ValueError, match="bad plane"):
        list(pipeline.collect(drain=True))
    pipeline.close()


def test_auto_workers_follows_cores_and_plane_size():
    assert auto_workers(2048 * 2048, cpu_count=2) == 1
    assert auto_workers(2048 * 2048, cpu_count=16) == 3  # 3 planes of 2048^2 fit the budget
    assert auto_workers(512 * 512, cpu_count=16) == 4
    assert auto_workers(16384 * 16384, cpu_count=16) == 1

import threading

import numpy as np
import pytest

from napari_unet.core import training
from napari_unet.core.bundle import load_bundle, save_bundle
from napari_unet.core.errors import TrainingDataError
from napari_unet.core.inference import PredictOptions, predict
from napari_unet.core.targets import IGNORE, border_weights, instance_classes, training_target
from napari_unet.core.training import TrainingSample, TrainSettings, iter_finetune
from tests.conftest import tiny_bundle
from tests.synthetic import disks

QUICK = TrainSettings(
    steps=12, patch_size=64, batch_size=2, val_every=4, learning_rate=3e-3, device="cpu"
)


def run(generator, send_at=None):
    steps = []
    value = None
    while True:
        try:
            step = generator.send(value)
        except StopIteration as finished:
            return steps, finished.value
        steps.append(step)
        value = "stop" if send_at is not None and step.step == send_at else None


def samples(n=3, seed=0):
    return [TrainingSample(*disks((96, 96), seed=seed + i), source=f"disks{i}") for i in range(n)]


def test_training_learns_disks(tmp_path):
    settings = TrainSettings(
        steps=60, patch_size=64, batch_size=4, val_every=20, learning_rate=5e-3, device="cpu"
    )
    steps, result = run(iter_finetune(tiny_bundle(), samples(4), settings))
    assert [s.step for s in steps] == list(range(1, 61))
    assert not result.stopped and result.reason == "finished"
    assert result.best_score > result.initial_score + 0.2
    first = np.mean([s.loss for s in steps[:5]])
    last = np.mean([s.loss for s in steps[-5:]])
    assert last < first
    path = save_bundle(result.bundle, tmp_path / "m.safetensors")
    loaded = load_bundle(path)
    history = loaded.config["training"]["history"][-1]
    assert history["best_val_score"] == pytest.approx(result.best_score)
    assert history["samples"] == ["disks0", "disks1", "disks2", "disks3"]
    image, _ = disks((96, 96), seed=99)
    assert predict(image, loaded, PredictOptions(device="cpu")).labels.max() > 0


def test_no_improvement_keeps_the_base_weights_and_says_so(monkeypatch):
    scores = iter([0.9, 0.5, 0.6, 0.4])  # the base model, then every validation: all worse
    monkeypatch.setattr(training, "validation_score", lambda *args: next(scores))
    base = tiny_bundle()
    steps, result = run(iter_finetune(base, samples(3), QUICK))
    assert steps[0].initial_score == 0.9
    assert result.best_step == 0 and result.best_score == 0.9
    assert result.reason.startswith("finished; no step beat the base model")
    for kept, original in zip(
        result.bundle.network.state_dict().values(), base.network.state_dict().values(), strict=True
    ):
        np.testing.assert_array_equal(kept.numpy(), original.numpy())


def test_training_is_deterministic():
    a = run(iter_finetune(tiny_bundle(), samples(2), QUICK))[0]
    b = run(iter_finetune(tiny_bundle(), samples(2), QUICK))[0]
    assert [s.loss for s in a] == pytest.approx([s.loss for s in b], rel=1e-4)


@pytest.mark.parametrize("stop_at", [1, 3, 7])
def test_stop_returns_complete_model(tmp_path, stop_at):
    event = threading.Event()
    generator = iter_finetune(tiny_bundle(), samples(3), QUICK, stop=event)
    steps = []
    while True:
        try:
            steps.append(next(generator))
        except StopIteration as finished:
            result = finished.value
            break
        if steps[-1].step == stop_at:
            event.set()
    assert len(steps) == stop_at and result.stopped and "user" in result.reason
    path = save_bundle(result.bundle, tmp_path / "s.safetensors")
    assert predict(
        np.zeros((40, 40)), load_bundle(path), PredictOptions(device="cpu")
    ).labels.shape == (40, 40)


def test_stop_by_send():
    steps, result = run(iter_finetune(tiny_bundle(), samples(1), QUICK), send_at=2)
    assert len(steps) == 2 and result.stopped


def test_non_finite_losses_stop_with_good_weights(monkeypatch):
    real = training._loss
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        value = real(*args)
        return value * float("nan") if calls["n"] > 5 else value

    monkeypatch.setattr(training, "_loss", flaky)
    steps, result = run(iter_finetune(tiny_bundle(), samples(3), QUICK))
    assert result.stopped and "non-finite" in result.reason
    assert sum(s.skipped for s in steps) == training.MAX_BAD_STEPS
    assert all(
        np.isfinite(v).all()
        for v in result.bundle.network.state_dict().values()
        if v.is_floating_point()
    )


def test_unknown_pixels_are_ignored():
    image, labels = disks((64, 64))
    known = np.zeros(labels.shape, bool)
    known[:32] = True
    target = training_target(labels, known, "instances")
    assert (target[32:] == IGNORE).all() and (target[:32] != IGNORE).all()


def test_bad_training_data():
    image, labels = disks((64, 64))
    with pytest.raises(TrainingDataError, match="empty"):
        run(iter_finetune(tiny_bundle(), [], QUICK))
    with pytest.raises(TrainingDataError, match="class indices 0..1"):
        run(
            iter_finetune(
                tiny_bundle("semantic"),
                [TrainingSample(image, (labels > 0).astype(np.uint8) * 255)],
                QUICK,
            )
        )
    with pytest.raises(TrainingDataError, match="do not match"):
        run(iter_finetune(tiny_bundle(), [TrainingSample(image, labels[:10])], QUICK))
    with pytest.raises(TrainingDataError, match="no labelled pixels"):
        run(
            iter_finetune(
                tiny_bundle(), [TrainingSample(image, labels, np.zeros_like(labels))], QUICK
            )
        )
    with pytest.raises(TrainingDataError, match="negative"):
        run(
            iter_finetune(
                tiny_bundle(), [TrainingSample(image, labels.astype(np.int32) - 1)], QUICK
            )
        )
    with pytest.raises(TrainingDataError, match="whole numbers"):
        run(iter_finetune(tiny_bundle(), [TrainingSample(image, labels + 0.5)], QUICK))


@pytest.mark.parametrize(
    "labels",
    [
        np.zeros((64, 64), np.uint16),
        np.ones((64, 64), np.uint16),
        np.pad(np.ones((1, 1), np.uint16), ((30, 33), (30, 33))),
    ],
    ids=["no-objects", "all-foreground", "single-pixel"],
)
def test_degenerate_labels_train(labels):
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    steps, result = run(iter_finetune(tiny_bundle(), [TrainingSample(image, labels)], QUICK))
    assert len(steps) == QUICK.steps and all(np.isfinite(s.loss) for s in steps)


def test_semantic_training_and_valid_padding():
    image, labels = disks((96, 96))
    bundle = tiny_bundle("semantic", padding="valid")
    steps, result = run(
        iter_finetune(bundle, [TrainingSample(image, (labels > 0).astype(np.uint8))], QUICK)
    )
    assert result.best_score is not None and len(steps) == QUICK.steps


def test_border_weights_emphasise_gaps():
    _, labels = disks((96, 96), n=14, touching=True, seed=2)
    weights = border_weights(labels)
    classes = instance_classes(labels)
    assert weights.shape == labels.shape and weights.dtype == np.float32
    assert weights[classes == 0].max() > 5 * np.median(weights[classes == 0])

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.core import training
from napari_unet.core.bundle import clone_bundle, network_state, save_bundle
from napari_unet.core.errors import InputError, TrainingDataError
from napari_unet.core.heldout import HeldOut, held_out_regions
from napari_unet.core.inference import PredictOptions, predict
from napari_unet.core.options import TrainSettings
from napari_unet.core.registry import load_bundle
from napari_unet.core.samples import TrainingSample
from napari_unet.core.targets import (
    IGNORE,
    MAX_CLASS_WEIGHT,
    border_weights,
    class_border_weights,
    instance_classes,
    training_target,
)
from napari_unet.core.training import TrainStatus, TrainStep, iter_finetune
from tests.conftest import tiny_bundle
from tests.synthetic import disks

QUICK = TrainSettings(
    steps=12, patch_size=64, batch_size=2, val_every=4, learning_rate=3e-3, device="cpu"
)


def run(generator, send_at=None):
    """Drive a fine-tune; returns its TrainSteps (statuses dropped) and its result."""
    steps = []
    value = None
    while True:
        try:
            item = generator.send(value)
        except StopIteration as finished:
            return steps, finished.value
        value = None
        if isinstance(item, TrainStep):
            steps.append(item)
            value = "stop" if send_at is not None and item.step == send_at else None


def samples(n=3, seed=0):
    return [TrainingSample(*disks((96, 96), seed=seed + i), source=f"disks{i}") for i in range(n)]


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained from scratch on disks: (its steps, its result)."""
    settings = TrainSettings(
        steps=100, patch_size=64, batch_size=4, val_every=50, learning_rate=5e-3, device="cpu"
    )
    return run(iter_finetune(tiny_bundle(), samples(4), settings))


def test_training_learns_disks(tmp_path, trained):
    steps, result = trained
    assert [s.step for s in steps] == list(range(1, 101))
    assert not result.stopped and result.reason == "finished"
    comparison = result.comparison
    assert comparison.new_score > comparison.base_score + 0.2
    assert comparison.verdict == "better" and steps[0].initial_score == comparison.base_score
    first = np.mean([s.loss for s in steps[:5]])
    last = np.mean([s.loss for s in steps[-5:]])
    assert last < first
    path = save_bundle(result.bundle, tmp_path / "m.safetensors")
    loaded = load_bundle(path)
    history = loaded.config["training"]["history"][-1]
    assert history["comparison"]["new_score"] == pytest.approx(comparison.new_score)
    assert history["comparison"]["verdict"] == "better"
    assert history["samples"] == ["disks0", "disks1", "disks2", "disks3"]
    image, _ = disks((96, 96), seed=99)
    assert predict(image, loaded, PredictOptions(device="cpu")).labels.max() > 0


def _norm_statistics(network):
    return {
        name: tensor.clone()
        for name, tensor in network.state_dict().items()
        if name.endswith(("running_mean", "running_var"))
    }


@pytest.mark.parametrize("freeze_norm", [True, False])
def test_fine_tuning_keeps_the_base_batch_norm_statistics_unless_told(trained, freeze_norm):
    """Frozen statistics stay the base's (its scale and shift still learn); a model trained
    from scratch (the fixture) learned its own."""
    base = trained[1].bundle
    fresh = _norm_statistics(tiny_bundle().network)
    before = _norm_statistics(base.network)
    assert any(not torch.equal(before[name], fresh[name]) for name in fresh)
    settings = replace(QUICK, steps=4, val_fraction=0.0, freeze_norm=freeze_norm)
    _, result = run(iter_finetune(base, samples(2, seed=7), settings))
    after = _norm_statistics(result.bundle.network)
    unchanged = all(torch.equal(before[name], after[name]) for name in before)
    assert unchanged == freeze_norm
    weights = {
        name: tensor
        for name, tensor in result.bundle.network.state_dict().items()
        if name.endswith(".weight")
    }
    base_weights = base.network.state_dict()
    assert any(not torch.equal(base_weights[name], weights[name]) for name in weights)


def test_a_deliberately_worse_version_is_ranked_worse(trained):
    """The held-out comparison ranks a damaged copy of a good model below the model."""
    good = trained[1].bundle
    worse = clone_bundle(good)
    with torch.no_grad():
        for parameter in worse.network.parameters():
            parameter.add_(torch.randn_like(parameter) * parameter.std() * 0.7)
    image, labels = disks((160, 160), n=20, seed=42)
    known = np.zeros(labels.shape, bool)
    known[:, 80:] = True
    validation = training._Validation(
        [TrainingSample(image, labels, known)],
        held_out_regions([labels.shape], [known], 0.5, np.random.default_rng(0)),
        good.config,
        training.plane_options(good.config, TrainSettings(device="cpu"), None),
    )
    validation.base_labels = validation.predict(good.network)
    comparison = validation.compare(validation.predict(worse.network))
    assert comparison.new_score < comparison.base_score
    assert comparison.verdict in ("worse", "too few")


def test_context_outside_the_known_mask_is_down_weighted():
    image, labels = disks((64, 64))
    known = np.zeros(labels.shape, bool)
    known[:32] = True
    sample = TrainingSample(image, labels, known)
    config = tiny_bundle().config
    settings = TrainSettings(context_weight=0.25, context_outlines=True)
    prepared = training.prepare_sample(sample, config, settings)
    assert (prepared.weights[:32] == 1.0).all() and (prepared.weights[32:] == 0.25).all()
    assert (prepared.target != IGNORE).all()
    ignored = training.prepare_sample(sample, config, TrainSettings(context_weight=0.0))
    assert (ignored.target[32:] == IGNORE).all() and (ignored.target[:32] != IGNORE).all()


def test_context_weight_follows_the_certainty_given():
    image, labels = disks((64, 64), seed=1)
    known = np.zeros(labels.shape, bool)
    known[:, :16] = True
    certainty = np.linspace(0.0, 1.0, labels.size, dtype=np.float32).reshape(labels.shape)
    config = tiny_bundle().config
    item = training.prepare_sample(
        TrainingSample(image, labels, known),
        config,
        TrainSettings(context_weight=0.4, context_outlines=True),
        certainty,
    )
    assert np.all(item.weights[known] == 1.0)
    assert np.allclose(item.weights[~known], 0.4 * certainty[~known])


def test_outlines_of_untouched_objects_are_left_out_unless_asked():
    from skimage.segmentation import find_boundaries

    image, labels = disks((64, 64), seed=1)
    known = np.zeros(labels.shape, bool)
    known[:, :24] = True
    sample = TrainingSample(image, labels, known)
    config = tiny_bundle().config
    outline = find_boundaries(labels, mode="thick")
    item = training.prepare_sample(sample, config, TrainSettings(context_weight=0.3))
    assert np.all(item.weights[outline & ~known] == 0)
    assert np.all(item.target[outline & ~known] == IGNORE)
    assert np.all(item.weights[outline & known] > 0)  # the person's own outlines count
    interior = (labels > 0) & ~outline & ~known
    assert np.any(item.weights[interior] == np.float32(0.3))
    outlined = TrainSettings(context_weight=0.3, context_outlines=True)
    kept = training.prepare_sample(sample, config, outlined)
    assert np.all(kept.weights[outline & ~known] > 0)


def test_the_context_is_weighed_by_the_base_models_certainty(monkeypatch):
    seen = []

    def spy(labels, views):
        seen.append(len(views))
        return np.full(labels.shape, 0.5, np.float32)

    monkeypatch.setattr(training, "certainty_map", spy)
    image, labels = disks((96, 96), seed=5)
    known = np.zeros(labels.shape, bool)
    known[:, :40] = True
    partial = TrainingSample(image, labels, known, source="partial")
    whole = samples(1)[0]  # labelled everywhere: no context to weigh
    with_context = replace(QUICK, steps=2, context_weight=0.3)
    run(iter_finetune(tiny_bundle(), [partial, whole], with_context))
    assert seen == [3]  # the partial plane only, against three flipped predictions
    seen.clear()
    run(iter_finetune(tiny_bundle(), [partial], replace(with_context, weigh_context=False)))
    assert seen == []
    rehearsing = _with_replay(tiny_bundle())  # the default ignores the context: nothing to weigh
    run(iter_finetune(rehearsing, [partial], replace(QUICK, steps=2)))
    assert QUICK.context_weight is None and seen == []


@pytest.mark.parametrize(
    ("replay", "given", "used"), [(True, None, 0.0), (False, None, 0.3), (True, 0.2, 0.2)]
)
def test_the_context_is_ignored_only_when_the_base_rehearses_its_own_data(replay, given, used):
    base = _with_replay(tiny_bundle()) if replay else tiny_bundle()
    _, result = run(iter_finetune(base, samples(1), replace(QUICK, steps=2, context_weight=given)))
    assert result.bundle.config["training"]["history"][-1]["settings"]["context_weight"] == used


def test_samples_added_during_training_join_it():
    extra = TrainingSample(*disks((96, 96), seed=7), source="extra")
    offered = [[], [], [extra]]

    def more():
        return offered.pop(0) if offered else []

    steps, result = run(iter_finetune(tiny_bundle(), samples(1), QUICK, more_samples=more))
    assert len(steps) == QUICK.steps
    assert result.bundle.config["training"]["history"][-1]["samples"] == ["disks0", "extra"]


def test_a_correction_during_training_replaces_its_plane_outside_the_held_out_part():
    image, labels = disks((96, 160), n=16, seed=5)
    known = np.ones(labels.shape, bool)
    first = TrainingSample(image, labels, known, source="plane")
    config = tiny_bundle().config
    held = held_out_regions([labels.shape], [known], 0.25, np.random.default_rng(0))
    item = training.prepare_sample(first, config, QUICK)
    moved = training._held_out_of(
        item, TrainingSample(image, labels, known, source="plane"), {"plane": held[0]}
    )
    assert (moved.weights[held[0].region] == 0).all() and moved.weights.sum() > 0
    other = training._held_out_of(
        item, TrainingSample(image, labels, source="other"), {"plane": held[0]}
    )
    assert other is item
    whole = training._held_out_of(item, first, {"plane": HeldOut(0, held[0].region, True)})
    assert whole is None


def test_statuses_come_before_the_first_step_and_after_the_last():
    items = []
    generator = iter_finetune(tiny_bundle(), samples(3), QUICK)
    while True:
        try:
            items.append(next(generator))
        except StopIteration:
            break
    assert isinstance(items[0], TrainStatus) and isinstance(items[-1], TrainStatus)
    assert [i.step for i in items if isinstance(i, TrainStep)] == list(range(1, QUICK.steps + 1))


def test_training_is_deterministic():
    a = run(iter_finetune(tiny_bundle(), samples(2), QUICK))[0]
    b = run(iter_finetune(tiny_bundle(), samples(2), QUICK))[0]
    assert [s.loss for s in a] == pytest.approx([s.loss for s in b], rel=1e-4)


def test_a_trained_base_keeps_part_of_the_change_and_random_weights_all_of_it(trained, monkeypatch):
    base = trained[1].bundle  # trained from scratch: its config records that run
    assert (
        training.with_base_defaults(TrainSettings(), base).finetuned_share
        == training.FINETUNED_SHARE
    )
    assert training.with_base_defaults(TrainSettings(), tiny_bundle()).finetuned_share == 1.0
    settings = replace(QUICK, retention_tolerance=None)
    whole = run(iter_finetune(base, samples(2, seed=5), replace(settings, finetuned_share=1.0)))
    judged = []  # the weights of every network the held-out labels were predicted with
    predict_held_out = training._Validation.predict

    def spy(validation, network):
        judged.append(network_state(network))
        return predict_held_out(validation, network)

    monkeypatch.setattr(training._Validation, "predict", spy)
    part = run(iter_finetune(base, samples(2, seed=5), settings))
    recorded = part[1].bundle.config["training"]["history"][-1]["settings"]
    assert recorded["finetuned_share"] == training.FINETUNED_SHARE
    base_state = network_state(base.network)
    whole_state, part_state = (network_state(r[1].bundle.network) for r in (whole, part))
    moved = 0
    for key, b in base_state.items():
        if b.is_floating_point():
            halfway = b + training.FINETUNED_SHARE * (whole_state[key] - b)
            torch.testing.assert_close(part_state[key], halfway, rtol=1e-3, atol=1e-5)
            moved += int(not torch.equal(part_state[key], b))
    assert moved > 0
    # the last step's held-out score judged the version that was saved, not the trained weights
    last_step = judged[-2]  # then the final comparison
    for key, value in part_state.items():
        torch.testing.assert_close(last_step[key], value)


def test_a_trained_base_trains_its_first_levels_and_random_weights_every_level(trained):
    base = trained[1].bundle
    assert (
        training.with_base_defaults(TrainSettings(), base).trained_levels == training.TRAINED_LEVELS
    )
    assert training.with_base_defaults(TrainSettings(), tiny_bundle()).trained_levels == 0
    settings = replace(QUICK, retention_tolerance=None, finetuned_share=1.0, trained_levels=1)
    result = run(iter_finetune(base, samples(2, seed=5), settings))[1]
    assert result.bundle.config["training"]["history"][-1]["settings"]["trained_levels"] == 1
    before = dict(base.network.named_parameters())
    after = dict(result.bundle.network.named_parameters())
    moved = {name for name in after if not torch.equal(after[name], before[name])}
    assert moved and all(name.startswith("encoders.0.") for name in moved)
    first_level = {name for name in after if name.startswith("encoders.0.")}
    assert moved == first_level  # every weight of the first level learnt, nothing else


@pytest.mark.parametrize("stop_at", [1, 3, 7])
def test_stop_returns_complete_model(tmp_path, stop_at):
    event = threading.Event()
    generator = iter_finetune(tiny_bundle(), samples(3), QUICK, stop=event)
    steps = []
    while True:
        try:
            item = next(generator)
        except StopIteration as finished:
            result = finished.value
            break
        if isinstance(item, TrainStep):
            steps.append(item)
            if item.step == stop_at:
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


@pytest.mark.parametrize("weights", [False, True], ids=["plain", "border-weights"])
def test_semantic_training_and_valid_padding(weights):
    image, labels = disks((96, 96))
    bundle = tiny_bundle("semantic", padding="valid")
    settings = replace(QUICK, border_weights=weights)
    steps, result = run(
        iter_finetune(bundle, [TrainingSample(image, (labels > 0).astype(np.uint8))], settings)
    )
    assert result.comparison.metric == "mean IoU" and len(steps) == QUICK.steps
    assert all(np.isfinite(s.loss) for s in steps)
    classes = (labels > 0).astype(np.uint8)
    prepared = training.prepare_sample(TrainingSample(image, classes), bundle.config, settings)
    expected = class_border_weights(classes, 2) if weights else np.ones(classes.shape)
    np.testing.assert_allclose(prepared.weights, expected, rtol=1e-6)
    assert result.bundle.config["training"]["history"][-1]["settings"]["border_weights"] is weights


def test_border_weights_emphasise_gaps():
    _, labels = disks((96, 96), n=14, touching=True, seed=2)
    weights = border_weights(labels)
    classes = instance_classes(labels)
    assert weights.shape == labels.shape and weights.dtype == np.float32
    assert weights[classes == 0].max() > 5 * np.median(weights[classes == 0])


def test_border_weights_of_two_squares_two_pixels_apart():
    labels = np.zeros((64, 64), np.uint16)
    labels[10:50, 10:30], labels[10:50, 32:52] = 1, 2
    weights = border_weights(labels)
    fraction = 2 * 40 * 20 / 64**2
    gap = 10.0 * np.exp(-((1 + 2) ** 2) / (2 * 5.0**2))  # 1 px to one square, 2 to the other
    np.testing.assert_allclose(weights[10:50, 30:32], 0.5 / (1 - fraction) + gap, rtol=1e-5)
    np.testing.assert_allclose(weights[labels > 0], 0.5 / fraction, rtol=1e-5)


def test_class_border_weights_match_the_instance_map_for_apart_objects():
    _, labels = disks((96, 96), n=10, touching=False, seed=3)
    mask = (labels > 0).astype(np.uint8)
    np.testing.assert_allclose(class_border_weights(mask, 2), border_weights(labels), rtol=1e-6)


def test_class_border_weights_stress_a_membrane_between_two_cells():
    classes = np.zeros((64, 64), np.uint8)
    classes[:, 30:32] = 1  # a membrane two pixels wide: cells on either side
    weights = class_border_weights(classes, 2)
    balance_cell = 64 * 64 / (2 * (64 * 64 - 128))
    balance_membrane = MAX_CLASS_WEIGHT  # 64 * 64 / (2 * 128) = 16, capped
    gap = 10.0 * np.exp(-((1 + 2) ** 2) / (2 * 5.0**2))  # 1 px to one cell, 2 to the other
    np.testing.assert_allclose(weights[:, 30:32], balance_membrane + gap, rtol=1e-5)
    np.testing.assert_allclose(weights[classes == 0], balance_cell, rtol=1e-5)


@pytest.mark.parametrize("base_used", [True, False])
def test_fine_tuning_keeps_the_loss_the_base_was_trained_with(base_used):
    def border_weights_of(result):
        return result.bundle.config["training"]["history"][-1]["settings"]["border_weights"]

    fresh = tiny_bundle()
    _, result = run(iter_finetune(fresh, samples(1), replace(QUICK, steps=2)))
    assert border_weights_of(result) is False  # a model without a training record
    base = tiny_bundle()
    base.config["training"] = {"history": [{"settings": {"border_weights": base_used}}]}
    _, result = run(iter_finetune(base, samples(1), replace(QUICK, steps=2)))
    assert border_weights_of(result) is base_used
    told = replace(QUICK, steps=2, border_weights=not base_used)
    _, result = run(iter_finetune(base, samples(1), told))
    assert border_weights_of(result) is (not base_used)


def _with_replay(bundle, n=4):
    from napari_unet.core.bundle import ReplaySet

    pairs = [disks((64, 64), seed=20 + i) for i in range(n)]
    images = np.stack([np.clip(p[0] * 255, 0, 255) for p in pairs]).astype(np.uint8)
    bundle.replay = ReplaySet(images, np.stack([p[1] for p in pairs]).astype(np.uint8), "disks")
    return bundle


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.75])
def test_replay_patches_make_up_their_share_of_batches(fraction):
    config = tiny_bundle().config
    settings = TrainSettings(batch_size=8, replay_fraction=fraction, augment=QUICK.augment)
    own = [training.prepare_sample(s, config, settings) for s in samples(2)]
    replay = [
        training.prepare_sample(s, config, settings)
        for s in _with_replay(tiny_bundle()).replay.samples()
    ]
    for item in replay:  # mark replay pixels so that a batch tells where each patch came from
        item.weights[:] = 0.5
    batches = training.iter_patches(own, settings, 32, 0, seed=3, replay=replay)
    drawn = [bool((w == 0.5).any()) for _ in range(50) for w in next(batches)[2]]
    assert np.mean(drawn) == pytest.approx(fraction, abs=0.06)


def test_fine_tuning_rehearses_the_replay_set_and_records_it():
    base = _with_replay(tiny_bundle())
    _, result = run(iter_finetune(base, samples(1), QUICK))
    run_record = result.bundle.config["training"]["history"][-1]
    assert run_record["replay_patches"] == 4 and run_record["settings"]["replay_fraction"] == 0.25
    assert result.bundle.replay is base.replay
    _, without = run(iter_finetune(base, samples(1), replace(QUICK, replay_fraction=0.0)))
    assert without.bundle.config["training"]["history"][-1]["replay_patches"] == 0
    with pytest.raises(InputError, match="replay fraction"):
        run(iter_finetune(base, samples(1), replace(QUICK, replay_fraction=1.0)))


def _check_score(bundle, patches):
    """Mean AP@0.5 of ``bundle`` on ``patches``, computed here from scratch."""
    from napari_unet.core.metrics import instance_scores

    options = PredictOptions(device="cpu", diameter=bundle.config["object_diameter"])
    return np.mean(
        [
            instance_scores(predict(p.image, bundle, options).labels, p.labels, (0.5,)).at(0.5)
            for p in patches
        ]
    )


def _check_replay():
    """Six disk patches, the last four of them check patches (never rehearsed)."""
    from napari_unet.core.bundle import ReplaySet

    pairs = [disks((64, 64), seed=40 + i) for i in range(6)]
    images = np.stack([np.clip(p[0], 0, 255) for p in pairs]).astype(np.uint8)
    labels = np.stack([p[1] for p in pairs]).astype(np.uint8)
    return ReplaySet(images, labels, "disks", checks=4)


@pytest.mark.parametrize("tolerance", [0.05, None])
def test_a_fine_tune_that_forgets_is_pulled_back_towards_its_base(trained, tolerance):
    """Taught that a plane of disks holds no object, the network forgets the disks of its
    training data; the check patches (never rehearsed) catch it, and the new version keeps only
    as much of the change as stays within the tolerance there (None: the check is off)."""
    _, result = trained
    base = clone_bundle(result.bundle)
    base.replay = _check_replay()
    checks = base.replay.check_samples()
    assert len(checks) == 4 and len(base.replay.samples()) == 2 == base.replay.rehearsed
    before = _check_score(base, checks)
    assert before > 0.5
    erased = [TrainingSample(s.image, np.zeros_like(s.labels), source="erased") for s in samples(2)]
    settings = replace(
        QUICK, steps=30, replay_fraction=0.0, retention_tolerance=tolerance, finetuned_share=1.0
    )  # the check alone: the average with the base comes after it
    _, tuned = run(iter_finetune(base, erased, settings))
    after = _check_score(tuned.bundle, checks)
    record = tuned.bundle.config["training"]["history"][-1]["retention"]
    if tolerance is None:
        assert tuned.retention is None and record is None
        assert after < before - 0.3  # it forgot, and nothing pulled it back
        return
    check = tuned.retention
    assert check.base_score == pytest.approx(before)
    assert check.tuned_score < before - 0.3 and check.share < 1.0
    assert after == pytest.approx(check.kept_score) and after >= before - tolerance
    assert record["share"] == check.share and record["patches"] == 4


def test_the_retention_check_judges_the_trained_weights_before_the_average(trained, monkeypatch):
    base = clone_bundle(trained[1].bundle)
    base.replay = _check_replay()
    settings = replace(QUICK, replay_fraction=0.0)
    whole = replace(settings, finetuned_share=1.0, retention_tolerance=None)
    trained_alone = run(iter_finetune(base, samples(2), whole))
    judged = []
    check = training.pull_back

    def spy(network, *args):
        judged.append(network_state(network))
        return check(network, *args)

    monkeypatch.setattr(training, "pull_back", spy)
    run(iter_finetune(base, samples(2), settings))  # the default average for a trained base
    for key, value in network_state(trained_alone[1].bundle.network).items():
        torch.testing.assert_close(judged[0][key], value)


def test_a_channel_chosen_for_the_users_image_does_not_apply_to_the_check_patches():
    from napari_unet.core.bundle import ReplaySet

    base = _with_replay(tiny_bundle(), n=3)
    base.replay = ReplaySet(base.replay.images, base.replay.labels, "disks", checks=2)
    image, labels = disks((96, 96), seed=3)
    two_channels = np.stack([np.zeros_like(image), image], axis=-1)
    sample = TrainingSample(two_channels, labels, None, "YXC", "second channel")
    _, result = run(iter_finetune(base, [sample], replace(QUICK, steps=2, channel=1)))
    assert result.retention is not None and result.retention.patches == 2
    # the history counts the rehearsed patches only
    assert result.bundle.config["training"]["history"][-1]["replay_patches"] == 1


def test_versions_are_compared_with_the_options_the_user_segmented_with(trained):
    _, result = trained
    good = result.bundle
    _, plain = run(iter_finetune(good, samples(2, seed=9), QUICK))
    assert plain.comparison.base_score > 0.3
    nothing_kept = PredictOptions(min_size=10**6)  # every object is "too small"
    _, strict = run(iter_finetune(good, samples(2, seed=9), QUICK, predict_options=nothing_kept))
    assert strict.comparison.base_score == 0.0 and strict.comparison.new_score == 0.0


@pytest.mark.parametrize("zoom", [0.5, 2.0])
def test_zoomed_patches_show_objects_at_another_size_with_usual_boundaries(zoom):
    """A zoom resizes the labels, then builds the target: boundaries keep their width."""
    from napari_unet.core.augment import AugmentSettings

    image, labels = disks((256, 256), n=10, radius=(10, 12), seed=11)
    sample = TrainingSample(image.astype(np.float32), labels, None, "YX", "disks")
    plain = AugmentSettings(flips=False, elastic=False, intensity=False)
    settings = TrainSettings(batch_size=1, augment=replace(plain, zoom=(zoom, zoom)))
    item = training.prepare_sample(sample, tiny_bundle().config, settings)
    batches = training.iter_patches([item], settings, 96, 0, seed=1)
    shown = np.zeros(3, np.int64)
    for _ in range(30):
        x, target, _ = next(batches)
        shown += np.bincount(target[0][target[0] != IGNORE].ravel(), minlength=3)
    interior, boundary = np.bincount(training_target(labels, None, "instances").ravel())[1:3]
    # objects are zoom x larger: the interior/boundary pixel ratio grows about as the zoom
    ratio = (shown[1] / max(1, shown[2])) / (interior / boundary)
    assert ratio == pytest.approx(zoom, rel=0.35)
    assert x.shape == (1, 1, 96, 96)


def test_training_planes_are_brought_to_the_models_object_size():
    """Objects 3x the model's size are trained on at its size, as prediction would see them."""
    from napari_unet.core.diameter import labels_diameter

    config = tiny_bundle().config  # objects of 14 px
    image, labels = disks((240, 240), n=10, radius=(20, 22), seed=12)
    factors: dict[str, float] = {}
    sample = TrainingSample(image, labels, labels > 0, "YX", "plane A")
    scaled = training.at_model_scale(sample, config, factors)
    assert scaled.labels.shape == scaled.image.shape == scaled.known.shape
    assert labels_diameter([scaled.labels]).diameter == pytest.approx(14, rel=0.2)
    assert set(np.unique(scaled.labels)) <= set(np.unique(labels))  # ids kept
    # the same plane corrected again (one object erased) keeps the scale it was given
    again = TrainingSample(image, np.where(labels == 1, 0, labels), None, "YX", "plane A")
    assert training.at_model_scale(again, config, factors).labels.shape == scaled.labels.shape
    # a plane whose only object fills it has no measurable size: left as it is
    whole = TrainingSample(image, np.ones_like(labels), None, "YX", "plane B")
    assert training.at_model_scale(whole, config, factors) is whole
    semantic = tiny_bundle("semantic").config
    assert training.at_model_scale(sample, semantic, {}) is sample


def test_held_out_labels_without_objects_give_no_scores():
    """Held-out planes with no object would score both versions 1.00 for finding nothing:
    no curve dots, and a verdict without scores."""
    empty = [
        TrainingSample(image, np.zeros_like(labels), source=f"empty{i}")
        for i, (image, labels) in enumerate(disks((96, 96), seed=i) for i in range(4))
    ]
    steps, result = run(iter_finetune(tiny_bundle(), empty, replace(QUICK, steps=8)))
    assert result.comparison.n_items == 0
    assert [s.val_score for s in steps] == [None] * 8
    assert steps[0].initial_score is None
    text = result.comparison.describe("a", "b")
    assert text.endswith("the held-out part of your labels holds no object.")
    assert "1.00" not in text and "0.00" not in text

from dataclasses import replace

import numpy as np
import pytest

from napari_unet.core.errors import InputError
from napari_unet.core.generators import run_to_end
from napari_unet.core.inference import PredictOptions, iter_predict, predict
from napari_unet.core.io import Stack
from napari_unet.core.metrics import instance_scores
from napari_unet.core.postprocess import instance_labels, link_to_previous
from napari_unet.core.registry import load_bundle
from tests.conftest import tiny_bundle
from tests.synthetic import balls, disks

FAST = PredictOptions(tile_size=64, device="cpu", precision="fp32")


@pytest.mark.parametrize(
    ("shape", "axes", "labels_shape"),
    [
        ((40, 50), "YX", (40, 50)),
        ((3, 40, 50), "ZYX", (3, 40, 50)),
        ((2, 3, 40, 50), "TZYX", (2, 3, 40, 50)),
        ((40, 50, 3), "YXS", (40, 50)),
        ((3, 2, 40, 50), "ZCYX", (3, 40, 50)),
        ((2, 40, 50), "IYX", (2, 40, 50)),
    ],
)
def test_shapes_and_axes(instance_bundle, shape, axes, labels_shape):
    data = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    options = FAST if "C" not in axes else PredictOptions(tile_size=64, device="cpu", channel=1)
    result = predict(Stack(data, axes), instance_bundle, options)
    assert result.labels.shape == labels_shape
    assert result.labels.dtype == np.uint32
    assert result.axes == axes.replace("C", "").replace("S", "")


def test_multichannel_needs_a_channel(instance_bundle):
    stack = Stack(np.zeros((2, 32, 32), np.uint16), "CYX")
    with pytest.raises(InputError, match="choose one channel"):
        predict(stack, instance_bundle, FAST)
    with pytest.raises(InputError, match="does not exist"):
        predict(stack, instance_bundle, PredictOptions(channel=5))


def test_semantic_model_cannot_give_instances(semantic_bundle):
    with pytest.raises(InputError, match="semantic"):
        predict(np.zeros((32, 32)), semantic_bundle, PredictOptions(mode="instances"))
    result = predict(np.zeros((32, 32)), semantic_bundle, FAST)
    assert result.mode == "semantic" and result.labels.max() <= 1


@pytest.mark.parametrize(
    "data", [np.zeros((20, 20)), np.full((9, 9), np.nan), np.ones((1, 1)), np.ones((1, 40))]
)
def test_degenerate_images(instance_bundle, data):
    result = predict(data, instance_bundle, FAST)
    assert result.labels.shape == data.shape


def test_stop_at_any_yield(instance_bundle):
    image = np.random.default_rng(0).random((3, 100, 100)).astype(np.float32)
    total = sum(1 for _ in iter_predict(image, instance_bundle, FAST, axes="ZYX"))
    assert total > 5
    for k in range(total):
        generator = iter_predict(image, instance_bundle, FAST, axes="ZYX")
        for _ in range(k + 1):
            progress = next(generator)
        assert progress.done <= progress.total
        generator.close()  # the consumer stops: no error, nothing left running


def _oracle_predictor(truth_planes):
    """A predictor that 'knows' the answer: returns one-hot classes of the current plane."""
    from napari_unet.core.targets import instance_classes

    state = {"plane": 0}
    classes = [instance_classes(p) for p in truth_planes]

    def predictor(batch):
        # the tiles are mirrored-padded copies of the normalised image, which equals the classes / 2
        return np.stack(
            [
                np.stack([(np.rint(t[0] * 2) == k).astype(np.float32) for k in range(3)])
                for t in batch
            ]
        )

    return predictor, classes, state


def test_instances_and_z_linking_with_oracle(instance_bundle):
    from napari_unet.core.targets import instance_classes

    truth = balls((6, 64, 64), n=5, seed=3)
    image = np.stack([instance_classes(p).astype(np.float32) for p in truth])  # 0, 1, 2
    bundle = tiny_bundle()
    bundle.config["normalization"] = {"low": 0.0, "high": 100.0}
    image[:, 0, 0] = 0.0
    image[:, -1, -1] = 2.0  # fixes the normalisation range to [0, 2]
    predictor, _, _ = _oracle_predictor(truth)
    options = PredictOptions(tile_size=64, overlap=0.25, min_size=3, link_z=True, blending="none")
    result = predict_with(image, bundle, options, predictor)
    from napari_unet.core.postprocess import remove_small

    for z in range(
        truth.shape[0]
    ):  # slivers at the poles of the balls are too thin to have an interior
        assert (
            instance_scores(remove_small(result.labels[z], 20), remove_small(truth[z], 20)).at(0.5)
            == 1.0
        )
    for ball in range(1, truth.max() + 1):
        ids = np.unique(result.labels[truth == ball])
        ids = ids[ids > 0]
        assert len(ids) == 1, f"ball {ball} got ids {ids} through Z"
    unlinked = predict_with(
        image,
        bundle,
        PredictOptions(tile_size=64, overlap=0.25, min_size=3, blending="none", link_z=False),
        predictor,
    )
    assert len(np.unique(unlinked.labels)) > len(np.unique(result.labels))
    assert PredictOptions().link_z  # a z-stack's objects are 3D by default


def predict_with(image, bundle, options, predictor):
    return run_to_end(iter_predict(image, bundle, options, axes="ZYX", predictor=predictor))


def test_touching_objects_are_separated():
    _, labels = disks((96, 96), n=10, touching=True, seed=5)
    from napari_unet.core.targets import instance_classes

    classes = instance_classes(labels)
    probabilities = np.stack([(classes == k).astype(np.float32) for k in range(3)])
    result = instance_labels(probabilities, min_size=3)
    assert instance_scores(result, labels).at(0.5) >= 0.9


def test_link_to_previous_keeps_ids():
    a = np.zeros((10, 10), np.uint32)
    a[1:4, 1:4] = 7
    b = np.zeros_like(a)
    b[1:4, 2:5] = 1
    b[6:9, 6:9] = 2
    linked, next_id = link_to_previous(a, b, 8)
    assert linked[2, 3] == 7 and linked[7, 7] == 8 and next_id == 9


def test_diameter_rescales_and_maps_back(instance_bundle):
    image = np.random.default_rng(0).random((60, 70)).astype(np.float32)
    result = predict(
        image, instance_bundle, PredictOptions(diameter=28.0, tile_size=64, device="cpu")
    )
    assert result.labels.shape == (60, 70)
    assert result.stats["scale_factor"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="object diameter must be in"):
        predict(image, instance_bundle, PredictOptions(diameter=-1))


def test_valid_padding_model_predicts_full_size():
    bundle = tiny_bundle(padding="valid")
    result = predict(
        np.random.default_rng(0).random((50, 61)),
        bundle,
        PredictOptions(tile_size=96, device="cpu"),
    )
    assert result.labels.shape == (50, 61)


def test_object_count_in_stats(instance_bundle):
    image, _ = disks((96, 96), seed=1)
    result = predict(np.stack([image, image]), instance_bundle, FAST, axes="ZYX")
    assert result.stats["objects"] == len(np.unique(result.labels)) - 1


def test_each_plane_is_cut_at_the_level_its_own_probabilities_call_for(instance_bundle):
    """Of two planes of disks, the network is sure of the first (interior 0.97) and not of the
    second (0.65): the first is cut at the higher level, the second at 0.5, where its dim
    disks exist; a level the user gives holds for both."""
    from napari_unet.core.seed_level import DEFAULT_LEVEL, SURE_LEVEL

    image, truth = disks((64, 64), seed=2)
    calls = []

    def predictor(batch):
        confidence = 0.97 if not calls else 0.65
        calls.append(len(batch))
        inside = (batch[:, 0] > 0.5).astype(np.float32)
        interior = confidence * inside
        boundary = 0.98 * inside - interior
        return np.stack([1.0 - interior - boundary, interior, boundary], axis=1)

    options = PredictOptions(
        tile_size=64, overlap=0.0, blending="none", diameter=20.0, threshold=None
    )
    stack = np.stack([image, image])
    result = run_to_end(
        iter_predict(stack, instance_bundle, options, axes="ZYX", predictor=predictor)
    )
    assert len(calls) == 2  # one tile per plane, in order
    assert [p.level for p in result.stats["levels"]] == [SURE_LEVEL, DEFAULT_LEVEL]
    assert result.stats["levels"][0].sure > 0.9 and result.stats["levels"][1].sure == 0.0
    assert result.labels[1].max() > 0  # at the higher level the dim plane would be empty
    calls.clear()
    given = replace(options, threshold=0.6, link_z=False)
    result = run_to_end(
        iter_predict(stack, instance_bundle, given, axes="ZYX", predictor=predictor)
    )
    assert [(p.level, p.sure) for p in result.stats["levels"]] == [(0.6, None), (0.6, None)]


class ShortOfMemory:
    """A predictor that runs out of (simulated) GPU memory above a batch and a tile size.

    Its probabilities depend on each pixel alone, so any tiling gives the same result.
    """

    def __init__(self, max_batch: int, max_tile: int, device: str = "cuda (bf16)") -> None:
        self.max_batch, self.max_tile, self.device = max_batch, max_tile, device
        self.calls: list[tuple[int, int]] = []

    @property
    def compute(self):
        from types import SimpleNamespace

        return SimpleNamespace(label=self.device)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        self.calls.append((batch.shape[0], batch.shape[-1]))
        if batch.shape[0] > self.max_batch or batch.shape[-1] > self.max_tile:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        interior = 1.0 / (1.0 + np.exp(-4.0 * batch[:, 0]))
        return np.stack([1.0 - interior, interior, np.zeros_like(interior)], axis=1)

    def on_cpu(self) -> "ShortOfMemory":
        return ShortOfMemory(max_batch=64, max_tile=4096, device="cpu (fp32)")


def _oom_image() -> np.ndarray:
    return disks((300, 260), n=25, seed=4)[0]


def test_out_of_memory_steps_down_batch_then_tile(instance_bundle):
    image = _oom_image()
    options = PredictOptions(tile_size=256, batch_size=4, device="cpu", precision="fp32")
    reference = predict(image, instance_bundle, options, predictor=ShortOfMemory(64, 4096))
    short = ShortOfMemory(max_batch=1, max_tile=128)
    generator = iter_predict(image, instance_bundle, options, predictor=short)
    progress_seen = []
    result = run_to_end(generator, progress_seen.append)
    assert all(p.done <= p.total for p in progress_seen)
    notices = [p.notice for p in progress_seen if p.notice]
    assert notices == [
        "out of memory on cuda (bf16): retrying with 2 tile(s) per batch",
        "out of memory on cuda (bf16): retrying with 1 tile(s) per batch",
        "out of memory on cuda (bf16): retrying with 128-pixel tiles",
    ]
    assert result.stats["memory_fallbacks"] == notices
    assert result.stats["tile_size"] == 128 and result.stats["batch_size"] == 1
    assert result.compute == "cuda (bf16)"
    np.testing.assert_array_equal(result.labels, reference.labels)


def test_out_of_memory_falls_back_to_the_cpu(instance_bundle):
    image = _oom_image()
    options = PredictOptions(tile_size=256, batch_size=2, device="cpu", precision="fp32")
    reference = predict(image, instance_bundle, options, predictor=ShortOfMemory(64, 4096))
    result = predict(image, instance_bundle, options, predictor=ShortOfMemory(0, 0))
    assert result.compute == "cpu (fp32)"
    assert result.stats["memory_fallbacks"][-1].endswith("continuing on the CPU (slower)")
    np.testing.assert_array_equal(result.labels, reference.labels)


def test_out_of_memory_everywhere_is_a_clear_error(instance_bundle):
    from napari_unet.core.errors import EngineError

    short = ShortOfMemory(0, 0, device="cpu (fp32)")
    with pytest.raises(EngineError, match="out of memory on cpu .* even with one 128-pixel tile"):
        predict(_oom_image(), instance_bundle, PredictOptions(tile_size=256), predictor=short)


@pytest.mark.parametrize("size", [2048, 3000, 4096])
def test_default_tiling_processes_little_more_than_the_image(size):
    def background(batch):
        probabilities = np.zeros((batch.shape[0], 3, *batch.shape[2:]), np.float32)
        probabilities[:, 0] = 1.0
        return probabilities

    image = np.zeros((size, size), np.uint8)
    defaults = PredictOptions(device="cpu")
    result = predict(image, load_bundle("nuclei"), defaults, predictor=background)
    assert result.stats["processed_pixel_ratio"] < 1.25
    assert result.stats["tile_size"] <= defaults.tile_size


def test_cudnn_benchmark_is_set_only_during_the_call():
    import torch

    from napari_unet.core.inference import _cudnn_benchmark

    torch.backends.cudnn.benchmark = False
    with _cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.benchmark
    with _cudnn_benchmark(False):
        assert not torch.backends.cudnn.benchmark

"""Distributed prediction on a LocalCluster of 2 worker processes: the same labels as the
single-process engine, through faces and corners, a killed worker, a failing block, resume."""

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

pytest.importorskip("distributed")

from napari_unet.core.bundle import save_bundle  # noqa: E402
from napari_unet.core.distributed import (  # noqa: E402
    connect,
    discard_work,
    iter_predict_blocks,
    plan_blocks,
    work_folder,
)
from napari_unet.core.errors import EngineError, InputError  # noqa: E402
from napari_unet.core.generators import run_to_end  # noqa: E402
from napari_unet.core.inference import iter_predict  # noqa: E402
from napari_unet.core.io import Stack  # noqa: E402
from napari_unet.core.metrics import match_objects  # noqa: E402
from napari_unet.core.options import PredictOptions  # noqa: E402
from napari_unet.core.registry import resolve_model  # noqa: E402
from napari_unet.core.targets import instance_classes  # noqa: E402
from tests.conftest import tiny_bundle  # noqa: E402

BLOCK = 64
OPTIONS = PredictOptions(
    tile_size=64,
    overlap=0.25,
    min_size=3,
    blending="none",
    diameter=16.0,
    threshold=None,  # "auto": one level for every block, chosen on a window
    device="cpu",
    precision="fp32",
)


class SmoothOracle:
    """A predictor of receptive field 1 pixel: the classes coded in the image (0, 1, 2 after
    normalisation to [0, 1] x 2), one-hot, averaged over 3 x 3 pixels. Optionally slow, and
    failing on tiles that hold the outlier pixel (counting its attempts in a file)."""

    def __init__(self, delay: float = 0.0, attempts: str | None = None) -> None:
        self.delay, self.attempts = delay, attempts

    def __repr__(self) -> str:  # part of the run's plan: stable across runs
        return f"SmoothOracle({self.delay}, {self.attempts})"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.attempts and batch.max() > 10:
            with open(self.attempts, "a") as handle:
                handle.write("x")
            raise ValueError("outlier pixel")
        time.sleep(self.delay)
        classes = np.rint(np.clip(batch[:, 0], 0, 1) * 2)
        out = np.stack([(classes == k).astype(np.float32) for k in range(3)], axis=1)
        return ndi.uniform_filter(out, size=(1, 1, 3, 3), mode="nearest")


def _volume() -> np.ndarray:
    """(3, 192, 256) labels: balls on a grid, some on block faces and corners, some pairs
    touching across a face."""
    labels = np.zeros((3, 192, 256), np.uint16)
    zz, yy, xx = np.mgrid[:3, :192, :256]
    centres = [(64, 64), (128, 192), (64, 150), (100, 128), (30, 20), (160, 40), (150, 100)]
    centres += [(20, 120), (20, 137)]  # touching, either side of the face at column 128
    centres += [(120, 60), (120, 77)]
    for k, (cy, cx) in enumerate(centres, start=1):
        radius = 8 + (k % 3)
        ball = (zz - 1) ** 2 * 9 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        labels[ball & (labels == 0)] = k
    return labels


def _image(labels: np.ndarray) -> np.ndarray:
    image = np.stack([instance_classes(p).astype(np.float32) for p in labels])
    image[:, 0, 0], image[:, -1, -1] = 0.0, 2.0  # every plane's range is [0, 2]
    return image


def _bundle_bytes(tmp_path: Path, high: float = 100.0) -> tuple[object, bytes]:
    bundle = tiny_bundle()
    bundle.config["normalization"] = {"low": 0.0, "high": high}
    bundle.config["object_diameter"] = 16.0
    path = save_bundle(bundle, tmp_path / "oracle.safetensors")
    return bundle, path.read_bytes()


def _same_up_to_relabelling(a: np.ndarray, b: np.ndarray) -> bool:
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.fixture(scope="module")
def client():
    with connect("local", workers=2) as (client, _):
        yield client


def _reference(image, bundle, options, predictor):
    return run_to_end(iter_predict(Stack(image, "ZYX"), bundle, options, predictor=predictor))


@pytest.mark.parametrize(
    ("lazy", "z_block"),
    [(False, None), (True, None), (False, 2)],
    ids=["in memory", "dask array", "Z split"],
)
def test_blocks_give_the_single_process_labels(client, tmp_path, monkeypatch, lazy, z_block):
    import dask.array as da

    from napari_unet.core import distributed

    if lazy:  # the workers measure the plane percentiles of a large lazy image
        monkeypatch.setattr(distributed, "CLIENT_READ_BYTES", 0)

    labels = _volume()
    image = _image(labels)
    bundle, model = _bundle_bytes(tmp_path)
    single = _reference(image, bundle, OPTIONS, SmoothOracle())
    reference, reference_levels = single.labels, {p.level for p in single.stats["levels"]}
    assert len(reference_levels) == 1  # every plane alike: one level can give the same labels
    blocks = plan_blocks((3, 192, 256), BLOCK, 0)
    assert len(blocks) == 12
    # objects cross faces and corners, and the reference found them all
    assert len(np.unique(reference)) - 1 == labels.max()
    cut = [
        k
        for k in range(1, labels.max() + 1)
        if len({b.grid for b in blocks if (labels[:, b.core[1], b.core[2]] == k).any()}) > 1
    ]
    assert len(cut) >= 6
    output = tmp_path / "out_labels.ome.zarr"
    result = run_to_end(
        iter_predict_blocks(
            Stack(da.from_array(image, chunks=(3, 50, 50)) if lazy else image, "ZYX"),
            model,
            OPTIONS,
            client,
            output,
            block_size=BLOCK,
            z_block=z_block,
            predictor=SmoothOracle(),
        )
    )
    labels_out = result.labels.compute()
    assert labels_out.shape == reference.shape and result.axes == "ZYX"
    assert _same_up_to_relabelling(reference, labels_out)
    assert result.stats["objects"] == labels.max()
    assert result.stats["blocks"] == (12 if z_block is None else 24)
    assert result.stats["halo"] >= 2 * 16
    # one level for every block, chosen on a window as the single process chooses per plane
    (level,) = result.stats["levels"]
    assert level.sure is not None and level.level == reference_levels.pop()
    discard_work(output)
    assert not work_folder(output).exists()


def test_finished_blocks_are_shown_before_the_merge(client, tmp_path):
    """show_blocks: each finished block's labels come with its progress; together they tile
    the image, and they are the final labels before objects cut by faces are joined."""
    from napari_unet.core.distributed import BlockLabels

    image = _image(_volume())[:, :, :192]
    _, model = _bundle_bytes(tmp_path)
    shown = np.zeros(image.shape, np.int64)
    covered = np.zeros(image.shape, np.int64)
    generator = iter_predict_blocks(
        Stack(image, "ZYX"),
        model,
        OPTIONS,
        client,
        tmp_path / "s_labels.ome.zarr",
        block_size=BLOCK,
        predictor=SmoothOracle(),
        show_blocks=True,
    )
    seen = []
    try:
        while True:
            progress = next(generator)
            if isinstance(progress, BlockLabels):
                seen.append(progress.done)
                shown[progress.where] = progress.labels
                covered[progress.where] += 1
    except StopIteration as finished:
        result = finished.value
    final = result.labels.compute()
    assert seen == list(range(1, 10)) and (covered == 1).all()
    assert np.array_equal(shown > 0, final > 0)
    # every id shown is part of one final object, and some final objects were cut in two
    pairs = np.unique(np.stack([shown[shown > 0], final[final > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1]
    assert len(np.unique(pairs[1])) < pairs.shape[1]


def test_every_block_uses_the_colour_input_decided_on_the_whole_image(client, tmp_path):
    """Objects in green, and a corner without objects where red is noisy: on its own, the
    corner's block would pick red and find objects in its noise; decided once on the whole
    image, every block uses green, as the single process does."""
    labels = _volume()
    green = _image(labels) * 50.0  # classes 0, 1, 2 -> 0, 50, 100
    red = np.zeros_like(green)
    red[:, :40, 210:] = np.random.default_rng(0).uniform(0, 60, (3, 40, 46))
    image = np.stack([red, green, np.zeros_like(green)], axis=-1)  # ZYXS
    bundle, model = _bundle_bytes(tmp_path)
    reference = run_to_end(
        iter_predict(Stack(image, "ZYXS"), bundle, OPTIONS, predictor=SmoothOracle())
    )
    assert "channel 1 (green" in reference.stats["colour_input"]
    result = run_to_end(
        iter_predict_blocks(
            Stack(image, "ZYXS"),
            model,
            OPTIONS,
            client,
            tmp_path / "rgb_labels.ome.zarr",
            block_size=BLOCK,
            predictor=SmoothOracle(),
        )
    )
    assert result.stats["colour_input"] == reference.stats["colour_input"]
    assert _same_up_to_relabelling(reference.labels, result.labels.compute())
    assert result.stats["objects"] == labels.max()


def test_a_killed_worker_loses_nothing(client, tmp_path):
    labels = _volume()
    image = _image(labels)
    bundle, model = _bundle_bytes(tmp_path)
    reference = _reference(image, bundle, OPTIONS, SmoothOracle()).labels
    generator = iter_predict_blocks(
        Stack(image, "ZYX"),
        model,
        OPTIONS,
        client,
        tmp_path / "k_labels.ome.zarr",
        block_size=BLOCK,
        predictor=SmoothOracle(delay=0.1),
    )
    killed = False
    try:
        while True:
            progress = next(generator)
            if not killed and progress.stage == "blocks" and 1 <= progress.done < progress.total:
                pid = next(iter(client.run(os.getpid).values()))
                os.kill(pid, signal.SIGKILL)
                killed = True
    except StopIteration as finished:
        result = finished.value
    assert killed
    assert _same_up_to_relabelling(reference, result.labels.compute())


def test_a_block_failing_twice_fails_the_run_with_its_place(client, tmp_path):
    labels = _volume()
    image = _image(labels)
    image[1, 40, 40] = 1e6  # far from the other blocks' halos at block size 128
    _, model = _bundle_bytes(tmp_path, high=99.9)  # the outlier stays far above 1
    attempts = tmp_path / "attempts"
    bad = SmoothOracle(attempts=str(attempts))
    options = dataclasses.replace(
        OPTIONS, threshold=0.5
    )  # given: no look at a window before the blocks
    with pytest.raises(
        EngineError, match=r"block \(0, 0, 0\): rows 0-127, columns 0-127 failed twice"
    ):
        run_to_end(
            iter_predict_blocks(
                Stack(image, "ZYX"),
                model,
                options,
                client,
                tmp_path / "f_labels.ome.zarr",
                block_size=128,
                predictor=bad,
            )
        )
    assert attempts.read_text() == "xx"


def test_a_resumed_run_skips_finished_blocks(client, tmp_path):
    labels = _volume()
    image = _image(labels)
    bundle, model = _bundle_bytes(tmp_path)
    reference = _reference(image, bundle, OPTIONS, SmoothOracle()).labels
    output = tmp_path / "r_labels.ome.zarr"

    def run():
        return iter_predict_blocks(
            Stack(image, "ZYX"),
            model,
            OPTIONS,
            client,
            output,
            block_size=BLOCK,
            predictor=SmoothOracle(),
        )

    first = run()
    for progress in first:
        if progress.stage == "blocks" and progress.done >= 4:
            break
    first.close()  # the run is stopped
    result = run_to_end(run())
    assert result.stats["resumed"] >= 4
    assert _same_up_to_relabelling(reference, result.labels.compute())


def test_the_real_network_matches_the_single_process_run(client, tmp_path):
    from napari_unet.core.io import read_image
    from napari_unet.core.registry import load_bundle

    stack = read_image(Path(__file__).parents[1] / "sample_data" / "nuclei_2d.tif")
    bundle = load_bundle("nuclei")
    options = PredictOptions(tile_size=128, overlap=0.25, device="cpu", precision="fp32")
    result = run_to_end(
        iter_predict_blocks(
            stack,
            resolve_model("nuclei").read_bytes(),
            options,
            client,
            tmp_path / "n_labels.ome.zarr",
            block_size=128,
        )
    )
    labels = result.labels.compute()
    # the diameter the blocks shared (estimated once on the whole image) given to one process
    assert result.stats["diameter"] > 0
    options = dataclasses.replace(options, diameter=result.stats["diameter"])
    reference = run_to_end(iter_predict(stack, bundle, options)).labels
    matched = match_objects(reference, labels, 0.9)
    n_reference = len(np.unique(reference)) - 1
    assert result.stats["blocks"] >= 4
    assert len(matched) >= 0.99 * n_reference
    # no object is split at a face: each reference object is mostly one object here
    for k in np.unique(reference)[1:]:
        ids, counts = np.unique(labels[reference == k], return_counts=True)
        assert counts[ids > 0].max(initial=0) >= 0.9 * counts.sum(), k


def test_blocks_are_at_least_a_tile(client, tmp_path):
    _, model = _bundle_bytes(tmp_path)
    with pytest.raises(InputError, match="smaller than the tile size 64"):
        next(
            iter_predict_blocks(
                Stack(np.zeros((64, 64)), "YX"),
                model,
                OPTIONS,
                client,
                tmp_path / "o",
                block_size=32,
            )
        )


def test_z_is_split_only_when_a_block_would_not_fit():
    from napari_unet.core.distributed import default_z_block

    bundle = tiny_bundle()
    stack = Stack(np.zeros((64, 8, 8), np.uint16), "ZYX")
    plenty, tight = 2**40, 200 * 2**20
    assert default_z_block(stack, bundle, OPTIONS, 512, plenty) is None
    planes = default_z_block(stack, bundle, OPTIONS, 512, tight)
    assert planes is not None and 1 <= planes < 64
    assert default_z_block(Stack(np.zeros((8, 8)), "YX"), bundle, OPTIONS, 512, tight) is None


@pytest.mark.parametrize("tile", [256, 1024])
def test_a_default_block_window_is_tiled_with_whole_tiles(tile):
    """The window of an inner block (the block and a halo each side) is tiled as the single
    process tiles a plane, with tiles of the full size and no core wasted beyond it."""
    from napari_unet.core.distributed import DEFAULT_WINDOW, block_halo, default_block_size
    from napari_unet.core.inference import context_margin
    from napari_unet.core.registry import load_bundle
    from napari_unet.core.tiling import plan_axis

    bundle = load_bundle("nuclei")
    network = bundle.network
    options = PredictOptions(tile_size=tile, diameter=bundle.config["object_diameter"])
    stack = Stack(np.zeros((2, 8, 8), np.uint16), "ZYX")
    block = default_block_size(stack, bundle, options, None)
    window = block + 2 * block_halo(bundle, options)
    margin = context_margin(tile, options.overlap, network)
    crop = network.crop_per_side(tile)
    plan = plan_axis(
        window, tile, margin, crop=crop, fit=network.fit_input_size, stride=network.size_multiple
    )
    assert block >= tile and window <= DEFAULT_WINDOW
    assert plan.tile == tile and len(plan.starts) * (tile - 2 * plan.margin) == window
    assert default_block_size(stack, bundle, options, 2**20) == tile  # nothing fits: the least


def test_workers_need_a_local_cluster():
    with pytest.raises(InputError, match="--scheduler local"), connect("tcp://x:1", workers=2):
        pass


def test_cli_on_an_existing_scheduler(client, tmp_path, capsys):
    import zarr
    from ome_zarr_models.v04 import ImageLabel

    from napari_unet.cli import main
    from napari_unet.core.io import read_image, write_labels

    model = save_bundle(tiny_bundle(), tmp_path / "tiny.safetensors")
    images = []
    for name in ("a", "b"):
        images.append(tmp_path / f"{name}.tif")
        write_labels(images[-1], _volume()[:, :96, :130], axes="ZYX", scale={"Y": 0.5, "X": 0.5})
    common = ["--model", str(model), "--tile-size", "64", "--device", "cpu"]
    address = client.scheduler.address
    # one input: blocks, OME-Zarr out
    assert (
        main(
            [
                "predict",
                str(images[0]),
                "-o",
                str(tmp_path / "one"),
                "--scheduler",
                address,
                "--block-size",
                "64",
                "--format",
                "ome-zarr",
                *common,
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "dashboard" in out.err and "6 blocks of 64 px" in out.out
    store = tmp_path / "one" / "a_labels.ome.zarr"
    ImageLabel.from_zarr(zarr.open_group(str(store), mode="r"))
    assert not work_folder(store).exists()
    # several inputs: one task per file
    assert (
        main(
            [
                "predict",
                *map(str, images),
                "-o",
                str(tmp_path / "many"),
                "--scheduler",
                address,
                *common,
            ]
        )
        == 0
    )
    for name in ("a", "b"):
        assert read_image(tmp_path / "many" / f"{name}_labels.tif").data.shape == (3, 96, 130)


def test_a_worker_with_another_version_refuses_the_model():
    from distributed import Client, LocalCluster

    from napari_unet.core.distributed import BundlePlugin

    plugin = BundlePlugin(b"not read", None)
    plugin.version = "0.0.0-other"
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as own,
        pytest.raises(EngineError, match="install the same version on every worker"),
    ):
        own.register_plugin(plugin, name=plugin.name)


def _buffer_is_mapped(nbytes: int = 4 * 2**20) -> bool:
    """Whether glibc serves a buffer of ``nbytes`` with its own mmap (a fresh mapping, page
    faults to fill it) rather than from the heap."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblks
    buffer = np.empty(nbytes, np.uint8)
    mapped = libc.mallinfo2().hblks > before
    del buffer
    return mapped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_workers_serve_large_buffers_from_the_heap(tmp_path):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which pins glibc's mmap threshold at 128 KiB
    (each layer's buffer mapped anew: a block ran ~20% slower than in one process); loading
    the model on a worker puts glibc's adaptive thresholds back."""
    from napari_unet.core.distributed import _load_model

    with connect("local", workers=1) as (fresh, threads):
        assert all(fresh.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values())
        assert all(fresh.run(_buffer_is_mapped).values())  # the nanny's setting, as it is
        _load_model(fresh, resolve_model("nuclei").read_bytes(), threads)
        assert not any(fresh.run(_buffer_is_mapped).values())


@pytest.mark.parametrize("bokeh", [True, False], ids=["with bokeh", "without bokeh"])
def test_the_dashboard_is_named_only_where_it_is_served(client, monkeypatch, bokeh):
    import importlib.util

    from napari_unet.core.distributed import dashboard_notice

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # the local cluster's scheduler runs in this process
        importlib.util,
        "find_spec",
        lambda name, *args: (
            (find_spec("os") if bokeh else None) if name == "bokeh" else find_spec(name, *args)
        ),
    )
    notice = dashboard_notice(client)
    if bokeh:
        assert notice == f"dashboard: {client.dashboard_link}"
    else:
        assert notice.startswith("no dashboard: install bokeh")


def _hold(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_local_worker_runs_one_network_at_a_time_and_lighter_tasks_beside_it():
    from napari_unet.core.distributed import MODEL_SLOT, model_resources

    with connect("local", workers=1) as (fresh, threads):
        (worker,) = fresh.scheduler_info()["workers"].values()
        assert worker["nthreads"] == threads >= 2
        slot = model_resources(fresh)
        assert slot == {MODEL_SLOT: 1}
        networks = [fresh.submit(_hold, 0.5, pure=False, resources=slot) for _ in range(2)]
        light = fresh.submit(_hold, 0.5, pure=False)
        (a0, a1), (b0, b1) = sorted(f.result() for f in networks)
        l0, l1 = light.result()
    assert b0 >= a1  # the second network waited for the first
    assert l0 < a1 and l1 > a0 or l0 < b1 and l1 > b0  # the light task ran beside one


def test_workers_without_the_slot_are_not_asked_for_it():
    from distributed import Client, LocalCluster

    from napari_unet.core.distributed import model_resources

    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as plain,
    ):
        assert model_resources(plain) is None


def test_a_tile_too_small_for_the_grid_still_gets_a_default_block():
    """Tile 32 of the depth-4 `nuclei`: the grid would leave no core, so the tile keeps its
    own margin and the default block is still found (the search once looped for ever)."""
    from napari_unet.core.distributed import default_block_size
    from napari_unet.core.registry import load_bundle

    bundle = load_bundle("nuclei")
    options = PredictOptions(tile_size=32, diameter=bundle.config["object_diameter"])
    stack = Stack(np.zeros((64, 64), np.uint16), "YX")
    assert default_block_size(stack, bundle, options, None) >= 32

"""Distributed prediction against the single-process path, on a stack of real nuclei.

    python benchmarks/distributed.py [--size 4096] [--planes 8] [--blocks 2048 1024]
                                     [--workers 1 2] [--pairs 3] [--device cpu]

Builds a size x size x planes uint16 OME-Zarr stack tiled from the grey DSB 2018 images in
``../shared/data`` (a different arrangement on every plane). For each worker count (a
LocalCluster: 1 worker with all cores in its torch threads, 2 workers sharing them) and each
block size (the default, then each ``--blocks`` size, with tiles no larger than the block) it
runs ``--pairs`` pairs in turn: the single-process path (``iter_predict`` +
``write_labels_zarr``), then the distributed path, both writing OME-Zarr labels. It prints
the seconds, throughput, the ratio distributed / single process pair by pair (median and
range: a shared machine drifts, a pair does not), the halo, the network input pixels against
the single process's (from the tiling plans), the merge's share of the total, and the largest
worker peak resident memory, in all and above the warm worker's (workers restart for every
run).

Both paths get the model's own object diameter, so neither spends time estimating it and
both do the same work. Cluster start-up is not timed (a cluster serves many runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np

# run as a script, this file's name would shadow the `distributed` package: look past its folder
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018_train"
GIB = 2**30


def nuclei_stack(size: int, planes: int, seed: int = 0) -> np.ndarray:
    """(planes, size, size) uint16 mosaic of grey fluorescence DSB 2018 images of 256 x 256."""
    import csv

    import imageio.v3 as iio

    with open(DATA / "image_index.tsv") as handle:
        rows = [
            r
            for r in csv.DictReader(handle, delimiter="\t")
            if r["gray_or_color"] == "gray" and r["height"] == r["width"] == "256"
        ]
    tiles = [  # 8-bit images as 12-bit data (widened first: uint8 * 16 would wrap around)
        np.asarray(iio.imread(DATA / "images" / f"{r['id']}.png"))[..., 0].astype(np.uint16) * 16
        for r in rows
    ]
    rng = np.random.default_rng(seed)
    n = -(-size // 256)
    stack = np.empty((planes, n * 256, n * 256), np.uint16)
    for z in range(planes):
        picks = rng.integers(0, len(tiles), n * n)
        for k, pick in enumerate(picks):
            r, c = divmod(k, n)
            stack[z, r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] = tiles[pick]
    return stack[:, :size, :size]


def write_input(stack: np.ndarray, folder: Path) -> Path:
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    path = folder / "nuclei.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    write_image(
        stack,
        group,
        axes="zyx",
        fmt=FormatV04(),
        scale_factors=[],
        storage_options={"chunks": (1, 1024, 1024)},
    )
    return path


def single_process(source: Path, out: Path, options) -> float:
    from napari_unet.core.generators import run_to_end
    from napari_unet.core.inference import iter_predict
    from napari_unet.core.registry import load_bundle
    from napari_unet.core.zarr_io import read_zarr, write_labels_zarr

    bundle = load_bundle("nuclei")
    start = time.perf_counter()
    with dask.config.set(scheduler="threads"):  # as the CLI without a cluster: no client
        stack = read_zarr(source)
        result = run_to_end(iter_predict(stack, bundle, options))
        write_labels_zarr(out, result.labels, axes=result.axes)
    return time.perf_counter() - start


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _start_sampling(dask_worker) -> None:
    """Sample this worker's resident memory every 20 ms until :func:`_stop_sampling` (the
    run's own peak: ``ru_maxrss`` would also hold the start-up's)."""
    import threading

    import psutil

    process = psutil.Process()
    state = {"peak": process.memory_info().rss, "running": True}

    def sample() -> None:
        while state["running"]:
            state["peak"] = max(state["peak"], process.memory_info().rss)
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    dask_worker.napari_unet_rss = state


def _stop_sampling(dask_worker) -> int:
    state = dask_worker.napari_unet_rss
    state["running"] = False
    return state["peak"]


def agreement(single: Path, blocks: Path) -> float:
    """Share of the single process's objects on the first plane that the distributed run
    has too, at IoU >= 0.9."""
    from napari_unet.core.metrics import match_objects
    from napari_unet.core.zarr_io import read_zarr

    with dask.config.set(scheduler="threads"):
        a, b = (np.asarray(read_zarr(path).data[0]) for path in (single, blocks))
    return len(match_objects(a, b, 0.9)) / max(1, len(np.unique(a)) - 1)


def distributed(
    client, threads: int, source: Path, out: Path, options, block: int | None, single: Path
) -> dict:
    """One timed run on fresh, warmed-up workers: seconds, stats, each worker's peak resident
    memory and how far it rose above the warm start, and the agreement with the single
    process's labels in ``single``."""
    from napari_unet.core.distributed import BundlePlugin, discard_work, iter_predict_blocks
    from napari_unet.core.generators import run_to_end
    from napari_unet.core.registry import resolve_model
    from napari_unet.core.zarr_io import read_zarr, write_labels_zarr

    model = resolve_model("nuclei").read_bytes()
    client.restart()  # fresh processes: peak memory is this run's
    # start-up, not timed: torch and the OME-Zarr reader imported, the model loaded once
    client.run(importlib.import_module, "ome_zarr.reader")
    warm = BundlePlugin(model, threads)
    client.register_plugin(warm, name=warm.name)
    start_rss = client.run(_rss)
    client.run(_start_sampling)
    start = time.perf_counter()
    stack = read_zarr(source)
    result = run_to_end(
        iter_predict_blocks(
            stack, model, options, client, out, block_size=block, torch_threads=threads
        )
    )
    write_labels_zarr(out, result.labels, axes=result.axes)
    seconds = time.perf_counter() - start
    peaks = client.run(_stop_sampling)
    discard_work(out)
    same = agreement(single, out)
    shutil.rmtree(out)
    rise = max(peaks[w] - start_rss[w] for w in peaks)
    return {
        "seconds": seconds,
        "peak": max(peaks.values()),
        "rise": rise,
        "same": same,
        **result.stats,
    }


def network_pixels(shape: tuple[int, int], options, block: int | None, halo: int) -> int:
    """Pixels one plane sends through the network: whole (``block`` None) or as the windows
    of its blocks, each tiled as the single process tiles a plane (at scale 1)."""
    from napari_unet.core.distributed import plan_blocks
    from napari_unet.core.inference import context_margin, nominal_tile
    from napari_unet.core.registry import load_bundle
    from napari_unet.core.tiling import plan_axis

    network = load_bundle("nuclei").network
    tile = nominal_tile(network, options.tile_size)
    margin = context_margin(tile, options.overlap, network)
    crop = network.crop_per_side(tile)

    def through(n: int) -> int:
        plan = plan_axis(
            n, tile, margin, crop=crop, fit=network.fit_input_size, stride=network.size_multiple
        )
        return len(plan.starts) * plan.tile

    if block is None:
        return through(shape[0]) * through(shape[1])
    windows = [b.outer[1:] for b in plan_blocks((1, *shape), block, halo)]
    return sum(through(r.stop - r.start) * through(c.stop - c.start) for r, c in windows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--planes", type=int, default=8)
    parser.add_argument("--blocks", type=int, nargs="*", default=[2048, 1024])
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument(
        "--pairs", type=int, default=1, help="single-process/distributed pairs per row, in turn"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from napari_unet.core.distributed import connect
    from napari_unet.core.options import PredictOptions
    from napari_unet.core.registry import load_bundle

    diameter = load_bundle("nuclei").config["object_diameter"]
    options = PredictOptions(device=args.device, diameter=diameter)
    stack = nuclei_stack(args.size, args.planes)
    megapixels = stack.size / 1e6
    plane = (args.size, args.size)
    whole = network_pixels(plane, options, None, 0)
    print(
        f"stack {args.planes} x {args.size} x {args.size} uint16 ({megapixels:.1f} Mpx), model "
        f"nuclei, device {args.device}, diameter {diameter:.1f} px, {args.pairs} pair(s) per "
        f"row (single process, then distributed), load average {os.getloadavg()[0]:.2f}"
    )
    print(
        "net: network input pixels / single process's; ratio: distributed / single process, "
        "pair by pair, median [min-max]; merge: share of the distributed run; peak: the "
        "largest worker resident memory, rise: above the warm worker; same: the single "
        "process's objects on plane 1 the distributed run has too at IoU >= 0.9 (worst pair)"
    )
    print(
        f"{'run':<27}{'tile':>5}{'blocks':>7}{'block':>6}{'halo':>5}{'net':>6}{'single s':>9}"
        f"{'dist s':>8}{'Mpx/s':>7}{'ratio':>8}{'[min-max]':>14}{'merge':>7}{'peak':>6}"
        f"{'rise':>6}{'same':>7}  GiB"
    )
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        source = write_input(stack, folder)
        out = folder / "labels.ome.zarr"
        single_out = folder / "single_labels.ome.zarr"
        for workers in args.workers:
            with connect("local", workers=workers) as (client, threads):
                for block in [None, *args.blocks]:
                    tile = options.tile_size if block is None else min(options.tile_size, block)
                    run_options = dataclasses.replace(options, tile_size=tile)
                    singles, runs = [], []
                    for _ in range(args.pairs):
                        singles.append(single_process(source, single_out, run_options))
                        runs.append(
                            distributed(
                                client, threads, source, out, run_options, block, single_out
                            )
                        )
                        shutil.rmtree(single_out)
                    ratios = [r["seconds"] / s for r, s in zip(runs, singles, strict=True)]
                    seconds = statistics.median(r["seconds"] for r in runs)
                    r = runs[0]
                    net = network_pixels(plane, run_options, r["block_size"], r["halo"])
                    label = f"{workers} worker x {threads} thread" + (
                        " (default)" if block is None else ""
                    )
                    print(
                        f"{label:<27}{tile:>5}{r['blocks']:>7}{r['block_size']:>6}{r['halo']:>5}"
                        f"{net / whole:>6.3f}{statistics.median(singles):>9.1f}{seconds:>8.1f}"
                        f"{megapixels / seconds:>7.3f}{statistics.median(ratios):>8.3f}"
                        f"   [{min(ratios):.3f}-{max(ratios):.3f}]"
                        f"{statistics.median(x['merge_seconds'] / x['seconds'] for x in runs):>7.1%}"
                        f"{max(x['peak'] for x in runs) / GIB:>6.2f}"
                        f"{max(x['rise'] for x in runs) / GIB:>6.2f}"
                        f"{min(x['same'] for x in runs):>7.1%}"
                        f"  (single: {', '.join(format(t, '.1f') for t in singles)}; "
                        f"distributed: {', '.join(format(x['seconds'], '.1f') for x in runs)}; "
                        f"load {os.getloadavg()[0]:.2f})"
                    )
                    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Distributed prediction against the single-process path, on a stack of real nuclei.

    python benchmarks/distributed.py [--size 4096] [--planes 8] [--blocks 2048 1024 512]
                                     [--workers 1 2] [--device cpu]

Builds a size x size x planes uint16 OME-Zarr stack tiled from the grey DSB 2018 images in
``../shared/data`` (a different arrangement on every plane), then times, each writing
OME-Zarr labels:

* the single-process path (``iter_predict`` + ``write_labels_zarr``);
* the distributed path on a LocalCluster with 1 worker (all cores in its torch threads) and
  with 2 workers (the cores shared), at the default block size and at each ``--blocks`` size
  (with tiles no larger than the block): seconds, throughput, overhead against the single
  process, the halo, the merge's share of the total, and the largest worker peak resident
  memory, in all and above the warm worker's (workers restart for every run).

Both paths get the model's own object diameter, so neither spends time estimating it and
both do the same work. Cluster start-up is not timed (a cluster serves many runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
    tiles = [np.asarray(iio.imread(DATA / "images" / f"{r['id']}.png"))[..., 0] for r in rows]
    rng = np.random.default_rng(seed)
    n = -(-size // 256)
    stack = np.empty((planes, n * 256, n * 256), np.uint16)
    for z in range(planes):
        picks = rng.integers(0, len(tiles), n * n)
        for k, pick in enumerate(picks):
            r, c = divmod(k, n)
            stack[z, r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] = tiles[pick] * 16
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


def distributed(client, threads: int, source: Path, out: Path, options, block: int | None) -> dict:
    """One timed run on fresh, warmed-up workers: seconds, stats, and each worker's peak
    resident memory and how far it rose above the warm start."""
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
    shutil.rmtree(out)
    rise = max(peaks[w] - start_rss[w] for w in peaks)
    return {"seconds": seconds, "peak": max(peaks.values()), "rise": rise, **result.stats}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--planes", type=int, default=8)
    parser.add_argument("--blocks", type=int, nargs="*", default=[1024, 512])
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1, help="runs per row (median shown)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from napari_unet.core.distributed import connect
    from napari_unet.core.options import PredictOptions
    from napari_unet.core.registry import load_bundle

    diameter = load_bundle("nuclei").config["object_diameter"]
    options = PredictOptions(device=args.device, diameter=diameter)
    stack = nuclei_stack(args.size, args.planes)
    megapixels = stack.size / 1e6
    print(
        f"stack {args.planes} x {args.size} x {args.size} uint16 ({megapixels:.1f} Mpx), model "
        f"nuclei, device {args.device}, diameter {diameter:.1f} px, median of {args.repeats}"
    )
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        source = write_input(stack, folder)
        out = folder / "labels.ome.zarr"
        singles = []
        for _ in range(args.repeats):
            singles.append(single_process(source, out, options))
            shutil.rmtree(out)
        single = statistics.median(singles)
        print(
            f"{'run':<26}{'tile':>6}{'blocks':>7}{'block':>7}{'halo':>6}{'s':>8}{'Mpx/s':>8}"
            f"{'overhead':>10}{'merge':>8}{'peak GiB':>10}{'rise GiB':>10}"
        )
        print(
            f"{'single process':<26}{options.tile_size:>6}{'':>7}{'':>7}{'':>6}{single:>8.1f}"
            f"{megapixels / single:>8.3f}   (runs: {', '.join(f'{t:.1f}' for t in singles)})"
        )
        for workers in args.workers:
            with connect("local", workers=workers) as (client, threads):
                for block in [None, *args.blocks]:
                    tile = options.tile_size if block is None else min(options.tile_size, block)
                    run_options = dataclasses.replace(options, tile_size=tile)
                    runs = [
                        distributed(client, threads, source, out, run_options, block)
                        for _ in range(args.repeats)
                    ]
                    seconds = statistics.median(r["seconds"] for r in runs)
                    r = runs[0]
                    label = f"{workers} worker x {threads} thread" + (
                        " (default)" if block is None else ""
                    )
                    print(
                        f"{label:<26}{tile:>6}{r['blocks']:>7}{r['block_size']:>7}{r['halo']:>6}"
                        f"{seconds:>8.1f}{megapixels / seconds:>8.3f}"
                        f"{seconds / single - 1:>+10.1%}"
                        f"{statistics.median(x['merge_seconds'] / x['seconds'] for x in runs):>8.1%}"
                        f"{max(x['peak'] for x in runs) / GIB:>10.2f}"
                        f"{max(x['rise'] for x in runs) / GIB:>10.2f}"
                        f"   (runs: {', '.join(format(x['seconds'], '.1f') for x in runs)})"
                    )
                    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

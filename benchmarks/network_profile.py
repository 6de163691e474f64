"""Where the network time goes: the predictor vs a bare forward pass, and a torch.profiler table.

    python benchmarks/network_profile.py [--device cuda|cpu] [--batches 4 16 64]

For each batch size of 512 x 512 tiles, times the plugin's predictor (upload, forward in the
fast precision, softmax, copy back) and the bare forward pass of the bundled `nuclei` network
on data already on the device, in megapixels per second and TFLOP/s; then prints the
operators that took the most device time in five predictor calls.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

TILE = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16, 64])
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from napari_unet.core.devices import resolve_compute
    from napari_unet.core.inference import NetworkPredictor
    from napari_unet.core.model import fold_batch_norm
    from napari_unet.core.registry import load_bundle

    compute = resolve_compute(args.device)
    cuda = compute.device.type == "cuda"
    network = load_bundle("nuclei").network
    predictor = NetworkPredictor(network, compute)
    bare = fold_batch_norm(network).to(compute.device).to(memory_format=torch.channels_last)
    mflop_per_pixel = 0.104

    def timed(function, repeats: int = 10) -> float:
        for _ in range(3):
            function()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats

    print(f"{compute.label}, tiles {TILE}x{TILE}")
    for batch in args.batches:
        tiles = np.random.default_rng(0).random((batch, 1, TILE, TILE), dtype=np.float32)
        on_device = torch.from_numpy(tiles).to(compute.device)
        on_device = on_device.contiguous(memory_format=torch.channels_last)

        def forward(x=on_device) -> None:
            with torch.inference_mode(), compute.autocast():
                bare(x)

        megapixels = batch * TILE * TILE / 1e6
        full = megapixels / timed(lambda t=tiles: predictor(t))
        only = megapixels / timed(forward)
        print(
            f"batch {batch:3d}: predictor {full:7.1f} MP/s, bare forward {only:7.1f} MP/s "
            f"= {only * mflop_per_pixel:.2f} TFLOP/s"
        )
    tiles = np.random.default_rng(0).random((16, 1, TILE, TILE), dtype=np.float32)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as profiler:
        for _ in range(5):
            predictor(tiles)
    sort = "cuda_time_total" if cuda else "cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort, row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()

"""Post-processing on worker threads vs in line, on a z-stack of real nuclei.

    python benchmarks/stack_pipeline.py [--size 2048] [--planes 8] [--repeats 3] [--device cpu]

Segments a size x size x planes stack (the sample nuclei tiled, shifted from plane to plane)
with the bundled `nuclei` model, once with post-processing in line (``post_workers=0``: each
plane's watershed runs before the next plane's network pass) and once per worker count. Two
predictors:

- network: the real network on ``--device``;
- replay: the network's probabilities recorded once and handed back instantly, which is what
  the pipeline sees behind a GPU far faster than the CPU post-processing.

Variants alternate within each repeat (these machines are noisy); medians are printed, with
labels checked identical to the in-line run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

import numpy as np

from napari_unet.core.devices import resolve_compute
from napari_unet.core.inference import NetworkPredictor, PredictOptions, predict
from napari_unet.core.label_pipeline import auto_workers
from napari_unet.core.registry import load_bundle
from napari_unet.gui.sample_data import nuclei_2d


def make_stack(size: int, planes: int) -> np.ndarray:
    data = nuclei_2d()[0][0]
    reps = (-(-(size + planes * 7) // data.shape[0]), -(-(size + planes * 7) // data.shape[1]))
    tiled = np.tile(data, reps)
    return np.stack([tiled[7 * z : 7 * z + size, 5 * z : 5 * z + size] for z in range(planes)])


class Replay:
    """Records the network's output for every batch, then hands it back without computing."""

    def __init__(self, predictor) -> None:
        self.predictor, self.outputs, self.position = predictor, [], 0

    def record(self, batch: np.ndarray) -> np.ndarray:
        out = self.predictor(batch)
        self.outputs.append(out)
        return out

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.outputs[self.position % len(self.outputs)]
        self.position += 1
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--planes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default: auto)")
    args = parser.parse_args()

    import torch
    from machine import device_name

    stack = make_stack(args.size, args.planes)
    bundle = load_bundle("nuclei")
    options = PredictOptions(device=args.device)
    network = NetworkPredictor(bundle.network, resolve_compute(options.device, options.precision))
    replay = Replay(network)
    reference = predict(stack, bundle, options, axes="ZYX", predictor=replay.record).labels
    workers = args.workers or [auto_workers(args.size * args.size)]
    print(
        f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, device "
        f"{args.device} ({device_name(args.device)}); stack {args.planes} x {args.size} x "
        f"{args.size}; medians of {args.repeats}"
    )
    megapixels = stack.size / 1e6
    print(
        f"\n{'predictor':<9} {'post workers':>12} {'MP/s':>7} {'vs in line':>10} {'same labels':>11}"
    )
    for name, predictor in (("network", network), ("replay", replay)):
        seconds: dict[int, list[float]] = {w: [] for w in [0, *workers]}
        same = True
        for _ in range(args.repeats):
            for count in seconds:
                t0 = time.perf_counter()
                labels = predict(
                    stack,
                    bundle,
                    replace(options, post_workers=count),
                    axes="ZYX",
                    predictor=predictor,
                ).labels
                seconds[count].append(time.perf_counter() - t0)
                same &= bool(np.array_equal(labels, reference))
        serial = statistics.median(seconds[0])
        for count, times in seconds.items():
            median = statistics.median(times)
            print(
                f"{name:<9} {count:>12} {megapixels / median:>7.2f} {serial / median:>9.2f}x {str(same):>11}"
            )


if __name__ == "__main__":
    main()

"""Fine-tuning speed of the bundled `nuclei` network: fp32 vs the fast path, side by side.

    python benchmarks/finetune_speed.py [--device cpu|cuda] [--repeats 2] [--data DIR]
                                        [--one-click-only]

First, the panel's one click: the default fine-tune of a 1024 x 1024 image with 15 corrected
nuclei in the training child process, with the panel's torch thread count (all usable cores: the child is its own process), then its
re-segmentation (target: 3 minutes on 2 CPU cores).

Two 512 x 512 crops of real CTC Fluo-N2DL-HeLa frames with their ground truth (from
../shared/data/ctc_hela, or --data) are the corrected planes; `nuclei` is fine-tuned with the
GUI's one-click schedule (``TrainSettings()``: steps, learning rate, patch and batch size,
validation every 25 steps on 20% of the labelled pixels), once in fp32 and once with the
precision that ``auto`` picks on the device (bf16 autocast on CPUs with native bf16 and on
recent GPUs, fp16 with a gradient scaler on older GPUs). Repeats alternate the precisions.

Printed per precision (medians over repeats): optimiser steps per second (training steps only,
validation excluded), the whole run's wall time, the validation score at its best, and the
time until the validation score stopped improving (the first validation within 0.005 of the
run's best score). Each precision first runs 3 untimed steps (device set-up).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FRAMES = ("t13", "t52")
CROP = 512
PLATEAU_TOLERANCE = 0.005


def load_slices(data: Path) -> list:
    """Two 512 x 512 crops (top-left corner) of real HeLa frames with their labels."""
    from napari_unet.core.io import read_image
    from napari_unet.core.samples import TrainingSample

    folder = data / "ctc_hela"
    if not (folder / "images").is_dir():
        raise SystemExit(f"CTC HeLa frames not found under {folder}; pass --data DIR")
    samples = []
    for frame in FRAMES:
        image = read_image(folder / "images" / f"{frame}.tif").data[:CROP, :CROP]
        labels = read_image(folder / "labels" / f"{frame}.tif").data[:CROP, :CROP]
        samples.append(TrainingSample(image, labels, source=f"ctc_hela/{frame}"))
    return samples


def run_once(
    samples: list, device: str, precision: str, steps: int | None = None
) -> dict[str, float]:
    """One fine-tune with the default schedule (or its first ``steps``); timings and scores."""
    from napari_unet.core.generators import run_to_end
    from napari_unet.core.options import TrainSettings
    from napari_unet.core.registry import load_bundle
    from napari_unet.core.training import iter_finetune

    settings = TrainSettings(device=device, precision=precision)
    if steps is not None:
        settings = TrainSettings(device=device, precision=precision, steps=steps, val_every=steps)
    generator = iter_finetune(load_bundle("nuclei"), samples, settings)
    step_seconds, validations = [], []
    start = time.perf_counter()
    previous = [start]

    def timed(step) -> None:
        now = time.perf_counter()
        if step.val_score is None:  # a pure training step (validation steps also evaluate)
            step_seconds.append(now - previous[0])
        else:
            validations.append((step.step, now - start, step.val_score))
        previous[0] = now

    result = run_to_end(generator, timed)
    wall = time.perf_counter() - start
    best = max(score for _, _, score in validations)
    plateau_step, plateau_time, _ = next(v for v in validations if v[2] >= best - PLATEAU_TOLERANCE)
    return {
        "steps_per_s": 1.0 / statistics.median(step_seconds),
        "wall_s": wall,
        "initial_score": result.comparison.base_score,
        "best_score": best,
        "plateau_step": plateau_step,
        "plateau_s": plateau_time,
    }


def one_click(data: Path, threads: int) -> dict[str, float]:
    """The user's one click on a 1024 x 1024 image, as the panel runs it; wall times in s.

    A HeLa frame mirrored to 1024 x 1024 is segmented with ``nuclei``; the 15 true nuclei that
    the prediction matches worst are painted in from the ground truth (the known-mask as the
    GUI's tracker draws it); then the default fine-tune runs in its child process with the
    panel's torch thread count (all usable cores: the child is its own process), and the image is segmented again with the new version.
    """
    import numpy as np

    from napari_unet.core.generators import run_to_end
    from napari_unet.core.inference import predict
    from napari_unet.core.io import read_image
    from napari_unet.core.metrics import overlap_iou
    from napari_unet.core.options import TrainSettings
    from napari_unet.core.registry import load_bundle, next_version_path
    from napari_unet.core.samples import TrainingSample
    from napari_unet.core.training_process import iter_finetune_in_child
    from napari_unet.gui.corrections import edited_regions

    folder = data / "ctc_hela"
    image = read_image(folder / "images" / "t52.tif").data
    truth = read_image(folder / "labels" / "t52.tif").data
    pad = ((0, 1024 - image.shape[0]), (0, 0))
    image, truth = np.pad(image, pad, "reflect")[:, :1024], np.pad(truth, pad, "reflect")[:, :1024]
    start = time.perf_counter()
    labels = predict(image, load_bundle("nuclei")).labels
    first_segmentation = time.perf_counter() - start
    truth_ids, _, iou = overlap_iou(truth, labels)
    best = {t: 0.0 for t in np.unique(truth[truth > 0])}
    for t, value in zip(truth_ids, iou, strict=True):
        best[int(t)] = max(best[int(t)], float(value))
    corrected = labels.astype(np.uint32).copy()
    for number, t in enumerate(sorted(best, key=best.get)[:15], start=1):
        corrected[truth == t] = corrected.max() + number
    known = edited_regions(corrected != labels, 16)
    sample = TrainingSample(image, corrected, known, "YX", "hela-1024")
    output = next_version_path("nuclei")
    start = time.perf_counter()
    result = run_to_end(
        iter_finetune_in_child("nuclei", [sample], TrainSettings(), output, threads=threads)
    )
    finetune = time.perf_counter() - start
    start = time.perf_counter()
    predict(image, result.bundle)
    resegment = time.perf_counter() - start
    output.unlink()
    return {
        "segment_s": first_segmentation,
        "finetune_s": finetune,
        "resegment_s": resegment,
        "total_s": finetune + resegment,
        "steps": len(result.history),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--one-click-only",
        action="store_true",
        help="only time the panel's one click (fine-tune + re-segment of a 1024^2 image)",
    )
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()

    import torch
    from machine import device_name

    from napari_unet.core.devices import resolve_compute, usable_cores
    from napari_unet.core.options import TrainSettings

    threads = usable_cores()
    click = one_click(args.data, threads)
    print(
        f"one click on a 1024x1024 image (child process, {threads} torch thread(s) as in the "
        f"panel, {click['steps']:.0f} steps): fine-tune {click['finetune_s']:.1f} s + "
        f"re-segment {click['resegment_s']:.1f} s = {click['total_s']:.1f} s "
        f"(target <= 180 s; first segmentation {click['segment_s']:.1f} s)"
    )
    if args.one_click_only:
        return
    samples = load_slices(args.data)
    fast = resolve_compute(args.device, "auto")
    defaults = TrainSettings()
    name = device_name(args.device)
    print(
        f"device {fast.device} ({name}), {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}; fast path: {fast.label}"
    )
    print(
        f"two {CROP}x{CROP} HeLa slices; default schedule: {defaults.steps} steps, lr "
        f"{defaults.learning_rate:g}, batch {defaults.batch_size} x {defaults.patch_size}^2, "
        f"validation every {defaults.val_every} steps"
    )
    precisions = ["fp32", "auto"]
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in precisions}
    for precision in precisions:  # untimed: CUDA context, cuDNN/oneDNN set-up
        run_once(samples, args.device, precision, steps=3)
    for _ in range(args.repeats):
        for precision in precisions:
            runs[precision].append(run_once(samples, args.device, precision))
    print(
        f"\n{'precision':<12} {'steps/s':>8} {'wall s':>7} {'val before':>10} {'best val':>9} "
        f"{'plateau step':>12} {'plateau s':>9}"
    )
    rows = {}
    for precision, results in runs.items():
        row = {k: statistics.median(r[k] for r in results) for k in results[0]}
        rows[precision] = row
        label = "fp32" if precision == "fp32" else fast.label.split("(")[1].rstrip(")")
        print(
            f"{label:<12} {row['steps_per_s']:8.2f} {row['wall_s']:7.1f} "
            f"{row['initial_score']:10.3f} {row['best_score']:9.3f} "
            f"{row['plateau_step']:12.0f} {row['plateau_s']:9.1f}"
        )
    speedup = rows["auto"]["steps_per_s"] / rows["fp32"]["steps_per_s"]
    plateau = rows["fp32"]["plateau_s"] / rows["auto"]["plateau_s"]
    print(f"\nfast path / fp32: {speedup:.2f}x steps/s, {plateau:.2f}x sooner to the plateau")


if __name__ == "__main__":
    main()

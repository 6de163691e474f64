"""Choose an instance model's seed level on images it was trained on, never on held-out ones.

    python benchmarks/seed_level.py [--model nuclei] [--images 60] [--draws 7 8]
        [--levels 0.5 0.6 0.7 0.8 0.85 0.9 0.95] [--time]

Objects are seeded where the interior probability passes the seed level, then grown into the
foreground (``core/postprocess.py``). Two touching nuclei whose interiors meet in a neck of
middling certainty merge at a low level and part at a higher one; too high a level loses the
objects the model is unsure of. For each random draw of grey images from the training families
of ``benchmarks/splits/dsb2018_family_split.json``, this prints AP@0.5 at every level through
the app's own ``predict``, and the change against 0.5 image by image. The held-out families
stay for ``benchmarks/accuracy.py``, which measures the level chosen here.

``--time`` also times ``predict`` on a 2048 x 2048 mosaic of 256 x 256 grey images at 0.5 and
at the model's recorded level, alternating, and prints the ratio of the medians.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from napari_unet.core.io import read_image
from napari_unet.core.metrics import instance_scores
from napari_unet.core.options import PredictOptions
from napari_unet.core.registry import load_bundle

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dsb2018_train"
SPLIT = ROOT / "benchmarks" / "splits" / "dsb2018_family_split.json"


def grey_ids(part: str) -> list[str]:
    """Ids of the grey images in one part (``train`` or ``heldout``) of the family split."""
    with open(DATA / "image_index.tsv", newline="") as handle:
        grey = {
            r["id"] for r in csv.DictReader(handle, delimiter="\t") if r["gray_or_color"] == "gray"
        }
    return [i for i in json.loads(SPLIT.read_text())[part] if i in grey]


def read(image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A grey DSB image (its first channel) and its instance labels."""
    image = read_image(DATA / "images" / f"{image_id}.png").data[..., 0]
    return image, read_image(DATA / "labels" / f"{image_id}.tif").data


def ap_by_level(bundle, images, levels: list[float]) -> dict[float, list[float]]:
    """AP@0.5 of every image at every seed level, as ``predict`` segments it."""
    from napari_unet.core.inference import predict

    scores: dict[float, list[float]] = {level: [] for level in levels}
    for image, truth in images:
        for level in levels:
            bundle.config["seed_threshold"] = level
            labels = predict(image, bundle, PredictOptions(), axes="YX").labels
            scores[level].append(instance_scores(labels, truth).at(0.5))
    return scores


def paired_timing(bundle, level: float, repeats: int = 4) -> None:
    """Median seconds of ``predict`` on a 2048^2 mosaic at 0.5 and at ``level``, alternating."""
    from napari_unet.core.inference import predict

    tiles = [im for im, _ in map(read, grey_ids("train")) if im.shape == (256, 256)][:64]
    mosaic = np.block([tiles[r * 8 : (r + 1) * 8] for r in range(8)])
    times: dict[float, list[float]] = {0.5: [], level: []}
    for repeat in range(repeats + 1):
        for each in times:
            bundle.config["seed_threshold"] = each
            start = time.perf_counter()
            predict(mosaic, bundle, PredictOptions(diameter=20.0), axes="YX")
            if repeat:  # the first round warms up
                times[each].append(time.perf_counter() - start)
    medians = {each: float(np.median(t)) for each, t in times.items()}
    print(f"\npredict on a {mosaic.shape[0]}x{mosaic.shape[1]} mosaic, median of {repeats}:")
    for each, seconds in medians.items():
        print(f"  seed level {each:g}: {seconds:.2f} s")
    print(f"  ratio {level:g} / 0.5: {medians[level] / medians[0.5]:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--images", type=int, default=60, help="images per draw")
    parser.add_argument("--draws", type=int, nargs="+", default=[7, 8], help="random seeds")
    parser.add_argument(
        "--levels", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]
    )
    parser.add_argument("--time", action="store_true", help="also time the recorded level")
    args = parser.parse_args(argv)
    bundle = load_bundle(args.model)
    recorded = bundle.config.get("seed_threshold")
    print(f"{args.model}: recorded seed level {recorded}")
    ids = grey_ids("train")
    for draw in args.draws:
        chosen = [ids[i] for i in np.random.default_rng(draw).permutation(len(ids))[: args.images]]
        scores = ap_by_level(bundle, [read(i) for i in chosen], args.levels)
        reference = np.array(scores[0.5]) if 0.5 in scores else None
        print(f"\ndraw {draw}: {len(chosen)} grey images of the training families")
        for level, values in scores.items():
            line = f"  seed level {level:<5g} AP@0.5 {np.mean(values):.3f}"
            if reference is not None:
                change = np.array(values) - reference
                line += (
                    f"  vs 0.5 {change.mean():+.3f} (better on {(change > 0.005).sum()}, "
                    f"worse on {(change < -0.005).sum()})"
                )
            print(line, flush=True)
    if args.time and recorded is not None:
        paired_timing(bundle, float(recorded))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

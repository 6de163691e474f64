"""Choose the smoothing of an instance model's seeds on images it was trained on.

    python benchmarks/seed_smoothing.py [--images 60] [--draws 7 8]
        [--shares 0 0.075 0.1 0.125] [--time]

Objects are seeded where the interior probability passes the threshold, then grown into the
foreground (``core/postprocess.py``). In a noisy image the network's interior map is speckled
and one nucleus falls apart into several seeds; smoothing the interior before it is cut closes
those dips, and too much smoothing joins touching nuclei. The sigma is a share of the objects'
diameter (``postprocess.SEED_SMOOTHING``). For each random draw of grey images from the
training families of ``benchmarks/splits/dsb2018_family_split.json``, as they are, made
photon-starved and blurred (the shifts of ``finetune_gain.py``'s noisy-dim and blurred
scenarios), this prints AP@0.5 through the app's own ``predict`` at every share and the change
against no smoothing, image by image. The held-out families stay for ``accuracy.py``.

``--time`` also times ``predict`` on a 2048 x 2048 mosaic of 256 x 256 training images with
and without the smoothing, alternating, and prints the ratio of the medians.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import finetune_gain as scenarios  # noqa: E402  (the shifts and the DSB reader)

from napari_unet.core import postprocess  # noqa: E402
from napari_unet.core.metrics import instance_scores  # noqa: E402
from napari_unet.core.options import PredictOptions  # noqa: E402
from napari_unet.core.registry import load_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPLIT = ROOT / "benchmarks" / "splits" / "dsb2018_family_split.json"
SHIFTS = {
    "as they are": lambda item, k: item,
    "photon-starved": scenarios.photon_starve,
    "blurred": lambda item, k: scenarios.defocus(item),
}


def training_grey_ids() -> list[str]:
    """Ids of the grey images of the family split's training part."""
    with open(DATA / "dsb2018_train" / "image_index.tsv", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        grey = {r["id"] for r in rows if r["gray_or_color"] == "gray"}
    return [i for i in json.loads(SPLIT.read_text())["train"] if i in grey]


def drawn_items(draws: list[int], images: int, shifts: dict = SHIFTS):
    """For each draw (a random seed) and shift: the draw, the shift's name and the draw's
    ``images`` grey training images under that shift."""
    ids = training_grey_ids()
    for draw in draws:
        chosen = [ids[i] for i in np.random.default_rng(draw).permutation(len(ids))[:images]]
        for name, shift in shifts.items():
            yield draw, name, [shift(scenarios.read_dsb(DATA, i), k) for k, i in enumerate(chosen)]


def scores_by_share(bundle, items, shares: list[float]) -> dict[float, np.ndarray]:
    """AP@0.5 of every item at every smoothing share, as ``predict`` segments it."""
    scores: dict[float, list[float]] = {share: [] for share in shares}
    for item in items:
        for share in shares:
            postprocess.SEED_SMOOTHING = share
            labels = scenarios.predict_labels(bundle, item.image, "YX")
            scores[share].append(instance_scores(labels, item.truth).at(0.5))
    return {share: np.array(values) for share, values in scores.items()}


def paired_timing(bundle, share: float, repeats: int = 4) -> None:
    """Median seconds of ``predict`` on a 2048^2 mosaic without and with ``share``."""
    from napari_unet.core.inference import predict

    images = (scenarios.read_dsb(DATA, i).image for i in training_grey_ids())
    tiles = [image for image in images if image.shape == (256, 256)][:64]
    mosaic = np.block([tiles[r * 8 : (r + 1) * 8] for r in range(8)])
    times: dict[float, list[float]] = {0.0: [], share: []}
    for repeat in range(repeats + 1):
        for each in times:
            postprocess.SEED_SMOOTHING = each
            start = time.perf_counter()
            predict(mosaic, bundle, PredictOptions(diameter=20.0), axes="YX")
            if repeat:  # the first round warms up
                times[each].append(time.perf_counter() - start)
    medians = {each: float(np.median(t)) for each, t in times.items()}
    print(f"\npredict on a {mosaic.shape[0]}x{mosaic.shape[1]} mosaic, median of {repeats}:")
    for each, seconds in medians.items():
        print(f"  share {each:g}: {seconds:.2f} s")
    print(f"  ratio {share:g} / none: {medians[share] / medians[0.0]:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--images", type=int, default=60, help="images per draw")
    parser.add_argument("--draws", type=int, nargs="+", default=[7, 8], help="random seeds")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.075, 0.1, 0.125])
    parser.add_argument("--time", action="store_true", help="also time the shipped share")
    args = parser.parse_args(argv)
    shipped = postprocess.SEED_SMOOTHING
    bundle = load_bundle(args.model)
    print(f"{args.model}; shipped share {shipped:g}; AP@0.5 (change against no smoothing)")
    for draw, name, items in drawn_items(args.draws, args.images):
        scores = scores_by_share(bundle, items, args.shares)
        reference = scores[args.shares[0]]
        cells = []
        for share, values in scores.items():
            change = values - reference
            cells.append(
                f"{share:g}: {values.mean():.3f} ({change.mean():+.3f}, "
                f"{(change > 0.005).sum()} up / {(change < -0.005).sum()} down)"
            )
        print(f"draw {draw}, {len(items)} images {name}: " + "  ".join(cells), flush=True)
    if args.time:
        paired_timing(bundle, shipped)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

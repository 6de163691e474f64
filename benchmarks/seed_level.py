"""Does the level chosen from the network's confidence beat a fixed one, on shifted images?

    python benchmarks/seed_level.py [--images 60] [--draws 9 10] [--levels 0.5 0.7]
        [--model nuclei]

An instance model's objects are cut at one probability level (``PredictOptions.threshold``);
by default it is chosen for each plane from how sure the network is
(``napari_unet/core/seed_level.py``). For each random draw of grey images from the training
families of ``benchmarks/splits/dsb2018_family_split.json``, under seven shifts (as they are,
the five tune shifts of ``finetune_gain.py``: photon-starved, blurred, dim-half, vignette,
enlarged 3x, and its report shift uneven illumination), this prints per shift: the share of
the foreground the network is sure of (mean and sd), AP@0.5 through the app's own ``predict``
at each fixed level and with the level chosen, the chosen level's change against the first
fixed level (images up / down by more than 0.005), and how many images got the higher level.
The rule was read off draws 7 and 8; the default draws 9 and 10 check it. The held-out
families stay for ``accuracy.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import finetune_gain as scenarios  # noqa: E402  (the shifts and the DSB reader)
from seed_smoothing import drawn_items  # noqa: E402

from napari_unet.core.inference import predict  # noqa: E402
from napari_unet.core.metrics import instance_scores  # noqa: E402
from napari_unet.core.options import PredictOptions  # noqa: E402
from napari_unet.core.registry import load_bundle  # noqa: E402
from napari_unet.core.seed_level import DEFAULT_LEVEL  # noqa: E402

SHIFTS = {
    "as they are": lambda item, k: item,
    "photon-starved": scenarios.photon_starve,
    "blurred": lambda item, k: scenarios.defocus(item),
    "dim-half": lambda item, k: scenarios.dim_half(item),
    "vignette": lambda item, k: scenarios.vignette(item),
    "uneven": lambda item, k: scenarios.uneven(item),
    "enlarged": lambda item, k: scenarios.centre_crop(scenarios.upscale(item)),
}


def scores(bundle, items, levels: list[float]) -> tuple[dict, np.ndarray, np.ndarray]:
    """AP@0.5 of every item at each fixed level and chosen (key None); the sure shares and
    the levels chosen."""
    found: dict[float | None, list[float]] = {level: [] for level in [*levels, None]}
    sure, chosen = [], []
    for item in items:
        for level in found:
            result = predict(item.image, bundle, PredictOptions(threshold=level), axes="YX")
            found[level].append(instance_scores(result.labels, item.truth).at(0.5))
            if level is None:
                (plane,) = result.stats["levels"]
                sure.append(plane.sure)
                chosen.append(plane.level)
    return {k: np.array(v) for k, v in found.items()}, np.array(sure), np.array(chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--images", type=int, default=60, help="images per draw")
    parser.add_argument("--draws", type=int, nargs="+", default=[9, 10], help="random seeds")
    parser.add_argument("--levels", type=float, nargs="+", default=[DEFAULT_LEVEL, 0.7])
    args = parser.parse_args(argv)
    bundle = load_bundle(args.model)
    print(f"{args.model}; AP@0.5 at fixed levels and chosen (change against {args.levels[0]:g})")
    for draw, name, items in drawn_items(args.draws, args.images, SHIFTS):
        found, sure, chosen = scores(bundle, items, args.levels)
        change = found[None] - found[args.levels[0]]
        fixed = "  ".join(f"{level:g}: {found[level].mean():.3f}" for level in args.levels)
        print(
            f"draw {draw}, {len(items)} images, {name}: sure {sure.mean():.2f} ± "
            f"{sure.std():.2f}; {fixed}; chosen: {found[None].mean():.3f} "
            f"({change.mean():+.3f}, {(change > 0.005).sum()} up / "
            f"{(change < -0.005).sum()} down; {(chosen > DEFAULT_LEVEL).sum()} images higher)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

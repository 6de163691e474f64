"""How a colour image should feed the bundled grey ``nuclei`` model: AP@0.5 per rule.

    OMP_NUM_THREADS=1 python benchmarks/rgb_input.py [--every N] [--model NAME]

Every held-out image of the DSB 2018 family split (benchmarks/splits/dsb2018_family_split.json;
the images the model was trained on are left out) is read as stored, an RGBA PNG, and turned
into the model's one channel by each rule of ``core/preprocess.py``:
luminance (the bundle's rule today), mean, each single channel, max over the channels (each
also inverted where auto's test finds a bright background), and ``auto`` (the channel with the most two-class contrast, inverted when its background is bright;
see ``choose_colour_input``), also without its inversion to tell its two parts apart.
Segmented with ``predict`` and the default options on the CPU, scored with ``instance_scores``
at IoU 0.5. Kinds of image: the split's modality (fluorescence and grey bright-field are grey
images stored as RGB, all three samples equal; histology is truly colour). Identical inputs are
predicted once. Needs ../shared/data next to the repository. Prints the tables.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_bundled import DATA, dsb_family_split  # noqa: E402

FIXED = ("luminance", "mean", "channel:0", "channel:1", "channel:2", "max")
RULES = (
    *FIXED,
    *(f"{rule} + inversion" for rule in FIXED),
    "auto, no inversion",
    "auto",
)
KINDS = {
    "fluorescence": "fluorescence (grey in RGB)",
    "brightfield_gray": "bright-field (grey in RGB)",
    "color_histology_or_brightfield": "histology (colour)",
}


def grey_input(rgb: np.ndarray, rule: str) -> tuple[np.ndarray, object]:
    """The model's one channel for ``rule``, and the choice made."""
    from napari_unet.core.preprocess import (
        ColourChoice,
        _bright_background,
        _sample,
        apply_colour_choice,
        choose_colour_input,
    )

    if rule == "auto, no inversion":
        auto = choose_colour_input(rgb, "auto")
        choice = ColourChoice("auto", auto.channel, False, auto.grey)
    elif rule.endswith(" + inversion"):
        # a fixed rule, inverted when auto would invert its grey
        fixed = choose_colour_input(rgb, rule.split(" ")[0])
        grey = apply_colour_choice(rgb, fixed)
        invert = _bright_background(_sample(grey))
        choice = ColourChoice(fixed.rule, fixed.channel, invert, fixed.grey)
    else:
        choice = choose_colour_input(rgb, rule)
    # rounded so that rules that give the same grey (a grey image) are predicted once
    return np.round(apply_colour_choice(rgb, choice), 3), choice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=int, default=1, help="use every N-th held-out image")
    parser.add_argument("--model", default="nuclei")
    args = parser.parse_args()

    import torch

    from napari_unet.core.inference import PredictOptions, predict
    from napari_unet.core.io import read_image
    from napari_unet.core.metrics import instance_scores
    from napari_unet.core.preprocess import describe_colour_input
    from napari_unet.core.registry import load_bundle

    bundle = load_bundle(args.model)
    split = dsb_family_split()
    seen = {
        source.split("/")[-1].split("[")[0]
        for run in bundle.config.get("training", {}).get("history", [])
        for source in run.get("samples", [])
    }
    ids = [i for i in split["heldout"] if i not in seen][:: args.every]
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, device cpu; model {args.model!r} "
        f"(bundle rule {bundle.config['input'].get('rgb')!r}); "
        f"{len(ids)} held-out DSB images (every {args.every})",
        flush=True,
    )
    options = PredictOptions(device="cpu")
    ap: dict[tuple[str, str], list[float]] = {}
    choices: dict[str, list[str]] = {}
    start = time.perf_counter()
    for image_id in ids:
        kind = KINDS[split["families"][image_id].split("/")[0]]
        rgb = read_image(DATA / "dsb2018_train" / "images" / f"{image_id}.png").data[..., :3]
        truth = read_image(DATA / "dsb2018_train" / "labels" / f"{image_id}.tif").data
        cache: dict[str, float] = {}
        line = []
        for rule in RULES:
            grey, choice = grey_input(rgb, rule)
            key = hashlib.sha1(grey.tobytes()).hexdigest()
            if key not in cache:
                labels = predict(grey, bundle, options).labels
                cache[key] = instance_scores(labels, truth).at(0.5)
            ap.setdefault((rule, kind), []).append(cache[key])
            line.append(f"{cache[key]:.2f}")
            if rule == "auto":
                choices.setdefault(kind, []).append(describe_colour_input(choice))
        print(f"{image_id[:8]} {kind:<28} " + " ".join(line), flush=True)

    kinds = [k for k in KINDS.values() if (RULES[0], k) in ap]
    print(f"\n{time.perf_counter() - start:.0f} s; columns of the lines above: {', '.join(RULES)}")
    print("\nAP@0.5, mean over images (n images per kind)")
    header = f"{'rule':<20}" + "".join(f"{k + f' n={len(ap[RULES[0], k])}':>34}" for k in kinds)
    print(header + f"{'all images':>14}" + f"{'colour only':>14}")
    for rule in RULES:
        every = [v for k in kinds for v in ap[rule, k]]
        colour = ap.get((rule, KINDS["color_histology_or_brightfield"]), [])
        print(
            f"{rule:<20}"
            + "".join(f"{np.mean(ap[rule, k]):>34.3f}" for k in kinds)
            + f"{np.mean(every):>14.3f}"
            + (f"{np.mean(colour):>14.3f}" if colour else f"{'-':>14}")
        )
    print("\nwhat auto chose (describe_colour_input), per kind:")
    for kind, said in choices.items():
        for sentence in sorted(set(said)):
            print(f"  {kind:<28} {said.count(sentence):>4} x {sentence}")


if __name__ == "__main__":
    main()

"""Train the bundled models from ../shared/data with the project's own ``napari-unet train``.

Reproducible: the data split is fixed by a seed and written to benchmarks/splits/, the
settings are below, and the command that ran is printed.

    python benchmarks/train_bundled.py nuclei [--minutes-hint] [--steps N]
    python benchmarks/train_bundled.py em-membranes [--steps N]

Training sets are written to a scratch folder as napari-unet training sets, then
``napari-unet train --dataset ... --from-scratch`` trains and saves the bundle.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPLITS = ROOT / "benchmarks" / "splits"
SEED = 2018


def dsb_split(val_share: float = 0.1) -> dict[str, list[str]]:
    """Grey fluorescence DSB images split by id with a fixed seed; written once, then reused."""
    path = SPLITS / "dsb2018_grey_split.json"
    if path.is_file():
        return json.loads(path.read_text())
    with open(DATA / "dsb2018_train" / "image_index.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    ids = sorted(
        r["id"]
        for r in rows
        if r["gray_or_color"] == "gray" and r["modality_guess"] == "fluorescence"
    )
    order = np.random.default_rng(SEED).permutation(len(ids))
    n_val = int(round(val_share * len(ids)))
    split = {
        "seed": SEED,
        "rule": "gray + fluorescence in image_index.tsv",
        "heldout": sorted(ids[i] for i in order[:n_val]),
        "train": sorted(ids[i] for i in order[n_val:]),
    }
    SPLITS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split, indent=1))
    return split


def isbi_split() -> dict[str, list[str]]:
    """ISBI 2012 sections: 16 for training, 4 held out (every fifth section)."""
    sections = sorted(p.stem for p in (DATA / "isbi2012_em" / "images").glob("*.png"))
    heldout = sections[4::5]
    return {"heldout": heldout, "train": [s for s in sections if s not in heldout]}


def build_nuclei_set(folder: Path, ids: list[str]) -> None:
    from napari_unet.core.dataset import TrainingSet
    from napari_unet.core.io import read_image

    training_set = TrainingSet(folder, "instances", ["background", "interior", "boundary"])
    for image_id in ids:
        image = read_image(DATA / "dsb2018_train" / "images" / f"{image_id}.png")
        labels = read_image(DATA / "dsb2018_train" / "labels" / f"{image_id}.tif").data
        grey = image.data[..., 0]
        training_set.add_image(
            image_id, source=f"dsb2018_train/{image_id}", shape=grey.shape, axes="YX"
        )
        training_set.put_plane(image_id, (), grey, labels, None, fully_checked=True)


def build_em_set(folder: Path, sections: list[str]) -> None:
    from napari_unet.core.dataset import TrainingSet
    from napari_unet.core.io import read_image

    training_set = TrainingSet(folder, "semantic", ["background", "membrane"])
    for section in sections:
        image = read_image(DATA / "isbi2012_em" / "images" / f"{section}.png").data
        labels = (read_image(DATA / "isbi2012_em" / "labels" / f"{section}.png").data == 0).astype(
            np.uint8
        )
        training_set.add_image(
            section, source=f"isbi2012_em/{section}", shape=image.shape, axes="YX"
        )
        training_set.put_plane(section, (), image, labels, None, fully_checked=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("nuclei", "em-membranes"))
    parser.add_argument("--steps", type=int)
    parser.add_argument(
        "--limit", type=int, help="use only this many training images (quick checks)"
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix=f"napari-unet-{args.model}-"))
    # the settings the bundled models were trained with (see their model cards)
    common = ["--base-channels", "16", "--depth", "4", "--learning-rate", "2e-3"]
    if args.model == "nuclei":
        build_nuclei_set(scratch / "set", dsb_split()["train"][: args.limit])
        steps = args.steps or 5000
        extra = [*common, "--val-fraction", "0.08", "--val-every", "500", "--border-weights"]
    else:
        build_em_set(scratch / "set", isbi_split()["train"])
        steps = args.steps or 2000
        extra = [*common, "--mode", "semantic", "--class-names", "background,membrane"]
        extra += ["--val-fraction", "0.2", "--val-every", "250"]
    output = args.output or ROOT / "napari_unet" / "models" / f"{args.model}.safetensors"
    command = [
        sys.executable,
        "-m",
        "napari_unet.cli",
        "train",
        "--dataset",
        str(scratch / "set"),
        "--from-scratch",
        "--steps",
        str(steps),
        "--seed",
        str(SEED),
        "--half",
        "--overwrite",
        "--output",
        str(output),
        *extra,
    ]
    print("running:", " ".join(command[2:]), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())

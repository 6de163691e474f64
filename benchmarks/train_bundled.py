"""Train the bundled models from ../shared/data with the project's own ``napari-unet train``.

Reproducible: the data split is fixed by a seed and written to benchmarks/splits/, the
settings are below, and the command that ran is printed.

    python benchmarks/train_bundled.py nuclei [--steps N]
    python benchmarks/train_bundled.py em-membranes [--steps N]
    python benchmarks/train_bundled.py nuclei --replay-only

Training sets are written to a scratch folder as napari-unet training sets, then
``napari-unet train --dataset ... --from-scratch`` trains and saves the bundle. For ``nuclei``
a replay set is then attached to the bundle: one 256 x 256 patch from each of 24 training
images (seeded), which fine-tuning rehearses (``TrainSettings.replay_fraction``). The DSB data
are CC0, so they may ship inside the BSD package; the ISBI EM data are for non-commercial
research only, so ``em-membranes`` ships without a replay set. ``--replay-only`` attaches the
replay set to the existing bundle without retraining (the weights stay bit-identical).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

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


def replay_set(ids: list[str], patches: int = 24, size: int = 256) -> Any:
    """One seeded ``size``-square crop with at least 3 whole nuclei from each of the first
    ``patches`` suitable training images (in a seeded order)."""
    from skimage.segmentation import relabel_sequential

    from napari_unet.core.bundle import ReplaySet
    from napari_unet.core.io import read_image

    rng = np.random.default_rng(SEED)
    images, labels, used = [], [], []
    for image_id in rng.permutation(ids):
        grey = read_image(DATA / "dsb2018_train" / "images" / f"{image_id}.png").data[..., 0]
        truth = read_image(DATA / "dsb2018_train" / "labels" / f"{image_id}.tif").data
        if min(grey.shape) < size:
            continue
        top = int(rng.integers(grey.shape[0] - size + 1))
        left = int(rng.integers(grey.shape[1] - size + 1))
        crop = truth[top : top + size, left : left + size]
        edge = np.unique(np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]]))
        if len(np.setdiff1d(np.unique(crop), edge)) < 3:
            continue
        images.append(grey[top : top + size, left : left + size])
        labels.append(relabel_sequential(crop)[0])
        used.append(str(image_id))
        if len(images) == patches:
            break
    stacked = np.stack(labels)
    dtype = np.uint8 if stacked.max() < 256 else np.int16
    source = (
        f"{len(used)} crops of {size}x{size} from DSB 2018 stage-1 training images "
        f"(CC0; BBBC038v1), ids {' '.join(used)}"
    )
    return ReplaySet(np.stack(images).astype(np.uint8), stacked.astype(dtype), source)


def attach_replay(path: Path) -> None:
    """Store the nuclei replay set in the bundle at ``path`` (weights unchanged)."""
    from napari_unet.core.bundle import save_bundle
    from napari_unet.core.registry import load_bundle

    bundle = load_bundle(path)
    bundle.replay = replay_set(dsb_split()["train"])
    save_bundle(bundle, path, overwrite=True, half=True)
    print(f"attached {len(bundle.replay.labels)} replay patches to {path}", flush=True)


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
    parser.add_argument(
        "--replay-only",
        action="store_true",
        help="attach the replay set to the existing nuclei bundle without retraining",
    )
    args = parser.parse_args()
    output = args.output or ROOT / "napari_unet" / "models" / f"{args.model}.safetensors"
    if args.replay_only:
        if args.model != "nuclei":
            parser.error("only the nuclei model ships a replay set (the EM data's licence)")
        attach_replay(output)
        return 0
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
    status = subprocess.call(command)
    if status == 0 and args.model == "nuclei":
        attach_replay(output)
    return status


if __name__ == "__main__":
    sys.exit(main())

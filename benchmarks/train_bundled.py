"""Train the bundled models from ../shared/data with the project's own ``napari-unet train``.

Reproducible: the data split is fixed by a seed and written to benchmarks/splits/, the
settings are below, and the command that ran is printed.

    python benchmarks/train_bundled.py nuclei [--steps N]
    python benchmarks/train_bundled.py em-membranes [--steps N]
    python benchmarks/train_bundled.py nuclei --replay-only
    python benchmarks/train_bundled.py em-membranes --output FILE --border-weights  # a candidate

Options the script does not know, given after the model's name, go to ``napari-unet train``
after the recipe's own (a later option wins), so a candidate recipe is tried without editing
the script.

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


def dsb_families() -> list[dict[str, Any]]:
    """Every DSB image with its family: a group of images that look alike.

    An image's group is its modality, grey/colour and size (in DSB, one experiment's images
    share a size). Groups of 40 images or more hold several experiments: they are split
    further by look, with k-means (k = n / 30, seeded) on the log median nucleus diameter
    and the log mean intensity, so near-duplicate images of one experiment share a family.
    """
    from scipy.cluster.vq import kmeans2

    from napari_unet.core.diameter import labels_diameter
    from napari_unet.core.io import read_image

    with open(DATA / "dsb2018_train" / "image_index.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    for row in rows:
        truth = read_image(DATA / "dsb2018_train" / "labels" / f"{row['id']}.tif").data
        row["diameter"] = labels_diameter([truth]).diameter or 1.0
        row["group"] = (
            f"{row['modality_guess']}/{row['gray_or_color']}/{row['height']}x{row['width']}"
        )
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    for name, members in sorted(groups.items()):
        if len(members) < 40:
            for row in members:
                row["family"] = name
            continue
        look = np.array(
            [[np.log(r["diameter"]), np.log(float(r["mean_intensity"]) + 1.0)] for r in members]
        )
        look = (look - look.mean(0)) / (look.std(0) + 1e-9)
        _, cluster = kmeans2(look, round(len(members) / 30), seed=SEED, minit="++")
        for row, k in zip(members, cluster, strict=True):
            row["family"] = f"{name}/look{k}"
    return rows


def dsb_family_split(heldout_share: float = 0.2) -> dict[str, Any]:
    """All usable DSB images split by family (:func:`dsb_families`); written once, then reused.

    Stratified by group, in a seeded order: a group of several families gives whole families
    until ``heldout_share`` of its images are held out (at most half of them); of the groups
    that are a single family, every second one is held out whole (a kind never seen).
    """
    path = SPLITS / "dsb2018_family_split.json"
    if path.is_file():
        return json.loads(path.read_text())
    rows = dsb_families()
    groups: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        groups.setdefault(row["group"], {}).setdefault(row["family"], []).append(row["id"])
    rng = np.random.default_rng(SEED)
    heldout: list[str] = []
    single = sorted(g for g, fams in groups.items() if len(fams) == 1)
    heldout += [single[i] for i in rng.permutation(len(single))[::2]]
    for group in sorted(g for g in groups if g not in single):
        families = groups[group]
        size = sum(len(ids) for ids in families.values())
        held = 0
        for name in (sorted(families)[i] for i in rng.permutation(len(families))):
            if held >= heldout_share * size:
                break
            if held + len(families[name]) <= 0.5 * size:
                heldout.append(name)
                held += len(families[name])
    families_of = {row["family"]: row["group"] for row in rows}
    held_ids = {i for name in heldout for i in groups[families_of[name]][name]}
    split = {
        "seed": SEED,
        "rule": "by image family: modality, grey/colour and size, large groups split by look "
        "(k-means on log median diameter and log mean intensity); whole families held out "
        "(benchmarks/train_bundled.py dsb_family_split)",
        "heldout_families": sorted(heldout),
        "heldout": sorted(held_ids),
        "train": sorted(r["id"] for r in rows if r["id"] not in held_ids),
        "families": {r["id"]: r["family"] for r in rows},
        "diameters": {r["id"]: round(r["diameter"], 2) for r in rows},
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
        labels = read_image(DATA / "dsb2018_train" / "labels" / f"{image_id}.tif").data
        grey = dsb_grey(image_id)
        training_set.add_image(
            image_id, source=f"dsb2018_train/{image_id}", shape=grey.shape, axes="YX"
        )
        training_set.put_plane(image_id, (), grey, labels, None, fully_checked=True)


def dsb_grey(image_id: str) -> np.ndarray:
    """A DSB image as the model reads an RGB image: luminance (grey images: their grey)."""
    from napari_unet.core.io import read_image
    from napari_unet.core.preprocess import to_model_channels

    rgb = read_image(DATA / "dsb2018_train" / "images" / f"{image_id}.png").data[..., :3]
    grey = to_model_channels(rgb, "YXS", {"channels": 1, "rgb": "luminance"}, None)[0]
    return np.clip(np.round(grey), 0, 255).astype(np.uint8)


def replay_set(ids: list[str], patches: int = 24, checks: int = 24, size: int = 256) -> Any:
    """One seeded ``size``-square crop with at least 3 whole nuclei from each of the first
    ``patches + checks`` suitable images of ``ids`` (the images the model was trained on, in
    a seeded order); the last ``checks`` are the check patches fine-tuning never rehearses."""
    from skimage.segmentation import relabel_sequential

    from napari_unet.core.bundle import ReplaySet
    from napari_unet.core.io import read_image

    rng = np.random.default_rng(SEED)
    images, labels, used = [], [], []
    for image_id in rng.permutation(ids):
        grey = dsb_grey(str(image_id))
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
        if len(images) == patches + checks:
            break
    stacked = np.stack(labels)
    dtype = np.uint8 if stacked.max() < 256 else np.int16
    source = (
        f"{len(used)} crops of {size}x{size} from DSB 2018 stage-1 training images "
        f"(CC0; BBBC038v1), the last {checks} for checks only, ids {' '.join(used)}"
    )
    return ReplaySet(np.stack(images).astype(np.uint8), stacked.astype(dtype), source, checks)


def attach_replay(path: Path) -> None:
    """Store the nuclei replay set in the bundle at ``path`` (weights unchanged)."""
    from napari_unet.core.bundle import save_bundle
    from napari_unet.core.registry import load_bundle

    bundle = load_bundle(path)
    last_run = bundle.config["training"]["history"][-1]["samples"]
    trained_on = [source.split("/")[1].split("[")[0] for source in last_run]
    bundle.replay = replay_set(trained_on)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("model", choices=("nuclei", "em-membranes"))
    parser.add_argument("--steps", type=int)
    parser.add_argument(
        "--limit", type=int, help="use only this many training images (quick checks)"
    )
    parser.add_argument("--output", "-o", type=Path)
    parser.add_argument(
        "--replay-only",
        action="store_true",
        help="attach the replay set to the existing nuclei bundle without retraining",
    )
    args, train_options = parser.parse_known_args()
    output = args.output or ROOT / "napari_unet" / "models" / f"{args.model}.safetensors"
    if args.replay_only:
        if train_options:
            parser.error(f"--replay-only trains nothing: {' '.join(train_options)} unused")
        if args.model != "nuclei":
            parser.error("only the nuclei model ships a replay set (the EM data's licence)")
        attach_replay(output)
        return 0
    scratch = Path(tempfile.mkdtemp(prefix=f"napari-unet-{args.model}-"))
    # the settings the bundled models were trained with (see their model cards)
    common = ["--base-channels", "16", "--depth", "4", "--learning-rate", "2e-3"]
    if args.model == "nuclei":
        build_nuclei_set(scratch / "set", dsb_family_split()["train"][: args.limit])
        steps = args.steps or 5000
        extra = [*common, "--val-fraction", "0.08", "--val-every", "500", "--border-weights"]
        # batch 4 as the first bundled model; its working size (20 px) rather than the median
        # of all families (33 px: small nuclei would be enlarged 1.6x more, costing 2.7x time)
        extra += ["--batch-size", "4", "--object-diameter", "20"]
        extra += ["--zoom", "0.5", "2", "--invert-chance", "0.2", "--blur-chance", "0.2"]
    else:
        build_em_set(scratch / "set", isbi_split()["train"])
        steps = args.steps or 6000
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
        *train_options,
    ]
    print("running:", " ".join(command[2:]), flush=True)
    status = subprocess.call(command)
    if status == 0 and args.model == "nuclei":
        attach_replay(output)
    return status


if __name__ == "__main__":
    sys.exit(main())

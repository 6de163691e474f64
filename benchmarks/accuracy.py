"""Accuracy of the bundled models and of fine-tuning from corrections, on real data.

    python benchmarks/accuracy.py nuclei [--model FILE] [--quick]
        # held-out DSB 2018 families at 0.5x-3x, size estimated or not, TTA; CTC HeLa frames
    python benchmarks/accuracy.py em          # held-out ISBI 2012 sections, with and without TTA
    python benchmarks/accuracy.py finetune    # CTC HeLa: fine-tune on k = 1, 2 frames, score the rest
    python benchmarks/accuracy.py all

Needs ../shared/data next to the repository. Prints tables and writes benchmarks/results/*.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_bundled import DATA, dsb_family_split, dsb_grey, isbi_split  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def evaluate_nuclei(
    model: str = "nuclei", quick: bool = False, only: list[str] | None = None
) -> dict[str, object]:
    """The nuclei model on the held-out families of the DSB split, at several image scales.

    Every held-out image is segmented as it is and rescaled 0.5x, 2x and 3x (linear
    interpolation; labels by nearest pixel), with the object size estimated (the default) and
    at the model's own scale (``diameter`` = the trained one: no adaptation); at 1x also with
    test-time augmentation and with the seeds' level chosen per plane (``threshold`` None,
    ``core/seed_level.py``) instead of the fixed 0.5. Size bins use the truth's median object diameter in the image as
    segmented; images whose nuclei are under 10 px after rescaling are left out of the bins.
    The CTC HeLa frames are an external test set (nuclei cut by the border left out of both).
    ``only`` names the variants to run (all of :data:`VARIANTS` by default).
    """
    from skimage.segmentation import clear_border
    from skimage.transform import rescale

    from napari_unet.core.diameter import labels_diameter
    from napari_unet.core.inference import PredictOptions, predict
    from napari_unet.core.io import read_image
    from napari_unet.core.metrics import instance_scores
    from napari_unet.core.registry import load_bundle

    bundle = load_bundle(model)
    trained = bundle.config["object_diameter"]
    split = dsb_family_split()
    seen = {  # images the model was trained on (its history), never scored
        source.split("/")[-1].split("[")[0]
        for run in bundle.config.get("training", {}).get("history", [])
        for source in run.get("samples", [])
    }
    ids = [i for i in split["heldout"] if i not in seen][:: 6 if quick else 1]
    how = {
        "estimated": PredictOptions(),
        "model scale": PredictOptions(diameter=trained),
        "TTA": PredictOptions(tta=True),
        "level auto": PredictOptions(threshold=None),
    }
    variants = {
        name: (scale, how[kind])
        for name, (scale, kind) in VARIANTS.items()
        if only is None or name in only
    }
    rows = []
    for image_id in ids:
        grey = dsb_grey(image_id).astype(np.float32)
        truth = read_image(DATA / "dsb2018_train" / "labels" / f"{image_id}.tif").data
        family = split["families"][image_id]
        for name, (scale, options) in variants.items():
            image, labels = grey, truth
            if scale != 1.0:
                image = rescale(grey, scale, order=1, anti_aliasing=scale < 1, preserve_range=True)
                labels = rescale(truth, scale, order=0, anti_aliasing=False, preserve_range=True)
                labels = labels.astype(truth.dtype)
            start = time.perf_counter()
            result = predict(image, bundle, options)
            seconds = time.perf_counter() - start
            scores = instance_scores(result.labels, labels)
            (size,) = result.stats["sizes"]
            rows.append(
                {
                    "id": image_id,
                    "family": family,
                    "kind": family.split("/")[0],
                    "variant": name,
                    "scale": scale,
                    "ap50": scores.at(0.5),
                    "ap75": scores.at(0.75),
                    "truth_diameter": labels_diameter([labels]).diameter,
                    "estimated_diameter": size.diameter if size.source == "estimated" else None,
                    "factor": size.factor,
                    "seconds": seconds,
                    "pixels": int(image.size),
                }
            )
        print(
            f"{image_id[:8]} {family:<48} "
            + " ".join(f"{r['ap50']:.2f}" for r in rows[-len(variants) :]),
            flush=True,
        )
    hela = []
    for path in sorted((DATA / "ctc_hela" / "images").glob("*.tif")):
        image = read_image(path).data
        truth = read_image(DATA / "ctc_hela" / "labels" / path.name).data
        for name, options in (
            ("auto", PredictOptions()),
            ("model scale", PredictOptions(diameter=trained)),
            ("level auto", PredictOptions(threshold=None)),
        ):
            result = predict(image, bundle, options)
            hela.append(
                {
                    "frame": path.stem,
                    "variant": name,
                    "ap50": instance_scores(clear_border(result.labels), clear_border(truth)).at(
                        0.5
                    ),
                    "estimated_diameter": result.stats["sizes"][0].diameter,
                    "truth_diameter": labels_diameter([truth]).diameter,
                }
            )
    print(
        f"\n{len(split['heldout']) - len([i for i in split['heldout'] if i not in seen])} "
        "held-out images left out: the model was trained on them"
    )
    report_nuclei(rows, hela, model, trained)
    return {"model": model, "trained_diameter": trained, "images": rows, "hela": hela}


SIZE_BINS = ((10, 20), (20, 40), (40, 80), (80, 1000))
VARIANTS = {  # name: (image scale, size estimated / at the model's scale / TTA / fixed level)
    "1x": (1.0, "estimated"),
    "1x, level auto": (1.0, "level auto"),
    "1x at model scale": (1.0, "model scale"),
    "1x + TTA": (1.0, "TTA"),
    "0.5x": (0.5, "estimated"),
    "0.5x at model scale": (0.5, "model scale"),
    "2x": (2.0, "estimated"),
    "2x at model scale": (2.0, "model scale"),
    "3x": (3.0, "estimated"),
    "3x at model scale": (3.0, "model scale"),
}


def report_nuclei(rows: list[dict], hela: list[dict], model: str, trained: float) -> None:
    """Print the tables of :func:`evaluate_nuclei`."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    n = len({r["id"] for r in rows})
    print(
        f"\n{model} (trained diameter {trained:.1f} px) on {n} held-out DSB images of unseen "
        "families (benchmarks/splits/dsb2018_family_split.json)"
    )
    header = "".join(f"{f'{a}-{b} px':>11}" for a, b in SIZE_BINS)
    print(f"{'variant':<22} {'AP@0.5':>7} {'AP@0.75':>8} {'s/MP':>6} {header}")
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        bins = []
        for a, b in SIZE_BINS:
            inside = [r["ap50"] for r in rs if r["truth_diameter"] and a <= r["truth_diameter"] < b]
            bins.append(f"{np.mean(inside):6.3f} ({len(inside):>3})" if inside else f"{'-':>11}")
        speed = sum(r["seconds"] for r in rs) / (sum(r["pixels"] for r in rs) / 1e6)
        print(
            f"{v:<22} {np.mean([r['ap50'] for r in rs]):7.3f} "
            f"{np.mean([r['ap75'] for r in rs]):8.3f} {speed:6.2f} "
            + "".join(f"{x:>11}" for x in bins)
        )
    first = variants[0]
    print(f"\nper kind of image, {first}:")
    ones = [r for r in rows if r["variant"] == first]
    for kind in sorted({r["kind"] for r in ones}):
        rs = [r for r in ones if r["kind"] == kind]
        print(f"  {kind:<34} {len(rs):>4} images  AP@0.5 {np.mean([r['ap50'] for r in rs]):.3f}")
    print("\nsize estimate against the truth's diameter (same measure), size-estimated variants:")
    for v in [v for v in variants if "model scale" not in v and "TTA" not in v]:
        rs = [r for r in rows if r["variant"] == v and r["truth_diameter"]]
        ratios = np.array(
            [r["estimated_diameter"] / r["truth_diameter"] for r in rs if r["estimated_diameter"]]
        )
        none = sum(1 for r in rs if not r["estimated_diameter"])
        print(
            f"  {v:<6} median ratio {np.median(ratios):.2f}, within 25%: {np.mean(np.abs(np.log(ratios)) < np.log(1.25)):.0%}, "
            f"median |error| {np.median(np.abs(ratios - 1)):.0%}, no estimate: {none}"
        )
    print("\nCTC HeLa frames (external; border nuclei left out):")
    for v in dict.fromkeys(h["variant"] for h in hela):
        hs = [h for h in hela if h["variant"] == v]
        print(
            f"  {v:<12} AP@0.5 {np.mean([h['ap50'] for h in hs]):.3f}  "
            f"estimated {np.median([h['estimated_diameter'] or np.nan for h in hs]):.1f} px vs truth {np.median([h['truth_diameter'] for h in hs]):.1f} px"
        )


def evaluate_em(model: str = "em-membranes", tta: bool = False) -> dict[str, object]:
    """Pixel error, membrane IoU and Rand error on the held-out ISBI sections (with ``tta``:
    averaged over the 8 flips and rotations, as the U-Net paper averaged rotated copies)."""
    from scipy import ndimage as ndi

    from napari_unet.core.inference import PredictOptions, predict
    from napari_unet.core.io import read_image
    from napari_unet.core.metrics import class_iou, pixel_error, rand_error
    from napari_unet.core.registry import load_bundle

    bundle = load_bundle(model)
    rows = []
    for section in isbi_split()["heldout"]:
        image = read_image(DATA / "isbi2012_em" / "images" / f"{section}.png").data
        truth = (read_image(DATA / "isbi2012_em" / "labels" / f"{section}.png").data == 0).astype(
            np.uint8
        )
        labels = predict(image, bundle, PredictOptions(tta=tta)).labels
        cells_truth = ndi.label(truth == 0)[0]
        cells_pred = ndi.label(labels == 0)[0]
        rows.append(
            {
                "section": section,
                "pixel_error": pixel_error(labels, truth),
                "membrane_iou": float(class_iou(labels, truth, 2)[1]),
                "rand_error": rand_error(cells_pred, cells_truth),
            }
        )
    mean = {
        k: float(np.mean([r[k] for r in rows]))
        for k in ("pixel_error", "membrane_iou", "rand_error")
    }
    print(
        f"\n{model}{' + TTA' if tta else ''} on held-out ISBI 2012 training sections "
        f"{[r['section'] for r in rows]}"
    )
    print(
        f"pixel error {mean['pixel_error']:.4f}  membrane IoU {mean['membrane_iou']:.3f}  Rand error {mean['rand_error']:.4f}"
    )
    return {"model": model, "tta": tta, "sections": rows, "mean": mean}


def simulate_corrections(
    prediction: np.ndarray, truth: np.ndarray, margin: int
) -> tuple[np.ndarray, np.ndarray]:
    """What a user fixing ``prediction`` towards ``truth`` in the GUI leaves, and its known-mask.

    Predicted objects that match a true object (IoU > 0.5) are accepted as they are; predicted
    objects overlapping a true object without matching it are erased and the true objects
    painted instead; predictions with no true object nearby are left alone (the truth may
    simply not annotate them). The known-mask is what the GUI computes: the edited regions'
    bounding boxes grown by a margin.
    """
    from napari_unet.core.metrics import match_objects, overlap_iou
    from napari_unet.gui.corrections import edited_regions

    matches = match_objects(prediction, truth, 0.5)
    good_pred, good_true = {a for a, _, _ in matches}, {b for _, b, _ in matches}
    overlapping, _, _ = overlap_iou(prediction, truth)
    wrong = [a for a in np.unique(overlapping) if a not in good_pred]
    missed = [t for t in np.unique(truth) if t and t not in good_true]
    corrected = prediction.copy()
    corrected[np.isin(corrected, wrong)] = 0
    paint = np.isin(truth, missed)
    corrected[paint] = truth[paint].astype(corrected.dtype) + corrected.max()
    return corrected, edited_regions(corrected != prediction, margin)


def evaluate_finetune(ks: tuple[int, ...] = (1, 2)) -> dict[str, object]:
    """Fine-tune `nuclei` on k corrected CTC HeLa frames with the GUI's default schedule.

    The corrections are simulated from the ground truth the way a user would make them in
    the GUI (see :func:`simulate_corrections`), and the model trains on the known-mask the GUI
    would compute. AP@0.5 is reported on the other frames with objects touching the image
    border removed from prediction and truth: this ground truth does not annotate nuclei cut
    by the border, so counting them would call every correct border nucleus a false positive
    (the raw AP is recorded in the JSON too).
    """
    import torch
    from skimage.segmentation import clear_border

    from napari_unet.core.bundle import bundle_from_config, new_config
    from napari_unet.core.generators import run_to_end
    from napari_unet.core.inference import PredictOptions, predict
    from napari_unet.core.io import read_image
    from napari_unet.core.metrics import instance_scores
    from napari_unet.core.options import TrainSettings
    from napari_unet.core.registry import load_bundle
    from napari_unet.core.samples import TrainingSample
    from napari_unet.core.training import iter_finetune

    frames = sorted(p.stem for p in (DATA / "ctc_hela" / "images").glob("*.tif"))
    images = {f: read_image(DATA / "ctc_hela" / "images" / f"{f}.tif").data for f in frames}
    truths = {f: read_image(DATA / "ctc_hela" / "labels" / f"{f}.tif").data for f in frames}
    base = load_bundle("nuclei")
    margin = max(16, int(base.config["object_diameter"]))
    base_predictions = {f: predict(images[f], base, PredictOptions()).labels for f in frames}
    corrections = {f: simulate_corrections(base_predictions[f], truths[f], margin) for f in frames}

    def scores(labels, f):
        return instance_scores(clear_border(labels), clear_border(truths[f])).at(
            0.5
        ), instance_scores(labels, truths[f]).at(0.5)

    def ap(bundle, names, predictions=None):
        pairs = [
            scores(
                predictions[f]
                if predictions
                else predict(images[f], bundle, PredictOptions()).labels,
                f,
            )
            for f in names
        ]
        return float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))

    def train(start, names, settings):
        samples = [
            TrainingSample(images[f], corrections[f][0], corrections[f][1], "YX", f) for f in names
        ]
        t0 = time.perf_counter()
        result = run_to_end(iter_finetune(start, samples, settings))
        return result.bundle, time.perf_counter() - t0

    runs = []
    for k in ks:
        for subset in itertools.combinations(frames, k):
            rest = [f for f in frames if f not in subset]
            before, before_raw = ap(base, rest, base_predictions)
            tuned, seconds = train(base, subset, TrainSettings())
            after, after_raw = ap(tuned, rest)
            torch.manual_seed(0)
            architecture = {
                key: v
                for key, v in base.config["architecture"].items()
                if key not in ("n_classes", "in_channels")
            }
            scratch_bundle = bundle_from_config(
                new_config(
                    architecture=architecture,
                    mode="instances",
                    object_diameter=base.config["object_diameter"],
                )
            )
            scratch, scratch_seconds = train(
                scratch_bundle, subset, TrainSettings(learning_rate=2e-3)
            )
            run = {
                "k": k,
                "train": list(subset),
                "test": rest,
                "known_fraction": float(np.mean([corrections[f][1].mean() for f in subset])),
                "before": before,
                "after": after,
                "scratch": ap(scratch, rest)[0],
                "before_raw": before_raw,
                "after_raw": after_raw,
                "seconds": seconds,
                "scratch_seconds": scratch_seconds,
            }
            runs.append(run)
            print(
                f"k={k} corrected {subset} ({run['known_fraction']:.0%} of pixels known) -> AP@0.5 on {rest}: base {before:.3f}, fine-tuned {run['after']:.3f} ({seconds:.0f} s), from scratch {run['scratch']:.3f}",
                flush=True,
            )
    summary = {}
    print(
        f"\nfine-tuning nuclei on corrected CTC Fluo-N2DL-HeLa frames, default GUI schedule ({TrainSettings().steps} steps, lr {TrainSettings().learning_rate:g})"
    )
    print(
        f"{'k':>2} {'runs':>4} {'base AP@0.5':>12} {'fine-tuned':>16} {'gain':>22} {'from scratch':>16} {'seconds':>14}"
    )
    for k in ks:
        rs = [r for r in runs if r["k"] == k]
        gain = np.array([r["after"] - r["before"] for r in rs])
        summary[k] = {
            "runs": len(rs),
            "before": float(np.mean([r["before"] for r in rs])),
            "after_mean": float(np.mean([r["after"] for r in rs])),
            "after_std": float(np.std([r["after"] for r in rs])),
            "gain_mean": float(gain.mean()),
            "gain_min": float(gain.min()),
            "gain_max": float(gain.max()),
            "scratch_mean": float(np.mean([r["scratch"] for r in rs])),
            "scratch_std": float(np.std([r["scratch"] for r in rs])),
            "seconds_mean": float(np.mean([r["seconds"] for r in rs])),
            "seconds_max": float(np.max([r["seconds"] for r in rs])),
        }
        s = summary[k]
        print(
            f"{k:>2} {s['runs']:>4} {s['before']:12.3f} {s['after_mean']:9.3f} ± {s['after_std']:.3f} {s['gain_mean']:+7.3f} ({s['gain_min']:+.3f}..{s['gain_max']:+.3f}) {s['scratch_mean']:9.3f} ± {s['scratch_std']:.3f} {s['seconds_mean']:6.0f} (max {s['seconds_max']:.0f})"
        )
    return {"runs": runs, "summary": summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("nuclei", "em", "finetune", "all"))
    parser.add_argument("--model", default="nuclei", help="nuclei model to measure (name or file)")
    parser.add_argument(
        "--em-model", default="em-membranes", help="EM model to measure (name or file)"
    )
    parser.add_argument("--quick", action="store_true", help="nuclei: every sixth image only")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        help="nuclei: only these scales and options (default: all)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="write the JSON here (default: benchmarks/results/accuracy_WHAT.json)",
    )
    args = parser.parse_args()
    if args.output and args.what == "all":
        parser.error("--output needs one of nuclei, em, finetune")
    if args.variants and not args.output:
        parser.error("--variants needs --output: the full results file would lose its variants")
    if args.output and not args.output.parent.is_dir():
        parser.error(f"--output: no folder {args.output.parent}")
    import torch

    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    jobs = {
        "nuclei": lambda: evaluate_nuclei(args.model, args.quick, args.variants),
        "em": lambda: {
            "plain": evaluate_em(args.em_model),
            "tta": evaluate_em(args.em_model, tta=True),
        },
        "finetune": evaluate_finetune,
    }
    for name, job in jobs.items():
        if args.what in (name, "all"):
            result = job()
            result["date"] = time.strftime("%Y-%m-%d")
            (args.output or RESULTS / f"accuracy_{name}.json").write_text(
                json.dumps(result, indent=1, default=str)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

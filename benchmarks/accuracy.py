"""Accuracy of the bundled models and of fine-tuning from corrections, on real data.

    python benchmarks/accuracy.py nuclei      # held-out DSB 2018 grey images vs a classical baseline
    python benchmarks/accuracy.py em          # held-out ISBI 2012 sections
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
from train_bundled import DATA, dsb_split, isbi_split  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def classical_baseline(image: np.ndarray) -> np.ndarray:
    """Otsu threshold + distance-transform watershed (the usual non-learned pipeline)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    smooth = gaussian(image.astype(np.float32), 1.0)
    mask = smooth > threshold_otsu(smooth)
    distance = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(
        distance, min_distance=4, labels=ndi.label(mask)[0], exclude_border=False
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask)


def score_instances(predictions: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    from napari_unet.core.metrics import instance_scores

    scores = [instance_scores(p, t) for p, t in zip(predictions, truths, strict=True)]
    return {
        "images": len(scores),
        "ap50": float(np.mean([s.at(0.5) for s in scores])),
        "ap75": float(np.mean([s.at(0.75) for s in scores])),
        "ap50_95": float(np.mean([s.mean_ap for s in scores])),
        "precision50": float(np.mean([s.precision(0.5) for s in scores])),
        "recall50": float(np.mean([s.recall(0.5) for s in scores])),
    }


def evaluate_nuclei() -> dict[str, object]:
    from napari_unet.core.inference import PredictOptions, predict
    from napari_unet.core.io import read_image
    from napari_unet.core.registry import load_bundle

    bundle = load_bundle("nuclei")
    ids = dsb_split()["heldout"]
    truths, ours, baseline = [], [], []
    start = time.perf_counter()
    for image_id in ids:
        grey = read_image(DATA / "dsb2018_train" / "images" / f"{image_id}.png").data[..., 0]
        truths.append(read_image(DATA / "dsb2018_train" / "labels" / f"{image_id}.tif").data)
        ours.append(predict(grey, bundle, PredictOptions()).labels)
        baseline.append(classical_baseline(grey))
    result = {
        "nuclei": score_instances(ours, truths),
        "otsu_watershed": score_instances(baseline, truths),
        "seconds": time.perf_counter() - start,
    }
    print(
        f"\nnuclei on {len(ids)} held-out grey DSB 2018 images (split: benchmarks/splits/dsb2018_grey_split.json)"
    )
    print(
        f"{'method':<16} {'AP@0.5':>7} {'AP@0.75':>8} {'AP@.5:.95':>10} {'P@0.5':>6} {'R@0.5':>6}"
    )
    for name in ("nuclei", "otsu_watershed"):
        r = result[name]
        print(
            f"{name:<16} {r['ap50']:7.3f} {r['ap75']:8.3f} {r['ap50_95']:10.3f} {r['precision50']:6.3f} {r['recall50']:6.3f}"
        )
    return result


def evaluate_em() -> dict[str, object]:
    from scipy import ndimage as ndi

    from napari_unet.core.inference import PredictOptions, predict
    from napari_unet.core.io import read_image
    from napari_unet.core.metrics import class_iou, pixel_error, rand_error
    from napari_unet.core.registry import load_bundle

    bundle = load_bundle("em-membranes")
    rows = []
    for section in isbi_split()["heldout"]:
        image = read_image(DATA / "isbi2012_em" / "images" / f"{section}.png").data
        truth = (read_image(DATA / "isbi2012_em" / "labels" / f"{section}.png").data == 0).astype(
            np.uint8
        )
        labels = predict(image, bundle, PredictOptions()).labels
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
    print(f"\nem-membranes on held-out ISBI 2012 training sections {[r['section'] for r in rows]}")
    print(
        f"pixel error {mean['pixel_error']:.4f}  membrane IoU {mean['membrane_iou']:.3f}  Rand error {mean['rand_error']:.4f}"
    )
    return {"sections": rows, "mean": mean}


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
    args = parser.parse_args()
    import torch

    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    jobs = {"nuclei": evaluate_nuclei, "em": evaluate_em, "finetune": evaluate_finetune}
    for name, job in jobs.items():
        if args.what in (name, "all"):
            result = job()
            result["date"] = time.strftime("%Y-%m-%d")
            (RESULTS / f"accuracy_{name}.json").write_text(
                json.dumps(result, indent=1, default=str)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

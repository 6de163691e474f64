"""Does correcting what "Correct next" ranks first teach a fine-tune more than random fixes?

    python benchmarks/correct_next.py [--scenarios large hela uneven] [--repeats 5] [--n 15]
        [--steps N] [--others N] [--quick] [--json PATH] [--data DIR]

For each of benchmarks/finetune_gain.py's report scenarios (domain shifts the bundled
``nuclei`` model handles badly; its builders, simulated user and fine-tuning are reused), the
base model segments the user image with the GUI's defaults, and two simulated users spend N
visits each:

    ranked  visits the top N places of :func:`napari_unet.core.review.review` (flip TTA, the
            same model and ``PredictOptions()``), in order. Where the place is wrong
            (a true nucleus there is missed, split or merged, or the object is a false
            positive) it repaints those nuclei to the ground truth (erasing the predictions that
            belong to them) or erases the false object; a place that is right is left as it is.
    random  fixes N wrong objects drawn at random (nuclei in error and false positives alike),
            the same way; a fresh draw per repeat.

Each corrected plane (known-mask: the GUI's edited regions, 16-pixel margin) fine-tunes the
base with ``TrainSettings()`` (the panel's defaults; the repeat's seed), and AP@0.5 is scored on
the scenario's other images. Printed per repeat: the fixes made, AP after, and the gain over
the base for both arms; then mean ± sd over repeats of both gains and of their paired
difference (ranked - random), per scenario and over all. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import finetune_gain as fg  # noqa: E402  (the scenarios, simulated user and fine-tune)

REPORT = [name for name in fg.SCENARIOS if fg.PURPOSE[name] == "report"]
N_VISITS = 15
QUICK_STEPS, QUICK_REPEATS, QUICK_OTHERS = 3, 2, 2


@dataclass
class Arm:
    """One simulated user's corrections: the labels, known-mask and what was fixed."""

    corrections: fg.Corrections
    visits: int  # places looked at
    fixes: int  # of which were wrong and fixed


def correct(
    pred: np.ndarray,
    truth: np.ndarray,
    errors: fg.Errors,
    targets: list[tuple[str, int]],
) -> fg.Corrections:
    """Apply fixes in order: ``("true", id)`` repaints a wrong true nucleus (and the nuclei its
    fix drags along, :func:`finetune_gain.repaint_group`), ``("false", id)`` erases a false
    positive. The known-mask is the GUI's edited regions."""
    from napari_unet.gui.corrections import edited_regions

    corrected = pred.astype(np.uint32, copy=True)
    next_id = int(corrected.max()) + 1
    repainted: set[int] = set()
    erased = 0
    for kind, k in targets:
        if kind == "false":
            erased += int((corrected == k).any())
            corrected[corrected == k] = 0
            continue
        if k in repainted:
            continue
        group, erase = fg.repaint_group(errors, k)
        corrected[np.isin(corrected, list(erase))] = 0
        for t in sorted(group - repainted):
            corrected[truth == t] = next_id
            next_id += 1
        repainted |= group
    known = edited_regions(corrected != pred, fg.MARGIN)
    return fg.Corrections(corrected, known, {}, len(repainted), erased)


def ranked_targets(
    items: list[Any], pred: np.ndarray, truth: np.ndarray, errors: fg.Errors
) -> list[list[tuple[str, int]]]:
    """What is wrong at each ranked place (an empty list where it is right)."""
    wrong_true = set(errors.ranked)
    false = set(errors.false_positives)
    p, t, _ = errors.pairs
    targets = []
    for item in items:
        if item.label:
            found = [("true", int(k)) for k in t[p == item.label] if int(k) in wrong_true]
            if item.label in false:
                found.append(("false", int(item.label)))
        else:
            top, left, bottom, right = item.bbox
            window = truth[top:bottom, left:right]
            found = [("true", int(k)) for k in np.unique(window) if int(k) in wrong_true]
        targets.append(found)
    return targets


def ranked_arm(
    items: list[Any], pred: np.ndarray, truth: np.ndarray, errors: fg.Errors, n: int
) -> Arm:
    """The user who visits the top ``n`` ranked places and fixes those that are wrong."""
    per_place = ranked_targets(items[:n], pred, truth, errors)
    flat = [target for found in per_place for target in found]
    return Arm(correct(pred, truth, errors, flat), len(per_place), sum(map(bool, per_place)))


def random_arm(pred: np.ndarray, truth: np.ndarray, errors: fg.Errors, n: int, seed: int) -> Arm:
    """The user who fixes ``n`` wrong objects drawn at random."""
    pool = [("true", k) for k in errors.ranked] + [("false", k) for k in errors.false_positives]
    rng = np.random.default_rng(1000 + seed)
    chosen = [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]
    return Arm(correct(pred, truth, errors, chosen), len(chosen), len(chosen))


def gain(
    base: Any, scenario: fg.Scenario, arm: Arm, settings: Any, n_others: int
) -> tuple[float, float]:
    """Fine-tune on the arm's corrections; (AP@0.5 on the other images after, seconds)."""
    result, seconds = fg.finetune(base, scenario, arm.corrections, settings)
    others = scenario.others[:n_others]
    predictions, _ = fg.timed_predictions(result.bundle, others, scenario.axes)
    after = float(np.mean(fg.per_image_ap(predictions, others, scenario.clear_border)))
    return after, seconds


def mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):+.3f} ± {fg.sd(values):.3f}"


def run_scenario(
    base: Any, name: str, args: argparse.Namespace, settings: Any
) -> list[dict[str, Any]]:
    """Both arms over the repeats of one scenario; prints a table and returns its rows."""
    from napari_unet.core.options import PredictOptions
    from napari_unet.core.review import review

    scenario = fg.build_scenario(args.data, name)
    user = scenario.user
    pred = fg.predict_labels(base, user.image, scenario.axes)
    errors = fg.find_errors(pred, user.truth, scenario.clear_border)
    start = time.perf_counter()
    items = review(user.image, pred, base, PredictOptions(), axes=scenario.axes, min_score=0.0)
    review_seconds = time.perf_counter() - start
    others = scenario.others[: args.others]
    before_predictions, _ = fg.timed_predictions(base, others, scenario.axes)
    before = float(np.mean(fg.per_image_ap(before_predictions, others, scenario.clear_border)))
    ranked = ranked_arm(items, pred, user.truth, errors, args.n)
    print(f"\n=== {name}: {scenario.why}")
    print(
        f"user image {user.id[:12]}: {fg.object_count(user.truth)} nuclei, "
        f"{len(errors.ranked)} wrong, {len(errors.false_positives)} false positives; "
        f"base AP@0.5 {fg.ap50(pred, user.truth, scenario.clear_border):.3f}; "
        f"review {review_seconds:.1f} s, {len(items)} places ranked"
    )
    print(
        f"ranked: of the top {ranked.visits} places {ranked.fixes} were wrong "
        f"({ranked.corrections.repainted} nuclei repainted, {ranked.corrections.erased} erased; "
        f"known {ranked.corrections.known.mean():.1%}); top reasons: "
        + "; ".join(f"{i.reason} {i.score:.2f}" for i in items[:3])
    )
    print(f"base AP@0.5 on {len(others)} other images: {before:.3f}")
    print(
        f"{'seed':>4} {'rnd fixes':>9} {'ranked AP':>9} {'random AP':>9} "
        f"{'ranked gain':>11} {'random gain':>11} {'diff':>7} {'train s':>7}"
    )
    rows = []
    for seed in range(args.repeats):
        run_settings = dataclasses.replace(settings, seed=seed)
        rand = random_arm(pred, user.truth, errors, args.n, seed)
        ranked_after, s1 = gain(base, scenario, ranked, run_settings, args.others)
        random_after, s2 = gain(base, scenario, rand, run_settings, args.others)
        row = {
            "scenario": name,
            "seed": seed,
            "before": before,
            "ranked_after": ranked_after,
            "random_after": random_after,
            "ranked_gain": ranked_after - before,
            "random_gain": random_after - before,
            "ranked_fixes": ranked.fixes,
            "random_fixes": rand.fixes,
            "random_repainted": rand.corrections.repainted,
            "random_erased": rand.corrections.erased,
        }
        row["difference"] = row["ranked_gain"] - row["random_gain"]
        rows.append(row)
        print(
            f"{seed:>4} {rand.fixes:>9} {ranked_after:9.3f} {random_after:9.3f} "
            f"{row['ranked_gain']:+11.3f} {row['random_gain']:+11.3f} {row['difference']:+7.3f} "
            f"{(s1 + s2) / 2:7.1f}",
            flush=True,
        )
    summarise(rows, name)
    return rows


def summarise(rows: list[dict[str, Any]], title: str) -> None:
    """Mean ± sd over repeats of both gains and their paired difference."""
    print(
        f"--- {title} ({len(rows)} runs): ranked gain {mean_sd([r['ranked_gain'] for r in rows])}, "
        f"random gain {mean_sd([r['random_gain'] for r in rows])}, "
        f"ranked - random {mean_sd([r['difference'] for r in rows])}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=fg.SCENARIOS, default=REPORT)
    parser.add_argument("--repeats", type=int, help="seeds 0..R-1 (default 5, --quick 2)")
    parser.add_argument("--n", type=int, default=N_VISITS, help="places visited per arm")
    parser.add_argument("--steps", type=int, help=f"fine-tune steps (--quick: {QUICK_STEPS})")
    parser.add_argument(
        "--others", type=int, help=f"other images scored (default {fg.DEFAULT_OTHERS})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"check it runs: the first scenario, {QUICK_REPEATS} repeats, {QUICK_STEPS} steps, "
        f"{QUICK_OTHERS} other images",
    )
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--data", type=Path, default=fg.DATA)
    args = parser.parse_args(argv)
    if args.quick:
        args.scenarios = args.scenarios[:1]
    args.repeats = args.repeats or (QUICK_REPEATS if args.quick else 5)
    args.others = min(
        args.others or (QUICK_OTHERS if args.quick else fg.DEFAULT_OTHERS), fg.MAX_OTHERS
    )
    if args.steps is None and args.quick:
        args.steps = QUICK_STEPS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from napari_unet.core.registry import load_bundle

    torch.set_num_threads(2)
    settings = fg.train_settings([], args.steps)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )
    print(f"fine-tune settings: {dataclasses.asdict(settings)}")
    print(
        f"scenarios {args.scenarios}; {args.repeats} repeats; {args.n} places per arm; "
        f"{args.others} other images"
    )
    base = load_bundle("nuclei")
    rows = []
    for name in args.scenarios:
        rows += run_scenario(base, name, args, settings)
    if len(args.scenarios) > 1:
        summarise(rows, "all scenarios")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"argv": sys.argv[1:], "settings": dataclasses.asdict(settings), "rows": rows},
                indent=1,
                default=str,
            )
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

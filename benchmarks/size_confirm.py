"""Does refusing unconfirmed enlargements help? The size estimate with and without the check.

    python benchmarks/size_confirm.py [SCENARIO ...] [--data DIR]

For every image of the chosen ``benchmarks/finetune_gain.py`` scenarios (its user image and
its other images; default: all), the bundled ``nuclei`` model segments the image with the
default options twice, side by side: with :func:`napari_unet.core.diameter.confirms_enlargement`
as shipped, and with it replaced by one that confirms every enlargement (the behaviour before
the check). Printed per scenario: mean AP@0.5 and, per image, AP@0.5 and the scale factor the
size estimate chose.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import finetune_gain  # noqa: E402  (a sibling script: scenarios and scoring)


def main() -> None:
    import napari_unet.core.inference as inference
    from napari_unet.core.diameter import confirms_enlargement
    from napari_unet.core.registry import load_bundle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", choices=finetune_gain.SCENARIOS)
    parser.add_argument("--data", type=Path, default=finetune_gain.DATA)
    args = parser.parse_args()
    bundle = load_bundle("nuclei")
    checks = {"off": lambda first, second: True, "on": confirms_enlargement}
    for name in args.scenarios or finetune_gain.SCENARIOS:
        scenario = finetune_gain.build_scenario(args.data, name)
        items = [scenario.user, *scenario.others]
        print(f"== {name} ({scenario.purpose}) {len(items)} images", flush=True)
        for label, check in checks.items():
            inference.confirms_enlargement = check
            scores, factors = [], []
            for item in items:
                result = inference.predict(
                    item.image, bundle, inference.PredictOptions(), axes=scenario.axes
                )
                scores.append(finetune_gain.ap50(result.labels, item.truth, scenario.clear_border))
                factors.append(result.stats["scale_factor"])
            per_image = " ".join(f"{a:.2f}@{f:.2f}x" for a, f in zip(scores, factors, strict=True))
            print(f"  check {label:3}: mean AP@0.5 {np.mean(scores):.3f}  per image {per_image}")
        inference.confirms_enlargement = confirms_enlargement


if __name__ == "__main__":
    main()

"""What a fine-tuned network keeps of what its base knew, and pulling it back when it forgets.

A few corrections on one kind of image can teach a network something that is wrong elsewhere:
after fine-tuning on dim HeLa nuclei the bundled ``nuclei`` model found nuclei in the dark
background of sparse fluorescence images it used to get right (benchmarks/RESULTS.md). The
base bundle's check patches (labelled patches of its own training data that fine-tuning never
rehearses, :attr:`~napari_unet.core.bundle.ReplaySet.checks`) measure that: both versions
segment them as inference does, and when the new weights score more than a tolerance below the
base, they are moved back towards the base's (a weight-space interpolation, as in WiSE-FT,
Wortsman et al. 2022) until the loss is within the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_unet.core.bundle import Bundle, network_state
from napari_unet.core.inference import predict
from napari_unet.core.metrics import class_iou, instance_scores
from napari_unet.core.options import PredictOptions
from napari_unet.core.samples import TrainingSample

# how far from the base towards the fine-tuned weights to try, after all of the way
PULL_BACK_SHARES = (0.75, 0.5, 0.25, 0.0)


@dataclass(frozen=True)
class RetentionCheck:
    """How the versions scored on the base's check patches, and which weights were kept.

    Attributes
    ----------
    metric : str
        "AP@0.5" (instances) or "mean IoU" (semantic), averaged over the patches.
    patches : int
        How many check patches were segmented.
    base_score, tuned_score : float
        The base's and the fine-tuned weights' score.
    share : float
        How far from the base towards the fine-tuned weights the kept version lies: 1 keeps
        the fine-tuned weights, 0 the base's.
    kept_score : float
        The kept version's score.
    tolerance : float
        The largest loss against the base that was accepted.
    """

    metric: str
    patches: int
    base_score: float
    tuned_score: float
    share: float
    kept_score: float
    tolerance: float

    def describe(self) -> str:
        """One sentence for the panel and the CLI."""
        scores = (
            f"{self.metric} on {self.patches} patches of the model's own training data: "
            f"{self.base_score:.2f} before, {self.tuned_score:.2f} after fine-tuning"
        )
        if self.share == 1.0:
            return f"Kept what it knew ({scores})."
        if self.share == 0.0:
            return (
                f"The corrections made it forget what it knew ({scores}), so the new version "
                "keeps the previous weights."
            )
        return (
            f"The corrections made it forget some of what it knew ({scores}); the fine-tuned "
            f"weights were moved back to {self.share:.0%} of their change "
            f"({self.kept_score:.2f}) before the new version was made from them."
        )


def blended_state(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], share: float
) -> dict[str, torch.Tensor]:
    """Weights ``share`` of the way from ``base`` to ``tuned``: ``base + share * (tuned - base)``.

    Floating-point tensors (weights, biases, batch-norm statistics) are interpolated; integer
    buffers (batch counters) come from ``tuned``. ``share`` 1 is ``tuned``, 0 is ``base``.
    """
    return {
        key: (b + share * (t.to(b.device) - b)) if b.is_floating_point() else t.clone()
        for key, b, t in ((key, base[key], tuned[key]) for key in tuned)
    }


def metric_name(config: dict[str, Any]) -> str:
    """The score :func:`patch_score` gives a model of this ``config``."""
    return "AP@0.5" if config["mode"] == "instances" else "mean IoU"


def patch_score(labels: np.ndarray, truth: np.ndarray, config: dict[str, Any]) -> float:
    """AP@0.5 of instance labels, or the mean class IoU of semantic ones, against ``truth``."""
    if config["mode"] == "instances":
        return instance_scores(labels, np.asarray(truth), (0.5,)).at(0.5)
    return float(np.nanmean(class_iou(labels, np.asarray(truth), len(config["class_names"]))))


def scorer(
    samples: Sequence[TrainingSample], config: dict[str, Any], options: PredictOptions
) -> Callable[[torch.nn.Module], float]:
    """A function giving a network's mean score over ``samples``, segmented as inference
    does with ``options`` (which predicts with an eval-mode copy: the network is not changed)."""

    def score(network: torch.nn.Module) -> float:
        bundle = Bundle(network=network, config=config)
        return float(
            np.mean(
                [
                    patch_score(
                        predict(s.image, bundle, options, axes=s.plane_axes).labels,
                        s.labels,
                        config,
                    )
                    for s in samples
                ]
            )
        )

    return score


def pull_back(
    network: torch.nn.Module,
    base_network: torch.nn.Module,
    score: Callable[[torch.nn.Module], float],
    tolerance: float,
    patches: int,
    metric: str,
) -> RetentionCheck:
    """Score ``network`` against ``base_network`` and, when it lost more than ``tolerance``,
    load into it the first weights of :data:`PULL_BACK_SHARES` that stay within it (the last
    share, 0, is the base's weights)."""
    base_score = score(base_network)
    tuned_score = score(network)
    share, kept = 1.0, tuned_score
    if tuned_score < base_score - tolerance:
        base_state, tuned_state = network_state(base_network), network_state(network)
        for share in PULL_BACK_SHARES:
            network.load_state_dict(blended_state(base_state, tuned_state, share))
            kept = score(network) if share else base_score
            if kept >= base_score - tolerance:
                break
    return RetentionCheck(metric, patches, base_score, tuned_score, share, kept, tolerance)

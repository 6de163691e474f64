"""The probability level that cuts a plane's objects apart, chosen from how sure the network is.

Instance labels grow from seeds where the interior probability passes a level into the
foreground (:func:`napari_unet.core.postprocess.instance_labels`). No one seed level suits every
image (``benchmarks/RESULTS.md``, "the instance threshold"): where the network is sure of the
nuclei, a higher level parts touching nuclei that a soft or crowded image joins at 0.5; where
it is not, as in a dim, noisy image, a higher level breaks nuclei into pieces and loses the dim
ones. The network itself tells the two apart: the share of a plane's foreground (interior +
boundary above 0.5) where the interior probability exceeds :data:`SURE_INTERIOR`. A plane where
that share reaches :data:`SURE_SHARE` is seeded at :data:`SURE_LEVEL`, any other at
:data:`DEFAULT_LEVEL`; the foreground stays at :data:`DEFAULT_LEVEL`, so objects keep their
extent (raising it too shrank them and lost dim ones: -0.04 AP on the CTC HeLa frames, and
fine-tuned versions lost 0.03-0.07 on the base's own images). A level the user gives holds for
seeds and foreground alike. The rule was chosen on images of the ``nuclei`` model's training
families under seven shifts (``benchmarks/seed_level.py``). It is an option (``threshold``
None, "auto"), not the default: a version fine-tuned on a user's corrections gained nothing
from it where its base did (the same AP at this rule and at 0.5), so next to a base that
uses it, fine-tuning showed as a loss (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_unet.core.wording import value_range

SURE_INTERIOR = 0.9  # an interior probability the network counts as sure
SURE_SHARE = 0.25  # share of the foreground that must be sure for the higher level
SURE_LEVEL = 0.7  # the level of a plane the network is sure of
DEFAULT_LEVEL = 0.5  # the level of any other plane (and of the size estimate's looks)


@dataclass(frozen=True)
class PlaneLevel:
    """The level one plane's objects were cut apart at, and why.

    Attributes
    ----------
    level : float
        Interior probability of the seeds.
    sure : float or None
        Share of the plane's foreground the network is sure of, from which the level was
        chosen; None when the user gave the level.
    """

    level: float
    sure: float | None

    @property
    def foreground(self) -> float:
        """Probability of the foreground: the level the user gave, else :data:`DEFAULT_LEVEL`."""
        return self.level if self.sure is None else DEFAULT_LEVEL


def sure_share(probabilities: np.ndarray) -> float:
    """Share of the foreground (interior + boundary > 0.5) whose interior probability exceeds
    :data:`SURE_INTERIOR`; 0 for a plane without foreground.

    Parameters
    ----------
    probabilities : ndarray of shape (3, Y, X)
        Softmax output: background, interior, boundary.
    """
    interior = probabilities[1]
    foreground = (interior + probabilities[2]) > DEFAULT_LEVEL
    found = int(np.count_nonzero(foreground))
    if found == 0:
        return 0.0
    return int(np.count_nonzero(interior[foreground] > SURE_INTERIOR)) / found


def choose_level(probabilities: np.ndarray, given: float | None) -> PlaneLevel:
    """The level to cut a plane at: ``given`` when there is one, else the rule of this module."""
    if given is not None:
        return PlaneLevel(given, None)
    sure = sure_share(probabilities)
    return PlaneLevel(SURE_LEVEL if sure >= SURE_SHARE else DEFAULT_LEVEL, sure)


def describe_levels(levels: Sequence[PlaneLevel]) -> str:
    """One sentence for the user: the level the planes were cut at and why.

    Example: ``"objects seeded at probability 0.7: the network is sure of 46% of the
    foreground (0.5 where under 25%)"``; for stacks, the range over planes. Empty when no
    level was chosen (the level was set).
    """
    shares = [p.sure for p in levels if p.sure is not None]
    if not shares:
        return ""
    cut = f"objects seeded at probability {value_range([p.level for p in levels], '{:g}')}"
    sure = value_range([100 * s for s in shares], "{:.0f}")
    return (
        f"{cut}: the network is sure of {sure}% of the foreground "
        f"({DEFAULT_LEVEL:g} where under {100 * SURE_SHARE:.0f}%)"
    )

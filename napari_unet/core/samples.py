"""The labelled plane: the one currency of training data (torch-free).

The GUI's corrections, the CLI's image/label/mask files and the on-disk training set all
become :class:`TrainingSample` objects, and the trainer takes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TrainingSample:
    """One labelled plane: an image, its labels, and where the labels were checked by a person.

    Attributes
    ----------
    image : ndarray
        Raw pixels with axes ``plane_axes`` (``"YX"``, optionally followed by C and/or S).
    labels : ndarray of shape (Y, X)
        Instance ids or class indices.
    known : ndarray of shape (Y, X) or None
        Nonzero where a person drew or checked the labels; None = everywhere. Outside it the
        labels are what a model predicted and the person left as it was (fine-tuning uses them
        as down-weighted context, see ``TrainSettings.context_weight``).
    plane_axes : str
    source : str
        Where it came from (file and plane), recorded in the model's provenance.
    """

    image: np.ndarray
    labels: np.ndarray
    known: np.ndarray | None = None
    plane_axes: str = "YX"
    source: str = ""

    def rescaled(self, factor: float) -> TrainingSample:
        """The sample resized by ``factor`` along Y and X.

        The image is interpolated linearly (anti-aliased when shrinking); labels and the
        known-mask take the nearest pixel, so ids and classes stay what they were.
        """
        if factor == 1.0:
            return self
        from skimage.transform import resize

        plane = tuple(max(1, round(n * factor)) for n in self.labels.shape)

        def nearest(a: np.ndarray) -> np.ndarray:
            resized = resize(a, plane, order=0, anti_aliasing=False, preserve_range=True)
            return resized.astype(a.dtype)

        image = resize(
            np.asarray(self.image, dtype=np.float32),
            plane + self.image.shape[2:],
            order=1,
            anti_aliasing=factor < 1.0,
            preserve_range=True,
        ).astype(np.float32)
        known = None if self.known is None else nearest(np.asarray(self.known))
        return TrainingSample(
            image, nearest(np.asarray(self.labels)), known, self.plane_axes, self.source
        )

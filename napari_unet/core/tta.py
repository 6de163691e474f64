"""Test-time augmentation: average a predictor's output over the 8 flips and rotations of a tile.

The U-Net paper averaged its EM predictions over rotated copies of each input. A microscope
image has no preferred orientation, so each of the 8 symmetries of the square (4 rotations by
90 degrees, each also mirrored) is an equally valid view; averaging the class probabilities
of all 8 smooths out the orientation-dependent mistakes. It costs 8 forward passes per tile.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet.core.tiling import Predictor

SYMMETRIES = tuple((turns, mirror) for turns in range(4) for mirror in (False, True))


def _view(batch: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    out = np.flip(batch, axis=-1) if mirror else batch
    return np.ascontiguousarray(np.rot90(out, turns, axes=(-2, -1)))


def _undo(output: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    out = np.rot90(output, -turns, axes=(-2, -1))
    return np.flip(out, axis=-1) if mirror else out


class DihedralAverage:
    """A predictor that averages another over the 8 symmetries of each tile.

    Parameters
    ----------
    predictor : callable
        Batch (B, C, Y, X) -> (B, n_classes, Y', X'), where the output is centred on the
        input (same or valid padding), so a rotated input gives the rotated output.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        inner_on_cpu = getattr(predictor, "on_cpu", None)
        # The CPU fallback of a memory-starved GPU run (see MemoryFallback), when the wrapped
        # predictor has one: the same averaging around it.
        self.on_cpu = (lambda: DihedralAverage(inner_on_cpu())) if callable(inner_on_cpu) else None

    @property
    def compute(self) -> Any:
        """The wrapped predictor's device and precision (None for plain callables)."""
        return getattr(self.predictor, "compute", None)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for turns, mirror in SYMMETRIES:
            output = _undo(self.predictor(_view(batch, turns, mirror)), turns, mirror)
            total = output.astype(np.float32) if total is None else total + output
        assert total is not None
        return total / len(SYMMETRIES)

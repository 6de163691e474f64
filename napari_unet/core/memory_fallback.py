"""When a prediction runs out of memory: fewer tiles per batch, then smaller tiles, then the CPU.

Each step down is announced (a notice for the user); the plane that failed is predicted again
from its start, so labels are never assembled from a half-finished plane.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from napari_unet.core.errors import EngineError
from napari_unet.core.tiling import Predictor

MIN_TILE = 128  # smaller tiles are mostly margin: the CPU is the better next step


def is_out_of_memory(error: BaseException) -> bool:
    """True for a GPU (CUDA, MPS) or CPU allocation failure raised by torch."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _device_label(predictor: Predictor, default: str) -> str:
    compute = getattr(predictor, "compute", None)
    return compute.label if compute is not None else default


class MemoryFallback:
    """The predictor, batch size and tile size to use now, and how to step down from them.

    Parameters
    ----------
    predictor : callable
        The batch predictor; if it has an ``on_cpu()`` method, that gives the CPU fallback.
    batch_size, tile : int
        The settings asked for.
    fit : callable
        Rounds a tile size to one the network accepts.
    device : str
        Label of the predictor's device, used in messages when the predictor has none.
    """

    def __init__(
        self,
        predictor: Predictor,
        batch_size: int,
        tile: int,
        fit: Callable[[int], int],
        device: str = "cpu",
    ) -> None:
        self.predictor = predictor
        self.batch_size = batch_size
        self.tile = tile
        self.device = _device_label(predictor, device)
        self._asked = (batch_size, tile)
        self._fit = fit

    def step_down(self, error: BaseException) -> str:
        """Take the next, smaller setting after ``error``; returns the notice to show.

        Raises
        ------
        EngineError
            When one smallest tile per batch on the CPU does not fit either.
        """
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        was = self.device
        if self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            return f"out of memory on {was}: retrying with {self.batch_size} tile(s) per batch"
        smaller = self._fit(self.tile // 2)
        if self.tile // 2 >= MIN_TILE and smaller < self.tile:
            self.tile = smaller
            return f"out of memory on {was}: retrying with {self.tile}-pixel tiles"
        on_cpu = getattr(self.predictor, "on_cpu", None)
        if callable(on_cpu) and not was.startswith("cpu"):
            notice = (
                f"out of memory on {was} even with one {self.tile}-pixel tile per batch: "
                "continuing on the CPU (slower)"
            )
            self.predictor = on_cpu()
            self.device = _device_label(self.predictor, "cpu")
            self.batch_size, self.tile = self._asked
            return notice
        raise EngineError(
            f"out of memory on {was} even with one {self.tile}-pixel tile per batch; "
            "close other programs that use this memory, or segment a smaller image"
        ) from error

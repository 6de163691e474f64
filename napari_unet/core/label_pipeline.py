"""Post-processing of planes on worker threads while the network predicts the next ones.

Turning class probabilities into labels (watershed, small-object removal, resizing back) runs
on the CPU. Done in line, it leaves a GPU idle and makes the network wait; on worker threads
(scikit-image and SciPy release the GIL for most of it) it overlaps the next planes'
prediction. Results come back in submission order, so object ids are numbered exactly as in a
serial run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from napari_unet.core.devices import usable_cores

# Rough peak bytes per pixel of one plane's post-processing: probabilities (3 x float32),
# the float64 relief and int32 markers/output of the watershed, masks and uint32 labels.
BYTES_PER_PIXEL = 40
IN_FLIGHT_BUDGET = 512 * 2**20
MAX_WORKERS = 4


def auto_workers(plane_pixels: int, cpu_count: int | None = None) -> int:
    """Worker threads for post-processing planes of ``plane_pixels`` pixels.

    Half the CPU cores (the rest feed the network), at most :data:`MAX_WORKERS`, and no more
    planes in flight than fit in :data:`IN_FLIGHT_BUDGET`; at least one, so that
    post-processing always overlaps prediction.
    """
    cores = cpu_count or usable_cores()
    by_memory = IN_FLIGHT_BUDGET // max(1, plane_pixels * BYTES_PER_PIXEL)
    return int(max(1, min(MAX_WORKERS, cores // 2, by_memory)))


class LabelPipeline:
    """Runs ``to_labels`` on submitted planes, at most ``workers`` at a time, in order.

    Parameters
    ----------
    to_labels : callable
        Maps one plane's class probabilities to its labels.
    workers : int
        Worker threads; 0 runs ``to_labels`` in line, at submission.
    """

    def __init__(self, to_labels: Callable[..., np.ndarray], workers: int) -> None:
        self._to_labels = to_labels
        self._workers = workers
        self._pool = ThreadPoolExecutor(workers, "napari-unet-labels") if workers else None
        self._pending: deque[tuple[Hashable, Future[np.ndarray]]] = deque()

    def submit(self, key: Hashable, probabilities: np.ndarray, **settings: Any) -> None:
        """Queue one plane; ``key`` comes back with its labels.

        ``settings`` go to ``to_labels`` with the probabilities (e.g. the plane's own minimum
        object size).
        """
        if self._pool is None:
            future: Future[np.ndarray] = Future()
            future.set_result(self._to_labels(probabilities, **settings))
        else:
            future = self._pool.submit(self._to_labels, probabilities, **settings)
        self._pending.append((key, future))

    def collect(self, *, drain: bool = False) -> Iterator[tuple[Hashable, np.ndarray]]:
        """Labels of finished planes, oldest first.

        Waits for the oldest plane while more planes are in flight than there are workers
        (each worker keeps one plane while the network predicts the next), or for every plane
        when ``drain`` is true. Errors raised by ``to_labels`` are raised here.
        """
        while self._pending:
            key, future = self._pending[0]
            must_wait = drain or len(self._pending) > self._workers
            if not (must_wait or future.done()):
                return
            labels = future.result()
            self._pending.popleft()
            yield key, labels

    def close(self) -> None:
        """Drop queued planes and wait for running ones (call when stopping early)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

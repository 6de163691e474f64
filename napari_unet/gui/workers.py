"""Run core generators in napari thread workers without losing their errors.

superqt's generator worker turns a RuntimeError raised inside the generator (every torch
error, CUDA out-of-memory included) into a warning: neither ``errored`` nor ``finished``
fires. :func:`guarded` re-raises every exception as :class:`WorkerError` (not a
RuntimeError), so ``errored`` always fires and the widget can recover.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from napari_unet.core.errors import UnetError


class WorkerError(UnetError):
    """An exception raised inside a background job, carried to the main thread."""


def guarded(generator: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Forward ``generator`` (yields, sends and return value), re-raising errors as WorkerError."""
    try:
        return (yield from generator)
    except UnetError as error:
        raise WorkerError(str(error)) from error
    except Exception as error:  # torch RuntimeError, MemoryError, bugs: all must reach the user
        raise WorkerError(f"{type(error).__name__}: {error}") from error


def worker_thread_count() -> int:
    """Torch threads for jobs inside napari: all cores but one, which stays with the viewer.

    Measured on 2 cores (benchmarks/ui_responsiveness.py): 1 thread segmented and trained as
    fast as 2 inside napari and kept the heartbeat's p99.9 stall near 50-110 ms instead of
    125-450 ms.
    """
    from napari_unet.core.devices import usable_cores

    return max(1, usable_cores() - 1)


def start_worker(
    factory: Callable[[], Generator[Any, Any, Any]],
    *,
    on_yield: Callable[[Any], None],
    on_return: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    on_finish: Callable[[], None],
) -> Any:
    """Start ``factory()`` in a napari GeneratorWorker with every signal connected up front.

    The slots run on the main thread; they are the only place that touches layers. When the
    worker is aborted (``quit()``), the job's generator is closed at once in the worker's
    thread, so its clean-up (``finally`` blocks: helper threads, open files) runs now rather
    than whenever the abandoned generator is garbage-collected.
    """
    from napari.qt.threading import create_worker
    from qtpy.QtCore import Qt

    running: list[Generator[Any, Any, Any]] = []

    def job() -> Generator[Any, Any, Any]:
        import torch

        torch.set_num_threads(worker_thread_count())
        running.append(guarded(factory()))
        return (yield from running[0])

    def close_job() -> None:  # runs in the worker's thread, between two steps of the job
        if running:
            running[0].close()

    # errored must be connected at creation, or superqt re-raises the error on the main thread
    connections = {
        "yielded": on_yield,
        "returned": on_return,
        "errored": on_error,
        "finished": on_finish,
    }
    worker = create_worker(job, _connect=connections, _start_thread=False)
    worker.aborted.connect(close_job, Qt.ConnectionType.DirectConnection)
    worker.start()
    return worker

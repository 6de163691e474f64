"""Run core generators in napari thread workers: a :class:`JobRunner` owns one worker's life.

A panel describes each job as a :class:`Job` (the generator to run in the worker's thread,
its title, what to do with its result); its :class:`JobRunner`, made once with how the panel
shows progress and errors, starts the job (one at a time), shows its progress in napari's
activity dock, passes on the user's Stop or Cancel, turns its error into a notification,
tells the panel how it ended (:class:`JobEnd`), and stops it when napari closes. This is the only module that
creates workers or connects their signals (a test checks it).

superqt's generator worker turns a RuntimeError raised inside the generator (every torch
error, CUDA out-of-memory included) into a warning: neither ``errored`` nor ``finished``
fires. :func:`guarded` re-raises every exception as :class:`WorkerError` (not a
RuntimeError), so ``errored`` always fires and the panel can recover.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

from napari_unet.core.errors import UnetError

R = TypeVar("R")


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


@dataclass(frozen=True)
class Step:
    """How far a job is, for napari's activity dock: ``done`` of ``total`` (0: unknown), ``text``."""

    done: int
    total: int
    text: str


def stage_step(item: Any) -> Step:
    """The :class:`Step` of a core progress record with ``done``, ``total`` and ``stage``
    (:class:`~napari_unet.core.inference.Progress`, export steps)."""
    return Step(item.done, item.total, item.stage)


def _ignore(*_: Any) -> None:
    """A callback that does nothing."""


@dataclass(frozen=True)
class Job(Generic[R]):
    """A background job as a panel describes it; its :class:`JobRunner` runs it.

    Attributes
    ----------
    work : callable
        ``work(stop)`` returns the generator to run; it is called, and the generator runs, in
        the worker's thread, so it may only read copies made on the main thread. ``stop`` is
        a :class:`threading.Event` set when the user asks the job to stop
        (:meth:`JobRunner.stop`) or napari closes; a job that can stop early passes it to its
        core generator, which then returns its best result so far.
    title : str
        What napari's activity dock shows while it runs (e.g. ``"segmenting cells"``); an
        empty title keeps the job out of the activity dock (a quiet autosave).
    failure : str
        Start of the error notification, e.g. ``"Segmentation failed"``.
    on_result : callable
        Main thread: called with the generator's return value (not after a cancel).
    """

    work: Callable[[threading.Event], Generator[Any, Any, R]]
    title: str
    failure: str
    on_result: Callable[[R], None] = _ignore


class JobEnd(Enum):
    """How a job ended."""

    DONE = "done"  # the generator returned (also after a Stop: with its best result so far)
    FAILED = "failed"  # it raised; the user was notified
    CANCELLED = "cancelled"  # aborted (Cancel) before it returned: there is no result


@dataclass(eq=False)
class _Running:
    """One started job: what the main thread keeps, and what the two threads share.

    Attributes
    ----------
    job : Job
        Main thread only.
    stop : threading.Event
        Shared: set on the main thread (Stop, closing), read by the job in the worker's thread.
    done : threading.Event
        Shared: set in the worker's thread when the worker has finished; :meth:`JobRunner.close`
        waits for it on the main thread.
    worker : GeneratorWorker or None
        Main thread only; its signals are delivered on the main thread.
    activity : napari.utils.progress or None
        The job's entry in napari's activity dock (main thread only).
    end : JobEnd
        Main thread only: DONE or FAILED once ``returned`` or ``errored`` came, else CANCELLED.
    generator : generator or None
        Worker's thread only: the running job, created there and closed there when aborted.
    """

    job: Job[Any]
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    worker: Any = None
    activity: Any = None
    end: JobEnd = JobEnd.CANCELLED
    generator: Generator[Any, Any, Any] | None = None


class JobRunner:
    """Runs one :class:`Job` at a time in a napari worker and owns that worker's life.

    The parameters say how the panel shows its jobs; every callback runs on the main thread.

    Parameters
    ----------
    on_yield : callable, optional
        Called with every item a job yields (the panel's own progress bar, plot...).
    measure : callable, optional
        The :class:`Step` a yielded item tells, for napari's activity dock, or None.
    status : callable, optional
        Shows a line of text in the panel: ``"Failed: <error>"`` when a job fails (the error
        is also shown as a notification).
    on_end : callable, optional
        After every job, once its result or error was handled: called with its
        :class:`JobEnd`. Panels re-enable their buttons here. Not called after :meth:`close`
        (the panel may be gone) nor for a job another one replaced.
    finish_on_close : bool
        What :meth:`close` does with a running job: abort it at its next yield (False), or
        wait for it to finish (True: a save of the user's corrections is never cut short).

    Notes
    -----
    Every method and callback runs on the main thread, which alone touches layers and
    widgets. Only ``Job.work``'s generator runs in the worker's thread; the two threads share
    nothing but :class:`_Running`'s ``stop`` and ``done`` events (see there).
    """

    def __init__(
        self,
        *,
        on_yield: Callable[[Any], None] = _ignore,
        measure: Callable[[Any], Step | None] = _ignore,
        status: Callable[[str], None] = _ignore,
        on_end: Callable[[JobEnd], None] = _ignore,
        finish_on_close: bool = False,
    ) -> None:
        self._on_yield = on_yield
        self._measure = measure
        self._status = status
        self._on_end = on_end
        self._finish_on_close = finish_on_close
        self._running: _Running | None = None

    @property
    def running(self) -> bool:
        """Whether a job is running (until its ``on_end``)."""
        return self._running is not None

    @property
    def worker(self) -> Any:
        """The running job's napari worker, or None."""
        return self._running.worker if self._running is not None else None

    @property
    def stop_requested(self) -> bool:
        """Whether the running job was asked to stop."""
        return self._running is not None and self._running.stop.is_set()

    def start(self, job: Job[Any], *, replace: bool = False) -> Any:
        """Start ``job`` in a worker; returns the worker, or None when one is already running.

        ``replace``: abort the running job instead; its result and end are ignored.
        """
        if self._running is not None:
            if not replace:
                return None
            self._release(cancel=True)
        run = _Running(job)
        run.worker = self._create_worker(run)
        if job.title:
            from napari.utils import progress

            run.activity = progress(total=0, desc=f"napari-unet: {job.title}")
        self._running = run
        run.worker.start()
        return run.worker

    def stop(self) -> None:
        """Ask the running job to stop at its next step and return what it has (cooperative)."""
        if self._running is not None:
            self._running.stop.set()

    def cancel(self) -> None:
        """Abort the running job at its next yield: it returns nothing (``JobEnd.CANCELLED``)."""
        if self._running is not None:
            self._running.worker.quit()

    def close(self, msecs: int = 5000) -> None:
        """Napari or the panel is closing: stop the running job and wait for it (``msecs``).

        The job is told to stop and aborted (or, with ``finish_on_close``, left to finish);
        whatever it still emits is ignored, as the panel may already be gone.
        """
        run = self._running
        if run is None:
            return
        self._release(cancel=not self._finish_on_close)
        run.done.wait(msecs / 1000)

    # ----- the worker ------------------------------------------------------------------------
    def _create_worker(self, run: _Running) -> Any:
        from napari.qt.threading import create_worker
        from qtpy.QtCore import Qt

        def work() -> Generator[Any, Any, Any]:  # the worker's thread
            import torch

            torch.set_num_threads(worker_thread_count())
            run.generator = guarded(run.job.work(run.stop))
            return (yield from run.generator)

        def close_generator() -> None:  # the worker's thread, between two steps of the job
            if run.generator is not None:
                run.generator.close()  # its finally blocks (helper threads, files) run now

        # errored must be connected at creation, or superqt re-raises the error on the main
        # thread; every slot is told which run it serves, so a replaced run's late signals
        # are recognised and ignored
        connections = {
            "yielded": lambda item: self._yielded(run, item),
            "returned": lambda value: self._returned(run, value),
            "errored": lambda error: self._errored(run, error),
            "finished": lambda: self._finished(run),
        }
        worker = create_worker(work, _connect=connections, _start_thread=False)
        worker.aborted.connect(close_generator, Qt.ConnectionType.DirectConnection)
        worker.finished.connect(run.done.set, Qt.ConnectionType.DirectConnection)
        return worker

    def _yielded(self, run: _Running, item: Any) -> None:
        if run is not self._running:
            return
        self._on_yield(item)
        # last: napari's progress bar processes events when it redraws, so the job's later
        # signals (its result, its end) may be handled inside this call
        step = self._measure(item)
        if step is not None and run.activity is not None:
            run.activity.total = step.total
            run.activity.n = step.done
            run.activity.set_description(f"napari-unet: {run.job.title}: {step.text}")

    def _returned(self, run: _Running, value: Any) -> None:
        if run is not self._running:
            return
        run.end = JobEnd.DONE
        run.job.on_result(value)

    def _errored(self, run: _Running, error: BaseException) -> None:
        if run is not self._running:
            return
        from napari.utils.notifications import show_error

        run.end = JobEnd.FAILED
        show_error(f"{run.job.failure}: {error}")
        self._status(f"Failed: {error}")

    def _finished(self, run: _Running) -> None:
        if run is not self._running:
            return
        self._release(cancel=False)
        self._on_end(run.end)

    def _release(self, *, cancel: bool) -> None:
        """Forget the running job (told to stop, aborted when ``cancel``); close its activity."""
        run, self._running = self._running, None
        if run is None:
            return
        if cancel:
            run.stop.set()
            run.worker.quit()
        if run.activity is not None:
            run.activity.close()

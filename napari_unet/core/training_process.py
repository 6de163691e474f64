"""Run a fine-tune in a spawned child process and follow it as a generator.

Why a child process: building any ``torch.optim`` optimiser imports ``torch._dynamo``, which
loads ``triton`` with PyPI's CUDA builds of torch. Loading triton's LLVM into a process that
already holds Mesa's software OpenGL (llvmpipe: remote desktops, VMs, HPC visualisation nodes,
Xvfb) crashes that process, and a napari window is exactly such a process. The child is a
fresh interpreter (``spawn`` on every platform) with no OpenGL in it, so any torch build
trains safely there; the viewer's process receives only small messages and never imports
``torch._dynamo``. The child also gives a hard stop: closing the generator (the viewer
closing) terminates it.

The protocol over one :func:`multiprocessing.Pipe`:

- parent -> child: ``("stop",)`` (cooperative stop: the run returns its result) and
  ``("add", samples)`` (corrections made while training; see :func:`iter_finetune`).
- child -> parent: ``("status", text)``, ``("step", TrainStep)``, ``("done", TrainResult
  without its network, saved path)`` or ``("error", exception)``.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Generator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from napari_unet.core.errors import EngineError, UnetError
from napari_unet.core.samples import TrainingSample
from napari_unet.core.training import (
    TrainResult,
    TrainSettings,
    TrainStatus,
    TrainStep,
    iter_finetune,
)

POLL_SECONDS = 0.2  # longest wait between two yields while the child is busy
EXIT_GRACE_SECONDS = 5.0


def iter_finetune_in_child(
    base: str | os.PathLike[str],
    samples: Sequence[TrainingSample],
    settings: TrainSettings,
    output: str | os.PathLike[str],
    *,
    threads: int | None = None,
    stop: threading.Event | None = None,
) -> Generator[TrainStatus | TrainStep, Any, TrainResult]:
    """Fine-tune the bundle at ``base`` in a child process and save the result to ``output``.

    Parameters
    ----------
    base : path-like or str
        Model name or bundle path of the starting model (loaded in the child).
    samples : sequence of TrainingSample
        Labelled planes (sent to the child).
    settings : TrainSettings
    output : path-like
        Where the child saves the new bundle (atomically; must not exist).
    threads : int, optional
        torch threads in the child (default: torch's own choice).
    stop : threading.Event, optional
        Set it to stop at the next step; sending ``"stop"`` into the generator does the same.
        The child then returns its result as a normal run does.

    Yields
    ------
    TrainStatus or TrainStep
        A status while the child starts and scores, a step after every optimiser step, and
        the last item again at least every ``POLL_SECONDS`` while the child is busy, so a
        consumer can close the generator promptly.

    Returns
    -------
    TrainResult
        With the saved bundle loaded (its ``path`` is ``output``).

    Raises
    ------
    UnetError
        What the child raised (the same type when it is one of the project's errors), or an
        :class:`~napari_unet.core.errors.EngineError` when the child died.
    """
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe(duplex=True)
    process = context.Process(
        target=_child_main,
        args=(there, str(base), list(samples), settings, str(output), threads),
        name="napari-unet-training",
        daemon=True,
    )
    process.start()
    there.close()
    last: TrainStatus | TrainStep = TrainStatus("starting the training process")
    stop_sent = False
    try:
        yield last
        while True:
            if not stop_sent and stop is not None and stop.is_set():
                here.send(("stop",))
                stop_sent = True
            if here.poll(POLL_SECONDS):
                try:
                    message = here.recv()
                except (EOFError, OSError):
                    message = None
            elif process.is_alive():
                request = yield last
                if request == "stop" and not stop_sent:
                    here.send(("stop",))
                    stop_sent = True
                continue
            else:
                message = None
            if message is None:
                process.join(EXIT_GRACE_SECONDS)
                raise EngineError(
                    "the training process ended unexpectedly "
                    f"(exit code {process.exitcode}); nothing was saved"
                )
            kind, payload = message[0], message[1:]
            if kind == "error":
                raise payload[0]
            if kind == "done":
                result, path = payload
                from napari_unet.core.bundle import load_bundle

                return replace(result, bundle=load_bundle(Path(path)))
            last = payload[0] if kind == "step" else TrainStatus(payload[0])
            request = yield last
            if request == "stop" and not stop_sent:
                here.send(("stop",))
                stop_sent = True
    finally:
        here.close()
        process.join(EXIT_GRACE_SECONDS if not process.is_alive() else 0.5)
        if process.is_alive():
            process.terminate()
            process.join(EXIT_GRACE_SECONDS)


def _child_main(
    connection: Any,
    base: str,
    samples: list[TrainingSample],
    settings: TrainSettings,
    output: str,
    threads: int | None,
) -> None:
    """Entry point of the child: train, save, report; exits when the parent goes away."""
    stop = threading.Event()
    incoming: list[TrainingSample] = []
    lock = threading.Lock()

    def listen() -> None:
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):  # the parent is gone: nobody wants the result
                os._exit(1)
            if message[0] == "stop":
                stop.set()
            elif message[0] == "add":
                with lock:
                    incoming.extend(message[1])

    def take_new_samples() -> list[TrainingSample]:
        with lock:
            taken = list(incoming)
            incoming.clear()
        return taken

    threading.Thread(target=listen, name="napari-unet-control", daemon=True).start()
    try:
        import torch

        from napari_unet.core.bundle import load_bundle, save_bundle

        if threads:
            torch.set_num_threads(threads)
        connection.send(("status", "loading the model"))
        generator = iter_finetune(
            load_bundle(base), samples, settings, stop=stop, more_samples=take_new_samples
        )
        while True:
            try:
                item = next(generator)
            except StopIteration as finished:
                result = finished.value
                break
            connection.send(
                ("status", item.text) if isinstance(item, TrainStatus) else ("step", item)
            )
        path = save_bundle(result.bundle, output)
        connection.send(("done", replace(result, bundle=None), str(path)))
    except UnetError as error:
        connection.send(("error", error))
    except BaseException as error:  # torch errors, MemoryError, bugs: the parent reports them
        connection.send(("error", EngineError(f"{type(error).__name__}: {error}")))
    finally:
        connection.close()

"""Run a fine-tune in a child process and follow it as a generator.

Why a child process: building any ``torch.optim`` optimiser imports ``torch._dynamo``, which
loads ``triton`` with PyPI's CUDA builds of torch. Loading triton's LLVM into a process that
already holds Mesa's software OpenGL (llvmpipe: remote desktops, VMs, HPC visualisation nodes,
Xvfb) crashes that process, and a napari window is exactly such a process. The child is a
fresh interpreter (``python -m napari_unet.core.training_process``) with no OpenGL in it, so
any torch build trains safely there; the viewer's process receives only small messages and
never imports ``torch._dynamo``. The child also gives a hard stop: closing the generator (the
viewer closing) terminates it.

The child is started with :mod:`subprocess`, not :mod:`multiprocessing`: a spawned
multiprocessing child re-runs the parent's main script, which for a user's napari script
without a ``__main__`` guard would open a second viewer. Messages are pickled frames (an
8-byte length, then the pickle) on the child's stdin (parent -> child) and on a duplicate of
its original stdout (child -> parent); the child's ``sys.stdout`` goes to stderr, so a stray
print cannot corrupt them. Both ends are this package, so pickle is safe here.

- parent -> child: ``("start", base, samples, settings, predict_options, output, threads)``
  first, then
  ``("stop",)`` (cooperative stop: the run returns its result) and ``("add", samples)``
  (corrections made while training; see :func:`~napari_unet.core.training.iter_finetune`).
- child -> parent: ``("status", text)``, ``("step", TrainStep)``, ``("done", TrainResult
  without its network, saved path)`` or ``("error", exception)``.
"""

from __future__ import annotations

import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from napari_unet.core.errors import EngineError, UnetError
from napari_unet.core.generators import run_to_end
from napari_unet.core.options import PredictOptions
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
_HEADER = struct.Struct("<Q")
HEARTBEAT = TrainStatus("")  # yielded while waiting for the child: nothing new to show


def iter_finetune_in_child(
    base: str | os.PathLike[str],
    samples: Sequence[TrainingSample],
    settings: TrainSettings,
    output: str | os.PathLike[str],
    *,
    predict_options: PredictOptions | None = None,
    threads: int | None = None,
    stop: threading.Event | None = None,
    more_samples: Callable[[], Sequence[TrainingSample]] | None = None,
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
    predict_options : PredictOptions, optional
        How the versions segment the held-out labels, as in
        :func:`~napari_unet.core.training.iter_finetune`.
    threads : int, optional
        torch threads in the child (default: torch's own choice).
    stop : threading.Event, optional
        Set it to stop at the next step; sending ``"stop"`` into the generator does the same.
        The child then returns its result as a normal run does.
    more_samples : callable, optional
        Polled at every yield; what it returns is sent to the child, where it joins training
        as in :func:`~napari_unet.core.training.iter_finetune`.

    Yields
    ------
    TrainStatus or TrainStep
        A status while the child starts and scores, a step after every optimiser step, and
        a heartbeat (``TrainStatus("")``: nothing new to show) at least every
        ``POLL_SECONDS`` while the child is busy, so a consumer can close the generator
        promptly. Every step is yielded once.

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
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_unet.core.training_process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None if sys.stderr is not None else subprocess.DEVNULL,  # pythonw has none
        env=_child_environment(),
        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console on Windows
    )
    inbox: queue.Queue[Any] = queue.Queue()
    reader = threading.Thread(
        target=_read_frames, args=(process.stdout, inbox), name="napari-unet-training-reader"
    )
    reader.daemon = True
    reader.start()
    stop_sent = False

    def send(message: tuple[Any, ...]) -> None:
        try:
            _write_frame(process.stdin, message)
        except OSError:  # the child is gone; its end is reported when its output closes
            pass

    try:
        send(("start", str(base), list(samples), settings, predict_options, str(output), threads))
        request = yield TrainStatus("starting the training process")
        while True:
            if not stop_sent and (request == "stop" or (stop is not None and stop.is_set())):
                send(("stop",))
                stop_sent = True
            extra = list(more_samples()) if more_samples is not None else []
            if extra:
                send(("add", extra))
            try:
                message = inbox.get(timeout=POLL_SECONDS)
            except queue.Empty:
                request = yield HEARTBEAT
                continue
            if message is None:  # the child's output closed without a result
                code = process.wait(EXIT_GRACE_SECONDS)
                raise EngineError(
                    f"the training process ended unexpectedly (exit code {code}); nothing was saved"
                )
            kind, payload = message[0], message[1:]
            if kind == "error":
                raise payload[0]
            if kind == "done":
                result, path = payload
                from napari_unet.core.registry import load_bundle

                return replace(result, bundle=load_bundle(Path(path)))
            request = yield payload[0] if kind == "step" else TrainStatus(payload[0])
    finally:
        _close_quietly(process.stdin)
        try:
            process.wait(EXIT_GRACE_SECONDS if stop_sent else 0.5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(EXIT_GRACE_SECONDS)
        _close_quietly(process.stdout)


def _child_environment() -> dict[str, str]:
    """The parent's environment, with its import path, so the child imports the same code."""
    paths = [p for p in sys.path if p and Path(p).exists()]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _write_frame(stream: IO[bytes] | None, message: tuple[Any, ...]) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    assert stream is not None
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> Any:
    """One message, or None at the end of the stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    return None if len(data) < size else pickle.loads(data)


def _read_frames(stream: IO[bytes] | None, inbox: queue.Queue[Any]) -> None:
    """Move the child's messages into ``inbox``; None marks the end."""
    assert stream is not None
    try:
        while (message := _read_frame(stream)) is not None:
            inbox.put(message)
    except (OSError, ValueError, pickle.UnpicklingError, EOFError):
        pass
    inbox.put(None)


def _close_quietly(stream: IO[bytes] | None) -> None:
    try:
        if stream is not None:
            stream.close()
    except OSError:
        pass


def _child_main() -> None:
    """Entry point of the child: train, save, report; exits when the parent goes away."""
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    try:  # prints go to stderr, never into the protocol
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # no stderr (pythonw): drop them
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    lock = threading.Lock()

    def reply(message: tuple[Any, ...]) -> None:
        with lock:
            _write_frame(replies, message)

    start = _read_frame(requests)
    if start is None or start[0] != "start":
        os._exit(1)
    _, base, samples, settings, predict_options, output, threads = start
    stop = threading.Event()
    incoming: queue.SimpleQueue[TrainingSample] = queue.SimpleQueue()

    def listen() -> None:
        while True:
            try:
                message = _read_frame(requests)
            except (OSError, ValueError, EOFError):
                message = None
            if message is None:  # the parent is gone: nobody wants the result
                os._exit(1)
            if message[0] == "stop":
                stop.set()
            elif message[0] == "add":
                for sample in message[1]:
                    incoming.put(sample)

    def take_new_samples() -> list[TrainingSample]:
        taken = []
        while not incoming.empty():
            taken.append(incoming.get())
        return taken

    threading.Thread(target=listen, name="napari-unet-control", daemon=True).start()
    try:
        import torch

        from napari_unet.core.registry import load_bundle

        if threads:
            torch.set_num_threads(threads)
        reply(("status", "loading the model"))
        generator = iter_finetune(
            load_bundle(base),
            samples,
            settings,
            stop=stop,
            more_samples=take_new_samples,
            predict_options=predict_options,
        )
        result = run_to_end(
            generator,
            lambda item: reply(
                ("status", item.text) if isinstance(item, TrainStatus) else ("step", item)
            ),
        )
        path = _save_version(result.bundle, Path(output))
        reply(("done", replace(result, bundle=None), str(path)))
    except UnetError as error:
        reply(("error", error))
    except BaseException as error:  # torch errors, MemoryError, bugs: the parent reports them
        reply(("error", EngineError(f"{type(error).__name__}: {error}")))
    finally:
        replies.close()
        if sys.stderr is not None:
            sys.stderr.flush()
        # not a normal interpreter exit: the control thread is blocked reading stdin, and
        # finalising the interpreter under it aborts ("could not acquire lock for stdin")
        os._exit(0)


def _save_version(bundle: Any, output: Path) -> Path:
    """Save a new version at ``output``, or at the next free version name when another
    fine-tune (a second napari window) took that name while this one trained."""
    from napari_unet.core.bundle import save_bundle
    from napari_unet.core.registry import next_version_path

    for _ in range(100):
        try:
            return save_bundle(bundle, output)
        except UnetError:
            if not output.exists():  # not a name collision: report it
                raise
            output = next_version_path(output.name.removesuffix(".safetensors"), output.parent)
    raise EngineError(f"no free version name next to {output}")


if __name__ == "__main__":
    _child_main()

"""How fluid napari stays while napari-unet works: a 10 ms QTimer heartbeat's stalls.

    xvfb-run -a python benchmarks/ui_responsiveness.py [--threads 1 2] [--seconds 20]

Measures, next to an idle baseline, the delay of a 10 ms heartbeat on the Qt main thread
while (a) segmentation and (b) fine-tuning run in the plugin's workers, for each torch thread
count given, and the work's own speed. Prints p50 / p99 / p99.9 / max stall in ms.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

scratch = Path(tempfile.mkdtemp(prefix="napari-unet-ui-"))
os.environ.setdefault("NAPARI_UNET_MODELS_DIR", str(scratch / "models"))
os.environ.setdefault("NAPARI_UNET_TRAINING_DIR", str(scratch / "training"))
os.environ.setdefault("NAPARI_UNET_SETTINGS", str(scratch / "settings.ini"))  # defaults, not yours

INTERVAL_MS = 10


class Heartbeat:
    """Records how late each 10 ms timer tick fires."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.stalls: list[float] = []
        self.last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(INTERVAL_MS)
        self.timer.timeout.connect(self.tick)

    def tick(self) -> None:
        now = time.perf_counter()
        self.stalls.append(max(0.0, (now - self.last) * 1000 - INTERVAL_MS))
        self.last = now

    def start(self) -> None:
        self.stalls.clear()
        self.last = time.perf_counter()
        self.timer.start()

    def stop(self) -> np.ndarray:
        self.timer.stop()
        return np.array(self.stalls)


def pump(app, seconds: float | None = None, until=None) -> float:
    start = time.perf_counter()
    while True:
        app.processEvents()
        time.sleep(0.001)
        elapsed = time.perf_counter() - start
        if (seconds is not None and elapsed >= seconds) or (until is not None and until()):
            return elapsed


def report(name: str, stalls: np.ndarray, extra: str = "") -> None:
    p50, p99, p999 = np.percentile(stalls, [50, 99, 99.9])
    print(
        f"{name:<28} {len(stalls):>6} {p50:7.1f} {p99:7.1f} {p999:8.1f} {stalls.max():7.1f}  {extra}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_unet.gui.demo import open_demo
    from napari_unet.gui.sample_data import nuclei_2d

    viewer = napari.Viewer()
    app = QApplication.instance()
    widget = open_demo(viewer, run=False)
    data, kwargs, _ = nuclei_2d()[0]
    big = np.tile(data, (4, 3))  # 2080 x 2088: long enough to measure
    viewer.add_image(big, name="big nuclei", scale=kwargs["scale"])
    beat = Heartbeat()
    print(f"{'job':<28} {'ticks':>6} {'p50':>7} {'p99':>7} {'p99.9':>8} {'max':>7}  (stall ms)")
    beat.start()
    pump(app, seconds=args.seconds / 2)
    report("idle", beat.stop())
    import napari_unet.gui.workers as workers

    for threads in args.threads:
        workers.worker_thread_count = lambda n=threads: n  # the plugin sets this in each job
        widget.segment.image_combo.setCurrentText("big nuclei")
        beat.start()
        t0 = time.perf_counter()
        widget.segment.run()
        pump(app, until=lambda: widget.segment.worker is None)
        seconds = time.perf_counter() - t0
        report(f"segment, {threads} thread(s)", beat.stop(), f"{big.size / seconds / 1e6:.2f} MP/s")
        labels = viewer.layers["big nuclei labels"]
        labels.data = labels.data  # keep
        if not widget.session.find(labels).tracker.fully_checked:
            widget.session.find(labels).tracker.fully_checked.add(())
        widget.finetune.labels_combo.setCurrentIndex(
            widget.finetune.labels_combo.findData(id(labels))
        )
        widget.finetune.steps_spin.setValue(1000)
        steps: list[float] = []
        beat.start()
        worker = widget.finetune.start()
        worker.yielded.connect(lambda step, times=steps: times.append(time.perf_counter()))
        pump(app, seconds=args.seconds)
        widget.finetune.stop()
        stalls = beat.stop()
        pump(app, until=lambda: widget.finetune.worker is None)
        rate = (len(steps) - 1) / (steps[-1] - steps[0]) if len(steps) > 2 else float("nan")
        report(f"fine-tune, {threads} thread(s)", stalls, f"{rate:.2f} steps/s")
        viewer.layers.remove(labels)
    viewer.close()


if __name__ == "__main__":
    main()

"""The job runner (gui/workers.py): one worker's life, and the only place that wires workers."""

import re
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui

pytest.importorskip("napari")

from napari_unet.gui.workers import Job, JobEnd, JobRunner, Step  # noqa: E402

GUI = Path(__file__).resolve().parents[1] / "napari_unet" / "gui"
WIRING = re.compile(
    r"\.(yielded|returned|errored|finished|started|aborted|warned|paused|resumed)\s*\.\s*connect"
    r"|\bcreate_worker\b|\bthread_worker\b|_connect\s*="
)


def wiring(source: str) -> list[str]:
    """Lines of ``source`` that create a worker or connect one of its signals."""
    return [line.strip() for line in source.splitlines() if WIRING.search(line)]


def test_no_worker_is_wired_outside_the_job_runner():
    assert wiring("w = start(job)\nw.finished.connect(done)\nw.yielded .connect(f)") == [
        "w.finished.connect(done)",
        "w.yielded .connect(f)",
    ]
    assert wiring("from napari.qt.threading import create_worker") != []
    assert wiring("self.segmented.connect(f)\nbutton.clicked.connect(g)") == []
    found = {
        path.name: wiring(path.read_text())
        for path in sorted(GUI.glob("*.py"))
        if path.name != "workers.py"
    }
    assert len(found) > 10
    assert {name: lines for name, lines in found.items() if lines} == {}
    assert wiring((GUI / "workers.py").read_text())  # the runner itself does wire them


def counting(n: int, stop: threading.Event, closed: list[str] | None = None):
    """Yield ``n`` steps (or fewer when stopped), then return how far it went."""
    try:
        for done in range(1, n + 1):
            if stop.is_set():
                return ("stopped", done - 1)
            yield Step(done, n, "counting")
            stop.wait(0.005)
        return ("done", n)
    finally:
        if closed is not None:
            closed.append("closed")


def run_job(qtbot, runner, job, **kwargs):
    worker = runner.start(job, **kwargs)
    assert worker is not None
    return worker


def test_one_job_at_a_time_with_progress_in_the_activity_dock(qtbot):
    from napari.utils import progress

    def shown():  # the job's entries, as napari's activity dock lists them
        return [
            (bar.n, bar.total, bar.desc.removesuffix(": "))  # tqdm ends a description with ": "
            for bar in progress._all_instances
            if "count" in bar.desc
        ]

    ends, results, seen = [], [], []
    start, last = threading.Event(), threading.Event()

    def work(stop):
        start.wait(10)
        yield Step(1, 3, "counting")
        yield Step(2, 3, "counting")
        last.wait(10)
        yield Step(3, 3, "counting")
        return "counted"

    runner = JobRunner(on_yield=seen.append, measure=lambda step: step, on_end=ends.append)
    job = Job(work, "counting cells", "Counting failed", results.append)
    run_job(qtbot, runner, job)
    assert runner.running and runner.worker is not None
    assert shown() == [(0, 0, "napari-unet: counting cells")]
    assert runner.start(job) is None  # one at a time
    start.set()
    qtbot.waitUntil(lambda: len(seen) == 2, timeout=10_000)
    assert shown() == [(2, 3, "napari-unet: counting cells: counting")]
    last.set()
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    assert [step.done for step in seen] == [1, 2, 3]
    assert results == ["counted"] and ends == [JobEnd.DONE]
    assert shown() == []  # closed
    assert runner.worker is None


def test_stop_is_cooperative_and_cancel_aborts(qtbot):
    ends, results = [], []

    def stop_at_2(step):
        if step.done == 2:
            runner.stop()

    runner = JobRunner(on_yield=stop_at_2, on_end=ends.append)
    run_job(qtbot, runner, Job(lambda stop: counting(1000, stop), "", "x", results.append))
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    assert results == [("stopped", 2)] and ends == [JobEnd.DONE]

    closed = []

    def cancel_at_2(step):
        if step.done == 2:
            runner.cancel()

    runner = JobRunner(on_yield=cancel_at_2, on_end=ends.append)
    job = Job(lambda stop: counting(1000, stop, closed), "", "x", results.append)
    run_job(qtbot, runner, job)
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    assert results == [("stopped", 2)] and ends == [JobEnd.DONE, JobEnd.CANCELLED]
    assert closed == ["closed"]  # the aborted generator was closed in its thread


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), ValueError("bad")])
def test_an_error_is_a_notification_and_the_runner_recovers(qtbot, error):
    from napari.utils.notifications import notification_manager

    seen, ends, status = [], [], []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))

    def broken(stop):
        yield Step(0, 1, "")
        raise error

    runner = JobRunner(status=status.append, on_end=ends.append)
    run_job(qtbot, runner, Job(broken, "breaking", "It broke"))
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    assert ends == [JobEnd.FAILED] and status == [f"Failed: {type(error).__name__}: {error}"]
    assert any(m.startswith("It broke: ") and str(error) in m for m in seen)
    run_job(qtbot, runner, Job(lambda stop: counting(1, stop), "", "x"))
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    assert ends == [JobEnd.FAILED, JobEnd.DONE]


def test_replace_ignores_the_old_job_and_close_waits_or_aborts(qtbot):
    ends, results = [], []
    runner = JobRunner(on_end=ends.append)
    gate = threading.Event()

    def slow(stop):
        gate.wait(10)
        return (yield from counting(2, stop))

    old = run_job(qtbot, runner, Job(slow, "", "x", results.append))
    new = run_job(
        qtbot,
        runner,
        Job(lambda stop: counting(1, stop), "", "x", results.append),
        replace=True,
    )
    assert old is not new and old.abort_requested
    gate.set()
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    qtbot.wait(100)  # the old worker's late signals, if any
    assert results == [("done", 1)] and ends == [JobEnd.DONE]

    # closing: a save is left to finish, anything else is stopped; neither calls back
    saved = []
    saver = JobRunner(on_end=ends.append, finish_on_close=True)

    def save(stop):
        for k in range(3):
            stop.wait(0.05)
            saved.append(k)
            yield Step(k + 1, 3, "saving")

    run_job(qtbot, saver, Job(save, "", "x"))
    saver.close()
    assert saved == [0, 1, 2] and not saver.running
    closed, steps = [], []
    runner = JobRunner(on_yield=steps.append, on_end=ends.append)
    run_job(qtbot, runner, Job(lambda stop: counting(10_000, stop, closed), "", "x"))
    qtbot.waitUntil(lambda: bool(steps), timeout=10_000)
    runner.close()
    assert not runner.running and closed == ["closed"]
    qtbot.wait(100)
    assert ends == [JobEnd.DONE]

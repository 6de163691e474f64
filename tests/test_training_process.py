"""Fine-tuning in a child process: results, stop, errors, and no torch._dynamo in the parent."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_unet.core.bundle import save_bundle
from napari_unet.core.errors import EngineError, TrainingDataError
from napari_unet.core.options import TrainSettings
from napari_unet.core.samples import TrainingSample
from napari_unet.core.training import TrainStatus, TrainStep
from napari_unet.core.training_process import iter_finetune_in_child
from tests.conftest import tiny_bundle
from tests.synthetic import disks

QUICK = TrainSettings(steps=8, patch_size=64, batch_size=2, val_every=4, device="cpu")


def samples(n=3):
    return [TrainingSample(*disks((96, 96), seed=i), source=f"disks{i}") for i in range(n)]


@pytest.fixture
def base(tmp_path):
    return save_bundle(tiny_bundle(), tmp_path / "base.safetensors")


def drive(generator, stop_at=None, event=None):
    items = []
    while True:
        try:
            item = next(generator)
        except StopIteration as finished:
            return items, finished.value
        items.append(item)
        if stop_at is not None and isinstance(item, TrainStep) and item.step == stop_at:
            event.set()


def test_child_trains_saves_and_reports(base, tmp_path):
    output = tmp_path / "new.safetensors"
    items, result = drive(iter_finetune_in_child(base, samples(), QUICK, output, threads=1))
    assert isinstance(items[0], TrainStatus)
    # every step once, however often the parent had to wait for the child
    assert [i.step for i in items if isinstance(i, TrainStep)] == list(range(1, 9))
    assert output.is_file() and result.bundle.path == output
    assert result.comparison is not None and not result.stopped
    assert result.bundle.config["training"]["history"][-1]["samples"] == [
        "disks0",
        "disks1",
        "disks2",
    ]


def test_stop_ends_the_child_with_a_result(base, tmp_path):
    event = threading.Event()
    settings = TrainSettings(steps=10_000, patch_size=64, batch_size=2, device="cpu")
    generator = iter_finetune_in_child(
        base, samples(), settings, tmp_path / "s.safetensors", stop=event
    )
    items, result = drive(generator, stop_at=3, event=event)
    steps = [i for i in items if isinstance(i, TrainStep)]
    assert result.stopped and "user" in result.reason and 3 <= len(steps) < 100


def test_errors_in_the_child_keep_their_type(base, tmp_path):
    image, labels = disks((64, 64))
    bad = [TrainingSample(image, labels, np.zeros_like(labels))]
    with pytest.raises(TrainingDataError, match="no labelled pixels"):
        drive(iter_finetune_in_child(base, bad, QUICK, tmp_path / "x.safetensors"))
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
def test_closing_the_generator_ends_the_child(base, tmp_path):
    settings = TrainSettings(steps=10_000, patch_size=64, batch_size=2, device="cpu")
    generator = iter_finetune_in_child(base, samples(), settings, tmp_path / "c.safetensors")
    for item in generator:
        if isinstance(item, TrainStep):
            break
    assert _training_children()
    generator.close()
    deadline = time.monotonic() + 10
    while _training_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _training_children()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
def test_a_dead_child_is_an_engine_error(base, tmp_path):
    settings = TrainSettings(steps=10_000, patch_size=64, batch_size=2, device="cpu")
    generator = iter_finetune_in_child(base, samples(), settings, tmp_path / "d.safetensors")
    with pytest.raises(EngineError, match="ended unexpectedly"):
        for item in generator:
            if isinstance(item, TrainStep):
                for pid in _training_children():
                    os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "d.safetensors").exists()


def _training_children() -> list[int]:
    """Live child processes of this one running the training module (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[1] == str(os.getpid()) and fields[0] != "Z" and b"training_process" in command:
            found.append(int(entry.name))
    return found


def test_a_script_without_a_main_guard_is_not_run_again(tmp_path):
    """The child must not re-run the user's script (multiprocessing's spawn would)."""
    script = tmp_path / "user_script.py"
    marker = tmp_path / "runs.txt"
    script.write_text(
        f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
with open({str(marker)!r}, "a") as f:
    f.write("run\\n")
from tests.test_training_process import QUICK, samples
from tests.conftest import tiny_bundle
from napari_unet.core.bundle import save_bundle
from napari_unet.core.generators import run_to_end
from napari_unet.core.training_process import iter_finetune_in_child
base = save_bundle(tiny_bundle(), {str(tmp_path / "b.safetensors")!r})
run_to_end(iter_finetune_in_child(base, samples(), QUICK, {str(tmp_path / "n.safetensors")!r}))
"""
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert marker.read_text().splitlines() == ["run"]


def test_the_parent_never_imports_torch_dynamo(tmp_path):
    """torch._dynamo loads triton, which crashes a process holding Mesa's OpenGL (napari)."""
    script = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
from tests.test_training_process import QUICK, samples
from tests.conftest import tiny_bundle
from napari_unet.core.bundle import save_bundle
from napari_unet.core.generators import run_to_end
from napari_unet.core.training_process import iter_finetune_in_child
base = save_bundle(tiny_bundle(), {str(tmp_path / "b.safetensors")!r})
result = run_to_end(iter_finetune_in_child(base, samples(), QUICK, {str(tmp_path / "n.safetensors")!r}))
assert result.bundle.path.is_file()
print("dynamo" if "torch._dynamo" in sys.modules else "clean")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "clean"


def test_a_version_name_taken_meanwhile_moves_to_the_next_free_one(tmp_path):
    from napari_unet.core.bundle import save_bundle
    from napari_unet.core.training_process import _save_version
    from tests.conftest import tiny_bundle

    taken = save_bundle(tiny_bundle(), tmp_path / "cells-ft1.safetensors")  # another window
    before = taken.read_bytes()
    saved = _save_version(tiny_bundle(), tmp_path / "cells-ft1.safetensors")
    assert saved == tmp_path / "cells-ft2.safetensors" and saved.is_file()
    assert taken.read_bytes() == before

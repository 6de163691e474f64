"""Faults: stopping a fine-tune anywhere, and a process killed while it saves."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from napari_unet.core.atomic import is_partial
from napari_unet.core.bundle import save_bundle
from napari_unet.core.dataset import TrainingSet
from napari_unet.core.generators import run_to_end
from napari_unet.core.inference import PredictOptions, predict
from napari_unet.core.options import TrainSettings
from napari_unet.core.registry import list_models, load_bundle
from napari_unet.core.samples import TrainingSample
from napari_unet.core.training import iter_finetune
from tests.conftest import tiny_bundle
from tests.synthetic import disks

SETTINGS = TrainSettings(
    steps=16, patch_size=32, batch_size=2, val_fraction=0.0, learning_rate=3e-3, device="cpu"
)


def test_stop_at_twenty_random_steps_leaves_a_working_model(tmp_path):
    samples = [TrainingSample(*disks((64, 64), seed=i)) for i in range(2)]
    stops = np.random.default_rng(2026).integers(1, SETTINGS.steps + 1, size=20)
    image = disks((80, 80), seed=9)[0]
    for number, stop_at in enumerate(stops):
        event = threading.Event()
        generator = iter_finetune(tiny_bundle(), samples, SETTINGS, stop=event)
        result = run_to_end(
            generator, lambda item, k=stop_at, e=event: getattr(item, "step", 0) == k and e.set()
        )
        assert len(result.history) == stop_at
        assert result.stopped == (stop_at < SETTINGS.steps)
        path = save_bundle(result.bundle, tmp_path / f"stopped{number}.safetensors")
        labels = predict(image, load_bundle(path), PredictOptions(device="cpu")).labels
        assert labels.shape == image.shape


SLOW_DISK = """
import time
import napari_unet.core.atomic as atomic

# a slow disk: flushing each file takes 0.2 s, so kills often land inside a save
fsync = atomic.os.fsync
atomic.os.fsync = lambda fd: (time.sleep(0.2), fsync(fd))[1]
"""

SAVE_MODELS = SLOW_DISK + textwrap.dedent(
    """
    import sys
    import torch
    from napari_unet.core.bundle import bundle_from_config, new_config, save_bundle

    bundle = bundle_from_config(new_config(architecture={"depth": 4, "base_channels": 32}))
    version = 0
    while True:
        version += 1
        with torch.no_grad():
            for parameter in bundle.network.parameters():
                parameter.fill_(version)  # every weight tells which version was written
        save_bundle(bundle, sys.argv[1], overwrite=True)
        print(version, flush=True)
    """
)

SAVE_PLANES = SLOW_DISK + textwrap.dedent(
    """
    import sys
    import numpy as np
    from napari_unet.core.dataset import TrainingSet

    training_set = TrainingSet(sys.argv[1], "instances", ["background", "interior", "boundary"])
    training_set.add_image("stack", source="stack.tif", shape=(1000, 512, 512), axes="ZYX")
    rng = np.random.default_rng(0)
    for z in range(1000):
        pixels = rng.integers(0, 4000, (512, 512), dtype=np.uint16)
        labels = np.full((512, 512), z % 7, dtype=np.uint16)
        training_set.put_plane("stack", (z,), pixels, labels, None, fully_checked=True)
        print(z, flush=True)
    """
)


def _kill_mid_write(script: str, target, folder, attempts: int = 12) -> list[str]:
    """Run ``script`` on ``target`` and SIGKILL it at a random moment after its first save,
    until a kill lands in the middle of a write (a temporary ``.partial`` file is left)."""
    rng = np.random.default_rng(7)
    for _ in range(attempts):
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(target)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        printed = [child.stdout.readline().strip()]
        assert printed[0], f"the child saved nothing:\n{child.stderr.read()}"
        time.sleep(float(rng.uniform(0.0, 0.5)))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        printed += child.stdout.read().split()
        if any(is_partial(path) for path in folder.rglob("*")):
            return printed
    pytest.fail(f"no kill landed during a write in {attempts} attempts")


@pytest.mark.slow
def test_kill_while_saving_a_model_keeps_a_whole_version(tmp_path):
    target = tmp_path / "models" / "cells.safetensors"
    target.parent.mkdir()
    printed = _kill_mid_write(SAVE_MODELS, target, target.parent)
    last_reported = int(printed[-1])
    bundle = load_bundle(target)  # never a half-written file
    values = {float(v) for p in bundle.network.parameters() for v in p.detach().unique()}
    assert len(values) == 1, "weights of two versions mixed"
    version = int(values.pop())
    assert last_reported <= version <= last_reported + 1  # saved, maybe not yet reported
    listed = [m.path.name for m in list_models(models_dir=target.parent) if not m.bundled]
    assert listed == [target.name]  # the leftover temporary file is never listed


@pytest.mark.slow
def test_kill_while_saving_a_training_set_keeps_every_listed_plane(tmp_path):
    folder = tmp_path / "training"
    printed = _kill_mid_write(SAVE_PLANES, folder, folder)
    training_set = TrainingSet.open(folder)
    assert len(training_set.planes) >= len(printed)  # every reported plane is listed
    for record in training_set.planes.values():
        sample = training_set.load_plane(record)  # every listed plane loads whole
        assert sample.labels.shape == (512, 512)
        assert np.all(sample.labels == record.index[0] % 7)


def test_a_name_taken_while_writing_is_never_replaced(tmp_path):
    from napari_unet.core.atomic import atomic_path
    from napari_unet.core.errors import InputError

    target = tmp_path / "model.safetensors"
    with pytest.raises(InputError, match="created by another program"):
        with atomic_path(target, overwrite=False) as tmp:
            tmp.write_bytes(b"ours")
            target.write_bytes(b"theirs")  # another run finished first
    assert target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    with atomic_path(tmp_path / "new.bin", overwrite=False) as tmp:
        tmp.write_bytes(b"ours")
    assert (tmp_path / "new.bin").read_bytes() == b"ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "new.bin"]


def test_only_temporary_files_whose_writer_is_gone_are_removed(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from napari_unet.core.atomic import STALE_SECONDS, remove_stale_partials

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)
    dead = tmp_path / f".m.safetensors.pid{dead_pid}-ab12.partial"
    alive = tmp_path / f".m.safetensors.pid{os.getpid()}-cd34.partial"
    old = tmp_path / f".x.tif.pid{os.getpid()}-ef56.partial"
    unnamed = tmp_path / ".y.tif.0123abcd.partial"  # an older release's name: writer unknown
    user_file = tmp_path / "notes.partial"  # not ours (no leading dot)
    for path in (dead, alive, old, unnamed, user_file):
        path.write_bytes(b"x")
    long_ago = time.time() - STALE_SECONDS - 60
    os.utime(old, (long_ago, long_ago))
    removed = remove_stale_partials(tmp_path)
    assert sorted(p.name for p in removed) == sorted(p.name for p in (dead, old, unnamed))
    assert alive.exists() and user_file.exists()

import json

import numpy as np
import pytest

from napari_unet.core.dataset import TrainingSet, image_fingerprint
from napari_unet.core.errors import TrainingDataError
from tests.synthetic import disks


def test_round_trip_and_manifest(tmp_path):
    image, labels = disks((64, 64))
    stack = np.stack([image, image])
    key = image_fingerprint(stack)
    training_set = TrainingSet(
        tmp_path / "set", "instances", ["background", "interior", "boundary"]
    )
    training_set.add_image(key, source="a.tif", shape=stack.shape, axes="ZYX")
    known = np.zeros(labels.shape, bool)
    known[:20] = True
    training_set.put_plane(key, (1,), image, labels, known)
    reopened = TrainingSet.open(tmp_path / "set")
    assert reopened.summary()["planes"] == 1
    (sample,) = reopened.samples()
    np.testing.assert_array_equal(sample.labels, labels)
    np.testing.assert_array_equal(sample.known, known)
    assert sample.source == "a.tif[1]"
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert manifest["planes"][0]["index"] == [1]
    reopened.remove_plane(key, (1,))
    assert TrainingSet.open(tmp_path / "set").summary()["planes"] == 0
    assert not list((tmp_path / "set" / "planes").iterdir())


def test_refuses_other_mode_and_bad_labels(tmp_path):
    image, labels = disks((96, 96))
    TrainingSet(tmp_path, "semantic", ["background", "cell"]).write_manifest()
    with pytest.raises(TrainingDataError, match="semantic"):
        TrainingSet.open_or_create(tmp_path, "instances", ["background", "interior", "boundary"])
    semantic = TrainingSet.open(tmp_path)
    semantic.add_image("k", source="x", shape=image.shape, axes="YX")
    with pytest.raises(TrainingDataError, match="class indices"):
        semantic.put_plane("k", (), image, labels, None)
    with pytest.raises(TrainingDataError, match="not a training set"):
        TrainingSet.open(tmp_path / "nothing")
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(TrainingDataError, match="damaged"):
        TrainingSet.open(tmp_path)


def test_fingerprint_is_stable_and_sensitive():
    a = np.arange(100, dtype=np.uint16).reshape(10, 10)
    assert image_fingerprint(a) == image_fingerprint(a.copy())
    b = a.copy()
    b[0, 0] = 1
    assert image_fingerprint(a) != image_fingerprint(b)


def _saved_set(folder):
    image, labels = disks((32, 32))
    training_set = TrainingSet(folder, "instances", ["background", "interior", "boundary"])
    training_set.add_image("k", source="a.tif", shape=image.shape, axes="YX")
    training_set.put_plane("k", (), image, labels, None)
    return folder / "manifest.json"


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda m: m["planes"][0].update(file="../../etc/passwd"), "points outside its folder"),
        (lambda m: m["planes"][0].update(file="/etc/passwd"), "points outside its folder"),
        (lambda m: m.pop("mode"), "lacks 'mode'"),
        (lambda m: m["planes"][0].pop("index"), "lacks 'index'"),
        (lambda m: m["planes"][0].update(index=["x"]), "is malformed"),
        (lambda m: m.update(class_names=None), "is malformed"),
    ],
)
def test_a_damaged_or_hostile_manifest_is_refused(tmp_path, damage, match):
    path = _saved_set(tmp_path / "set")
    manifest = json.loads(path.read_text())
    damage(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(TrainingDataError, match=match):
        TrainingSet.open(tmp_path / "set")


def test_a_link_out_of_the_set_is_refused(tmp_path):
    path = _saved_set(tmp_path / "set")
    (tmp_path / "outside.npz").write_bytes(b"")
    (tmp_path / "set" / "planes" / "link.npz").symlink_to(tmp_path / "outside.npz")
    manifest = json.loads(path.read_text())
    manifest["planes"][0]["file"] = "planes/link.npz"
    path.write_text(json.dumps(manifest))
    with pytest.raises(TrainingDataError, match="outside"):
        TrainingSet.open(tmp_path / "set")


def test_two_writers_of_one_set_keep_each_others_planes(tmp_path):
    """Two napari windows (or a window and a CLI run) saving corrections into one set."""
    import threading

    folder = tmp_path / "set"
    classes = ["background", "interior", "boundary"]
    writers = [TrainingSet(folder, "instances", classes) for _ in range(2)]
    image, labels = disks((32, 32))
    for n, writer in enumerate(writers):
        writer.add_image(f"img{n}", source=f"{n}.tif", shape=(6, 32, 32), axes="ZYX")

    def save(n):
        for z in range(6):
            writers[n].put_plane(f"img{n}", (z,), image, labels, None)

    threads = [threading.Thread(target=save, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writers[0].remove_plane("img1", (5,))  # removing another writer's plane works too
    reopened = TrainingSet.open(folder)
    assert reopened.summary()["planes"] == 11 and set(reopened.images) == {"img0", "img1"}
    assert len(list((folder / "planes").glob("*.npz"))) == 11

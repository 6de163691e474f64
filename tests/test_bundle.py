import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open

from napari_unet.core.bundle import FORMAT_VERSION, read_bundle_config, save_bundle
from napari_unet.core.errors import BundleError
from napari_unet.core.registry import (
    list_models,
    load_bundle,
    next_version_path,
    resolve_model,
    split_version,
)
from tests.conftest import tiny_bundle


def test_round_trip_keeps_weights_and_config(tmp_path, instance_bundle):
    path = save_bundle(instance_bundle, tmp_path / "m.safetensors")
    loaded = load_bundle(path)
    for key, value in instance_bundle.network.state_dict().items():
        assert torch.equal(value, loaded.network.state_dict()[key]), key
    assert loaded.config["mode"] == "instances"
    assert loaded.config["object_diameter"] == 14.0
    assert loaded.config["format_version"] == FORMAT_VERSION
    assert not loaded.network.training
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left


def test_half_storage_is_smaller_and_close(tmp_path, instance_bundle):
    full = save_bundle(instance_bundle, tmp_path / "full.safetensors")
    half = save_bundle(instance_bundle, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        a = load_bundle(full).network(x)
        b = load_bundle(half).network(x)
    assert torch.allclose(a, b, atol=1e-2)


def test_half_storage_keeps_values_float16_cannot_hold(tmp_path, instance_bundle):
    # a batch norm's running variance past 65504 (seen after 5000 steps from scratch) would
    # turn infinite in float16 and the saved model would not load
    state = instance_bundle.network.state_dict()
    key = next(k for k in state if k.endswith("running_var"))
    with torch.no_grad():
        state[key][0] = 1.5e5
    path = save_bundle(instance_bundle, tmp_path / "half.safetensors", half=True)
    with safe_open(str(path), framework="pt") as handle:
        stored = {k: handle.get_slice(k).get_dtype() for k in handle.keys()}
    assert stored[key] == "F32" and stored["head.weight"] == "F16"
    loaded = load_bundle(path).network.state_dict()
    assert loaded[key][0] == 1.5e5
    assert all(torch.isfinite(v).all() for v in loaded.values() if v.is_floating_point())


def test_existing_path_needs_overwrite(tmp_path, instance_bundle):
    path = save_bundle(instance_bundle, tmp_path / "m.safetensors")
    before = path.read_bytes()
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(tiny_bundle(seed=1), path)
    assert path.read_bytes() == before
    save_bundle(tiny_bundle(seed=1), path, overwrite=True)
    assert path.read_bytes() != before


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty or truncated"),
        (np.random.default_rng(0).bytes(4096), "not a napari-unet model bundle"),
    ],
)
def test_garbage_is_refused(tmp_path, content, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(BundleError, match=match):
        load_bundle(path)


def test_truncated_bundle_is_refused(tmp_path, instance_bundle):
    path = save_bundle(instance_bundle, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError):
        load_bundle(path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(BundleError, match="refused"):
        load_bundle(path)
    torch.save({"x": _Payload(str(marker))}, tmp_path / "evil.pt")
    (tmp_path / "evil.pt").rename(tmp_path / "evil2.safetensors")
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "evil2.safetensors")
    assert not marker.exists()


def _rewrite_config(path, change):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    config = json.loads(header["__metadata__"]["napari_unet"])
    change(config)
    header["__metadata__"]["napari_unet"] = json.dumps(config)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_newer_format_is_refused(tmp_path, instance_bundle):
    path = save_bundle(instance_bundle, tmp_path / "m.safetensors")
    _rewrite_config(path, lambda c: c.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match="newer"):
        load_bundle(path)


def test_config_that_does_not_match_weights(tmp_path, instance_bundle):
    path = save_bundle(instance_bundle, tmp_path / "m.safetensors")
    _rewrite_config(path, lambda c: c["architecture"].update(base_channels=16))
    with pytest.raises(BundleError, match="shape"):
        load_bundle(path)
    _rewrite_config(path, lambda c: c["architecture"].update(base_channels=8, depth=3))
    with pytest.raises(BundleError, match="do not match"):
        load_bundle(path)
    _rewrite_config(path, lambda c: c["architecture"].update(depth=2, norm="layer"))
    with pytest.raises(BundleError, match="batch, group, none"):
        load_bundle(path)


def test_registry_resolves_and_versions(models_dir, instance_bundle):
    save_bundle(instance_bundle, models_dir / "cells.safetensors")
    assert next_version_path("cells") == models_dir / "cells-ft1.safetensors"
    save_bundle(instance_bundle, next_version_path("cells"))
    save_bundle(instance_bundle, next_version_path("cells-ft1"))
    assert next_version_path("cells") == models_dir / "cells-ft3.safetensors"
    assert resolve_model("cells-ft2") == models_dir / "cells-ft2.safetensors"
    names = [(e.name, e.version) for e in list_models() if not e.bundled]
    assert names == [("cells", 0), ("cells-ft1", 1), ("cells-ft2", 2)]
    (models_dir / ".x.safetensors.abcd.partial").write_bytes(b"half")
    (models_dir / "broken.safetensors").write_bytes(b"junk")
    assert len([e for e in list_models() if not e.bundled]) == 3
    with pytest.raises(BundleError, match="known models"):
        resolve_model("nope")
    assert split_version("a-b-ft12") == ("a-b", 12)
    assert read_bundle_config(models_dir / "cells-ft1.safetensors")["name"] == "cells-ft1"


def _replay(n=3, size=32):
    from napari_unet.core.bundle import ReplaySet
    from tests.synthetic import disks

    pairs = [disks((size, size), seed=i) for i in range(n)]
    images = np.stack([np.clip(p[0] * 255, 0, 255) for p in pairs]).astype(np.uint8)
    labels = np.stack([p[1] for p in pairs]).astype(np.uint8)
    return ReplaySet(images, labels, "synthetic disks, public domain")


def test_replay_set_round_trips_and_survives_fine_tuned_copies(tmp_path, instance_bundle):
    from napari_unet.core.bundle import clone_bundle

    instance_bundle.replay = _replay()
    loaded = load_bundle(save_bundle(instance_bundle, tmp_path / "m.safetensors"))
    assert np.array_equal(loaded.replay.images, instance_bundle.replay.images)
    assert np.array_equal(loaded.replay.labels, instance_bundle.replay.labels)
    assert loaded.replay.source == "synthetic disks, public domain"
    assert loaded.config["replay"]["patches"] == 3
    [sample] = loaded.replay.samples()[:1]
    assert sample.known is None and sample.plane_axes == "YX" and sample.labels.shape == (32, 32)
    copy = load_bundle(save_bundle(clone_bundle(loaded), tmp_path / "m-ft1.safetensors"))
    assert np.array_equal(copy.replay.labels, loaded.replay.labels)
    loaded.replay = None  # a bundle saved without its replay set loses the config entry too
    plain = load_bundle(save_bundle(loaded, tmp_path / "plain.safetensors"))
    assert plain.replay is None and "replay" not in plain.config


def test_check_patches_are_kept_out_of_rehearsal_and_round_trip(tmp_path, instance_bundle):
    from napari_unet.core.bundle import ReplaySet

    replay = _replay(5)
    instance_bundle.replay = ReplaySet(replay.images, replay.labels, replay.source, checks=2)
    loaded = load_bundle(save_bundle(instance_bundle, tmp_path / "m.safetensors"))
    assert loaded.replay.checks == 2 and loaded.config["replay"]["checks"] == 2
    assert loaded.replay.rehearsed == 3
    assert [s.source for s in loaded.replay.samples()] == ["replay 0", "replay 1", "replay 2"]
    checks = loaded.replay.check_samples()
    assert [s.source for s in checks] == ["replay 3", "replay 4"]
    assert np.array_equal(checks[1].labels, replay.labels[4])
    assert _replay().checks == 0 and _replay().check_samples() == []
    with pytest.raises(BundleError, match="3 check patches, but the replay set holds 2"):
        ReplaySet(replay.images[:2], replay.labels[:2], "", checks=3)
    path = tmp_path / "m.safetensors"
    _rewrite_config(path, lambda c: c["replay"].update(checks=9))
    with pytest.raises(BundleError, match="m.safetensors: 9 check patches"):
        load_bundle(path)
    _rewrite_config(path, lambda c: c["replay"].update(checks="2"))
    with pytest.raises(BundleError, match="check count '2' is not a number"):
        load_bundle(path)


def test_inconsistent_replay_data_is_refused(tmp_path, instance_bundle):
    from napari_unet.core.bundle import ReplaySet

    instance_bundle.replay = _replay()
    path = save_bundle(instance_bundle, tmp_path / "m.safetensors")
    _rewrite_config(path, lambda c: c["replay"].update(patches=5))
    with pytest.raises(BundleError, match="announces 5 replay patches"):
        load_bundle(path)
    _rewrite_config(path, lambda c: c.pop("replay"))
    with pytest.raises(BundleError, match="replay data is incomplete"):
        load_bundle(path)
    with pytest.raises(BundleError, match="must be"):
        ReplaySet(np.zeros((2, 8, 8), np.uint8), np.zeros((3, 8, 8), np.uint8), "")
    with pytest.raises(BundleError, match="uint16"):
        ReplaySet(np.zeros((2, 8, 8), np.uint16), np.zeros((2, 8, 8), np.uint8), "")


def test_saved_files_get_ordinary_permissions(tmp_path, instance_bundle):
    umask = os.umask(0o027)
    try:
        path = save_bundle(instance_bundle, tmp_path / "m.safetensors")
        assert path.stat().st_mode & 0o777 == 0o640
        path.chmod(0o604)
        save_bundle(instance_bundle, path, overwrite=True)
        assert path.stat().st_mode & 0o777 == 0o604  # replacing keeps the old file's mode
    finally:
        os.umask(umask)


def test_a_config_asking_for_a_huge_network_is_refused_without_building_it(tmp_path):
    import resource

    path = save_bundle(tiny_bundle(), tmp_path / "m.safetensors")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _rewrite_config(path, lambda c: c["architecture"].update(base_channels=512, depth=8))
    with pytest.raises(BundleError, match="asks for .* M parameters"):
        read_bundle_config(path)
    with pytest.raises(BundleError, match="at most 8"):
        _rewrite_config(path, lambda c: c["architecture"].update(depth=40))
        load_bundle(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB


@pytest.mark.parametrize("fault", ["nan", "int8"])
def test_weights_that_cannot_predict_are_refused(tmp_path, instance_bundle, fault):
    from safetensors.torch import load_file, save_file

    path = save_bundle(instance_bundle, tmp_path / "m.safetensors")
    with open(path, "rb") as handle:
        (n,) = struct.unpack("<Q", handle.read(8))
        metadata = json.loads(handle.read(n))["__metadata__"]
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith("weight"))
    if fault == "nan":
        tensors[key][0] = float("nan")
        match = f"{key} holds NaN"
    else:
        tensors[key] = tensors[key].to(torch.int8)
        match = f"{key} is stored as I8"
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(BundleError, match=match):
        load_bundle(path)


def test_broken_or_shadowing_files_are_reported_not_listed(models_dir, instance_bundle):
    from napari_unet.core.registry import BUNDLED_DIR, scan_models

    save_bundle(instance_bundle, models_dir / "good.safetensors")
    (models_dir / "broken.safetensors").write_bytes(b"\x00" * 64)
    save_bundle(instance_bundle, models_dir / "nuclei.safetensors")  # a bundled name
    names = [e.name for e in list_models() if not e.bundled]
    assert names == ["good"]
    problems = {path.name: why for path, why in scan_models()[1]}
    assert set(problems) == {"broken.safetensors", "nuclei.safetensors"}
    assert "bundled model" in problems["nuclei.safetensors"]
    assert resolve_model("nuclei") == BUNDLED_DIR / "nuclei.safetensors"

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from napari_unet.core.bundle import Bundle, bundle_from_config, new_config, save_bundle

torch.set_num_threads(2)


def pytest_configure(config: pytest.Config) -> None:
    """Load triton before any test opens a napari window.

    Tests train in this process (torch.optim), and GUI tests open napari windows here too.
    Building a torch.optim optimiser imports torch._dynamo and triton; loading triton once a
    window exists on Mesa's software OpenGL crashes the process, loading it first is safe
    (issue 11). The product never trains in napari's process (core/training_process.py;
    tests/test_training_process.py checks that in a fresh subprocess, which imports this module
    but runs no pytest hook), but the test process does both, so it loads triton up front: the
    suite must not depend on which test happens to train first.
    """
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


# The same examples on every run, so CI never fails on a draw it has not seen before; explore
# new ones (different on every run) with `pytest tests/test_fuzz.py --hypothesis-profile=explore`.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("default")


def tiny_bundle(
    mode: str = "instances",
    *,
    padding: str = "same",
    channels: int = 1,
    seed: int = 0,
    class_names: list[str] | None = None,
) -> Bundle:
    """A small untrained U-Net (depth 2, 8 channels) with a complete config."""
    torch.manual_seed(seed)
    config = new_config(
        architecture={"depth": 2, "base_channels": 8, "padding": padding, "norm": "batch"},
        mode=mode,
        class_names=class_names or (["background", "cell"] if mode == "semantic" else None),
        input_spec={"channels": channels},
        object_diameter=14.0,
        name=f"tiny-{mode}",
    )
    return bundle_from_config(config)


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("NAPARI_UNET_MODELS_DIR", str(folder))
    return folder


@pytest.fixture
def instance_bundle() -> Bundle:
    return tiny_bundle("instances")


@pytest.fixture
def semantic_bundle() -> Bundle:
    return tiny_bundle("semantic")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def plugin_dirs(tmp_path, monkeypatch, models_dir):
    monkeypatch.setenv("NAPARI_UNET_TRAINING_DIR", str(tmp_path / "training"))
    monkeypatch.setenv("NAPARI_UNET_SETTINGS", str(tmp_path / "settings.ini"))
    save_bundle(tiny_bundle(), models_dir / "tiny.safetensors")
    return models_dir


def small_settings(widget) -> None:
    """The tiny model, small tiles, the CPU and a short schedule, for fast GUI tests."""
    widget.segment.refresh_models(select="tiny")
    widget.segment.tile_spin.setValue(128)
    widget.segment.device_combo.setCurrentIndex(widget.segment.device_combo.findData("cpu"))
    widget.finetune.steps_spin.setValue(6)
    widget.finetune.patch_spin.setValue(64)


@pytest.fixture
def dock(make_napari_viewer, plugin_dirs):
    from napari_unet.gui.main_widget import UnetWidget

    viewer = make_napari_viewer()
    widget = UnetWidget(viewer)
    viewer.window.add_dock_widget(widget)
    small_settings(widget)
    yield viewer, widget
    widget.close_workers()


@pytest.fixture
def docked(make_napari_viewer, plugin_dirs):
    """The widget as a user docks it from the Plugins menu: it gets napari's viewer proxy."""
    import yaml
    from napari.utils._proxies import PublicOnlyProxy

    manifest = Path(__file__).resolve().parents[1] / "napari_unet" / "napari.yaml"
    (contribution,) = yaml.safe_load(manifest.read_text())["contributions"]["widgets"]
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", contribution["display_name"])
    assert isinstance(widget.viewer, PublicOnlyProxy)
    small_settings(widget)
    yield viewer, widget
    widget.close_workers()

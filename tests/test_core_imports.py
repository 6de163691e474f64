import subprocess
import sys

GUI = ("napari", "qtpy", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_core_imports_no_gui():
    loaded = _modules_after(
        "import napari_unet.core.io, napari_unet.core.model, napari_unet.core.bundle, napari_unet.core.registry, "
        "napari_unet.core.devices, napari_unet.core.tiling, napari_unet.core.inference, napari_unet.core.postprocess, "
        "napari_unet.core.targets, napari_unet.core.augment, napari_unet.core.dataset, napari_unet.core.training, "
        "napari_unet.core.metrics, napari_unet.core.review, napari_unet.cli"
    )
    leaked = sorted(m for m in loaded if m.split(".")[0] in GUI)
    assert not leaked, f"core imports GUI modules: {leaked[:5]}"


def test_package_import_is_light():
    loaded = _modules_after("import napari_unet")
    assert "torch" not in loaded
    assert not any(m.split(".")[0] in GUI for m in loaded)

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PACKAGE = PYPROJECT.parent / "napari_unet"


def _lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` with the project's contracts on the package found in
    ``package_parent``."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(PYPROJECT), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=package_parent,
        env=env,
    )


def test_import_contracts_hold():
    """The layers of pyproject.toml's [tool.importlinter] contracts: cli above gui above core,
    core free of Qt/napari and of the package ``__init__``, no import cycles inside core."""
    run = _lint_imports(PACKAGE.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 kept, 0 broken" in run.stdout, run.stdout


LAYERS = "cli above gui above core"
DISPLAY = "core needs no display"
INIT = "core never imports the package __init__"
CYCLES = "no two core modules import each other, even inside a function"


@pytest.mark.parametrize(
    ("module", "code", "broken"),
    [
        ("core/tiling.py", "import qtpy\n", {DISPLAY}),
        ("core/tiling.py", "from napari_unet.gui import layers\n", {LAYERS}),
        ("gui/layers.py", "import napari_unet.cli\n", {LAYERS}),
        ("core/io.py", "from napari_unet import __version__\n", {INIT}),
        ("core/bundle.py", "def _lazy():\n    import napari_unet.core.registry\n", {CYCLES}),
    ],
)
def test_import_contracts_catch_each_kind_of_break(tmp_path, module, code, broken):
    """A copy of the package with one forbidden import (a lazy one among them) breaks the
    contract that forbids it: the contracts are not vacuous."""
    copy = tmp_path / "napari_unet"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("*.safetensors", "__pycache__"))
    path = copy / module
    path.write_text(path.read_text() + "\n" + code)
    run = _lint_imports(tmp_path)
    assert run.returncode != 0
    found = {name for name in (LAYERS, DISPLAY, INIT, CYCLES) if f"{name} BROKEN" in run.stdout}
    assert broken <= found, run.stdout


def test_importing_core_leaves_torch_settings_alone():
    """No core module changes torch's process-wide settings when imported (they belong to
    whoever else runs torch in the process)."""
    code = """
import importlib, pkgutil, torch
def settings():
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.get_num_threads(), torch.get_default_dtype(),
            torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision(),
            torch.is_grad_enabled(), torch.initial_seed())
before = settings()
import napari_unet.core as core
for module in pkgutil.iter_modules(core.__path__):
    importlib.import_module("napari_unet.core." + module.name)
print(before == settings(), before, settings())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("True"), out.stdout

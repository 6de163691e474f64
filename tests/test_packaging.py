"""The install the README tells a user to run, and the one CI runs, choose napari's Qt binding."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def _fenced_commands(text: str) -> list[str]:
    """The lines of the ```bash blocks of a Markdown text."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines()]


def test_the_readme_demo_uses_naparis_default_binding_pyqt6():
    """PyQt6 starts without napari's PyQt5 deprecation notice over the canvas."""
    (demo,) = [line for line in _fenced_commands(README) if "napari-unet demo" in line]
    assert '".[pyqt6]"' in demo, demo
    assert any(r.startswith("napari[pyqt6]") for r in EXTRAS["pyqt6"]), EXTRAS["pyqt6"]


def test_pyqt5_stays_an_extra_with_a_napari_that_supports_it():
    assert any(r.startswith("PyQt5") for r in EXTRAS["pyqt5"])
    assert "napari>=0.5,<0.10" in EXTRAS["pyqt5"]


def test_ci_runs_the_readme_tests_under_pyqt6_and_the_gui_tests_under_pyqt5():
    (readme_tests,) = [line for line in _fenced_commands(README) if "pytest" in line]
    assert '".[pyqt6,test]"' in readme_tests
    assert 'pip install -q -e ".[pyqt6,pyqt5,test]"' in CI
    assert "QT_API=pyqt6 PYTEST_QT_API=pyqt6 python -m pytest\n" in CI
    assert "QT_API=pyqt5 PYTEST_QT_API=pyqt5 python -m pytest -m gui\n" in CI


def test_ci_installs_the_library_pyqt6s_xcb_plugin_needs():
    packages = CI[CI.index("apt-get install") : CI.index(">/dev/null", CI.index("apt-get install"))]
    assert "libxcb-cursor0" in packages.split()

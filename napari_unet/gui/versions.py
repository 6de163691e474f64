"""The Fine-tune panel's Versions section: the user's fine-tuned versions of one model family.

Each version (a file ``<base>-ft<n>.safetensors`` in the user's model folder) is listed with
how it was made, read from its bundle config without loading weights
(:class:`napari_unet.core.provenance.Provenance`), and its size on disk. A version can be
deleted after a confirmation, except one in use; bundled models never can. A version can be
exported as a bioimage.io package in a worker, after a dialog asks for the file, the authors,
the licence and, when the user has an image open, whether a patch of it may be shipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_unet.core.io import Stack
from napari_unet.core.wording import counted
from napari_unet.gui.controls import button_row
from napari_unet.gui.export_dialog import ExportChoice, ask_export
from napari_unet.gui.workers import Job, JobRunner, stage_step

COLUMNS = ("version", "date", "result", "size")


def format_size(n_bytes: int) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units, as file managers show them)."""
    size = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def family_of(model: str) -> str:
    """The base name of a model name or bundle path: ``"nuclei-ft3"`` -> ``"nuclei"``."""
    from napari_unet.core.registry import SUFFIX, split_version

    return split_version(Path(model).name.removesuffix(SUFFIX))[0] if model else ""


def ask_to_confirm(parent: QWidget, title: str, text: str) -> bool:
    """A Yes/No question; No is the default."""
    answer = QMessageBox.question(
        parent, title, text, QMessageBox.Yes | QMessageBox.No, QMessageBox.No
    )
    return answer == QMessageBox.Yes


class VersionsPanel(QWidget):
    """The user's fine-tuned versions of the current base model's family.

    Parameters
    ----------
    family : callable returning str
        The current base model (name or path); its family is listed.
    in_use : callable returning a collection of str, optional
        Models that must not be deleted now (e.g. the one selected in the Segment panel).
    confirm : callable (title, text) -> bool, optional
        Asks before deleting; a Yes/No message box by default (tests pass their own).
    image : callable returning (name, Stack) or None, optional
        The user's current image, offered as the source of an export's test patch; its
        first plane is copied on the main thread when the export starts.
    ask : callable (name, image name or None) -> ExportChoice or None, optional
        Asks what an export needs; :func:`~napari_unet.gui.export_dialog.ask_export` by
        default (tests pass their own).
    """

    deleted = Signal(str)  # the name of a deleted version

    def __init__(
        self,
        family: Callable[[], str],
        *,
        in_use: Callable[[], Collection[str]] = tuple,
        confirm: Callable[[str, str], bool] | None = None,
        image: Callable[[], tuple[str, Stack] | None] = lambda: None,
        ask: Callable[[str, str | None], ExportChoice | None] | None = None,
    ) -> None:
        super().__init__()
        self.family = family
        self.in_use = in_use
        self.confirm = confirm or (lambda title, text: ask_to_confirm(self, title, text))
        self.image = image
        self.ask = ask or (lambda name, image_name: ask_export(self, name, image_name))
        self.runner = JobRunner(  # exports
            measure=stage_step, on_end=lambda _end: self._selection_changed()
        )
        self.paths: dict[str, Path] = {}  # listed versions by name
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setMaximumHeight(130)
        header = self.tree.header()
        header.setStretchLastSection(False)
        for column in range(len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeToContents)
        self.total = QLabel("")
        self.total.setWordWrap(True)
        self.delete_button = QPushButton("Delete version...")
        self.delete_button.setEnabled(False)
        self.export_button = QPushButton("Export...")
        self.export_button.setToolTip("Write the version as a bioimage.io model package (zip)")
        self.export_button.setEnabled(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tree)
        layout.addWidget(self.total)
        layout.addLayout(button_row(self.export_button, self.delete_button))
        self.tree.itemSelectionChanged.connect(self._selection_changed)
        self.delete_button.clicked.connect(lambda: self.delete())
        self.export_button.clicked.connect(lambda: self.export())
        self._timer = QTimer(self)  # coalesces the bursts of changes of the base-model picker
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.refresh)
        self.schedule_refresh()

    def set_in_use(self, in_use: Callable[[], Collection[str]]) -> None:
        """Set what tells which models are in use (the dock widget knows the Segment panel)."""
        self.in_use = in_use

    def schedule_refresh(self, *_: Any) -> None:
        """Refresh at the next turn of the event loop (once for many calls)."""
        self._timer.start()

    def refresh(self, *_: Any) -> None:
        """List the versions of the current family again, keeping the selection."""
        from napari_unet.core.bundle import read_bundle_config
        from napari_unet.core.errors import UnetError
        from napari_unet.core.provenance import Provenance
        from napari_unet.core.registry import list_models, user_models_dir

        self._timer.stop()
        selected = self.selected()
        family = family_of(self.family())
        versions = [e for e in list_models() if not e.bundled and e.version > 0]
        listed = sorted(
            (e for e in versions if e.base == family), key=lambda e: e.version, reverse=True
        )
        in_use = set(self.in_use())
        self.paths = {}
        self.tree.blockSignals(True)
        self.tree.clear()
        for entry in listed:
            try:
                provenance = Provenance.from_config(read_bundle_config(entry.path))
                size = entry.path.stat().st_size
            except (UnetError, OSError):  # deleted or rewritten meanwhile
                continue
            self.paths[entry.name] = entry.path
            name = entry.name + (" (in use)" if entry.name in in_use else "")
            item = QTreeWidgetItem(
                [
                    name,
                    provenance.day if provenance else "",
                    provenance.result() if provenance else "no history",
                    format_size(size),
                ]
            )
            item.setData(0, Qt.UserRole, entry.name)
            lines = provenance.lines() if provenance else ["no training history recorded"]
            tip = "\n".join([entry.name, *lines, str(entry.path)])
            for column in range(len(COLUMNS)):
                item.setToolTip(column, tip)
            self.tree.addTopLevelItem(item)
            if entry.name == selected:
                item.setSelected(True)
        self.tree.blockSignals(False)
        self._selection_changed()
        family_bytes = sum(_size(path) for path in self.paths.values())
        text = (
            f"{family}: {counted(len(self.paths), 'version')}, {format_size(family_bytes)} on disk."
            if self.paths
            else f"No fine-tuned versions of {family or 'this model'} yet."
        )
        if len(versions) != len(self.paths):
            all_bytes = sum(_size(e.path) for e in versions)
            text += f" All yours: {counted(len(versions), 'version')}, {format_size(all_bytes)}."
        self.total.setText(text)
        self.total.setToolTip(f"in {user_models_dir()}")

    def selected(self) -> str | None:
        """Name of the selected version, or None."""
        items = self.tree.selectedItems()
        return str(items[0].data(0, Qt.UserRole)) if items else None

    def select(self, name: str) -> None:
        """Select a listed version by name."""
        for index in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(index)
            item.setSelected(item.data(0, Qt.UserRole) == name)

    def _selection_changed(self) -> None:
        self.delete_button.setEnabled(self.selected() is not None)
        self.export_button.setEnabled(self.selected() is not None and not self.runner.running)

    def export(self, name: str | None = None) -> Any:
        """Export a version (the selected one by default) after asking; the worker, or None.

        The package is written by :func:`~napari_unet.core.bioimageio_export.iter_export`
        in a worker; a notification gives its path, or says what went wrong.
        """
        from napari.utils.notifications import show_error, show_info

        from napari_unet.core.bioimageio_export import iter_export
        from napari_unet.core.preprocess import read_plane, stack_axes_of
        from napari_unet.core.registry import load_bundle

        name = name or self.selected()
        if not name or self.runner.running:
            return None
        path = self.paths.get(name)
        if path is None or not path.is_file():
            show_error(f"{name} is no longer on disk.")
            return None
        image = self.image()
        choice = self.ask(name, image[0] if image else None)
        if choice is None:
            return None
        test_image = None
        if choice.share_image and image is not None:
            stack = image[1]
            first = (0,) * len(stack_axes_of(stack.axes))
            plane, plane_axes = read_plane(stack.data, stack.axes, first)  # a copy, here
            test_image = Stack(np.array(plane), plane_axes, path=Path(image[0]))

        def work(_stop: threading.Event) -> Any:
            return (
                yield from iter_export(
                    load_bundle(path),
                    choice.output,
                    authors=choice.authors,
                    license_id=choice.license_id,
                    test_image=test_image,
                    share_test_image=choice.share_image,
                )
            )

        def exported(written: Path) -> None:
            show_info(f"Exported {name} as a bioimage.io package: {written}")

        worker = self.runner.start(
            Job(work, f"exporting {name}", f"Could not export {name}", exported)
        )
        self._selection_changed()
        return worker

    def delete(self, name: str | None = None) -> bool:
        """Delete a version's file (the selected one by default) after asking; True if done.

        Refused for bundled models, models that are not fine-tuned versions in the user's
        folder, and the models in use.
        """
        from napari.utils.notifications import show_error, show_info, show_warning

        from napari_unet.core.registry import BUNDLED_DIR, SUFFIX, split_version, user_models_dir

        name = name or self.selected()
        if not name:
            return False
        path = self.paths.get(name) or user_models_dir() / f"{name}{SUFFIX}"
        bundled = (BUNDLED_DIR / f"{name}{SUFFIX}").exists() or _inside(path, BUNDLED_DIR)
        if bundled:
            show_error(f"{name} comes with napari-unet and cannot be deleted.")
            return False
        if split_version(name)[1] == 0 or not _inside(path, user_models_dir()):
            show_error(f"{name} is not a fine-tuned version in your model folder; not deleted.")
            return False
        if name in set(self.in_use()):
            show_warning(
                f"{name} is in use (selected in the Segment panel or being fine-tuned): "
                "choose another model there first."
            )
            return False
        if not path.is_file():
            show_error(f"{name} is no longer on disk ({path}).")
            self.refresh()
            return False
        size = format_size(_size(path))
        if not self.confirm(
            "Delete model version",
            f"Delete {name} ({size})?\n\nThis removes {path} and cannot be undone.",
        ):
            return False
        try:
            path.unlink()
        except OSError as error:
            show_error(f"Could not delete {name}: {error}")
            return False
        self.refresh()
        self.deleted.emit(name)
        show_info(f"Deleted {name} ({size}).")
        return True


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().parent == folder.resolve()
    except OSError:
        return False

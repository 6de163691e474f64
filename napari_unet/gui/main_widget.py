"""The napari-unet dock widget: Segment and Fine-tune tabs sharing one session."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from qtpy.QtCore import QSettings, QTimer
from qtpy.QtWidgets import QApplication, QTabWidget, QVBoxLayout, QWidget

from napari_unet.gui.change_map import ChangeMapper, Previous, previous_labels
from napari_unet.gui.controls import collapsible
from napari_unet.gui.correct_next import CorrectNextPanel
from napari_unet.gui.finetune_widget import FinetunePanel
from napari_unet.gui.segment_widget import SegmentPanel
from napari_unet.gui.session import Session
from napari_unet.gui.view import ViewFitter, dock_beside_layer_list
from napari_unet.gui.workers import JobRunner


def plugin_settings() -> QSettings:
    """Where the widgets remember their settings between sessions.

    The platform's settings store, or the INI file ``$NAPARI_UNET_SETTINGS`` names (scripts and
    benchmarks use it so that they neither read nor change the user's choices).
    """
    override = os.environ.get("NAPARI_UNET_SETTINGS")
    if override:
        return QSettings(override, QSettings.IniFormat)
    return QSettings("napari-unet", "napari-unet")


class UnetWidget(QWidget):
    """Segment images with a U-Net, correct, and fine-tune, without leaving napari."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session()
        settings = plugin_settings()
        self.segment = SegmentPanel(napari_viewer, self.session, settings)
        self.finetune = FinetunePanel(napari_viewer, self.session, settings)
        self.changes = ChangeMapper(napari_viewer)
        self.correct_next = CorrectNextPanel(napari_viewer, self.session)
        # the list sits below the Segment panel's status, above its stretch, in a section that
        # folds (folded at first: the dock shares napari's left column)
        self.correct_next_section = collapsible("Correct next", self.correct_next)
        self.segment.body.insertWidget(self.segment.body.count() - 1, self.correct_next_section)
        # what the next re-segmentation is compared with, and with which model it runs
        self._compare_with: tuple[Previous, str] | None = None
        self.tabs = QTabWidget()
        self.tabs.addTab(self.segment, "Segment")
        self.tabs.addTab(self.finetune, "Fine-tune")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.tabs)
        self.fitter = ViewFitter(napari_viewer)
        self._placed = False  # the dock joins napari's left column when first shown
        self.segment.segmented.connect(self.finetune.track)
        self.segment.segmented.connect(self._show_changes)
        self.segment.segmented.connect(self.correct_next.set_target)
        self.segment.segmented.connect(self.fitter.fit)
        self.finetune.trained.connect(self._trained)
        self.finetune.resegment_requested.connect(self._resegment)
        self.finetune.model_chosen.connect(self.segment.select_model)
        versions = self.finetune.versions
        versions.set_in_use(self._models_in_use)
        versions.deleted.connect(self._version_deleted)
        # which version is in use shows in the list: refreshed when it can have changed
        self.segment.model_combo.currentIndexChanged.connect(versions.schedule_refresh)
        self.finetune.model_chosen.connect(versions.schedule_refresh)
        self.tabs.currentChanged.connect(versions.schedule_refresh)
        napari_viewer.dims.events.current_step.connect(self._dims_changed)
        # every job of the widget, stopped when it closes (or is deleted without closing)
        self.runners = (
            self.segment.runner,
            self.finetune.runner,
            self.finetune.saver,
            self.finetune.versions.runner,
            self.changes.runner,
            self.correct_next.runner,
        )
        self.destroyed.connect(partial(close_runners, self.runners))
        app = QApplication.instance()
        if app is not None:  # closing napari quits the app: stop jobs and save corrections first
            app.aboutToQuit.connect(self.close_workers)

    def _dims_changed(self, *_: Any) -> None:
        if self.tabs.currentWidget() is self.finetune:
            self.finetune.refresh_planes()

    def _trained(self, new_model: str, previous_model: str) -> None:
        self.segment.refresh_models()

    def _models_in_use(self) -> set[str]:
        """Models whose file must stay: the Segment panel's, and the base of a running fine-tune."""
        used = {self.segment.model}
        if self.finetune.runner.running and self.finetune.previous_model:
            used.add(self.finetune.previous_model)
        return used

    def _version_deleted(self, name: str) -> None:
        self.segment.refresh_models()
        self.finetune.refresh_models()

    def _resegment(self, model: str) -> None:
        """Segment the fine-tuned layer's image with the new model, into a layer of its own;
        then show what changed from the previous version's output."""
        layer = self.finetune.current_layer()
        segmentation = self.session.find(layer)
        previous = (
            previous_labels(self.session, layer, self.finetune.previous_model or "")
            if layer is not None
            else None
        )
        if (
            segmentation is not None
            and self.segment.image_combo.findText(segmentation.image_name) >= 0
        ):
            self.segment.image_combo.setCurrentText(segmentation.image_name)
        self.tabs.setCurrentWidget(self.segment)  # the picker keeps the chosen model
        self._compare_with = (previous, model) if previous is not None else None
        if self.segment.run(model=model, new_layer=True) is None:
            self._compare_with = None

    def _show_changes(self, layer: Any) -> None:
        """A segmentation arrived: if it is the re-segmentation asked for, map the changes."""
        pending, self._compare_with = self._compare_with, None
        segmentation = self.session.find(layer)
        if pending is None or segmentation is None or not segmentation.comparison:
            return
        previous, model = pending
        if segmentation.model != model:
            return
        self.changes.start(
            previous,
            layer,
            image_name=segmentation.image_name,
            new_model=model,
            mode=segmentation.mode,
        )

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if not self._placed:  # once napari has finished adding the dock
            self._placed = True
            QTimer.singleShot(0, lambda: dock_beside_layer_list(self))

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self.close_workers()
        super().closeEvent(event)

    def close_workers(self) -> None:
        """Stop running jobs (closing the widget or napari); saves pending corrections first."""
        self.finetune.flush_corrections()
        close_runners(self.runners)
        self.correct_next.unbind_keys()
        self.fitter.disconnect()


def close_runners(runners: tuple[JobRunner, ...], *_: Any) -> None:
    """Stop the jobs of ``runners`` and wait briefly for each (extra arguments: a signal's)."""
    for runner in runners:
        runner.close()

"""The Fine-tune panel: corrected planes, one-click training in a worker, new model versions."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np
from qtpy.QtCore import QSettings, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QHeaderView,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QWidget,
)

from napari_unet.gui import controls
from napari_unet.gui.layers import layer_key, shown_plane
from napari_unet.gui.loss_plot import LossPlot
from napari_unet.gui.segment_widget import model_names
from napari_unet.gui.session import (
    Segmentation,
    Session,
    collect_planes,
    samples_from_planes,
    save_planes,
)
from napari_unet.gui.versions import VersionsPanel
from napari_unet.gui.workers import Job, JobEnd, JobRunner, Step

SAVE_DELAY_MS = 2000  # corrections are saved this long after the last brush stroke


def compatible_models(segmentation: Segmentation | None) -> list[str]:
    """Models that can be fine-tuned on a segmentation's labels: same mode and class names.

    All models when there is no segmentation. The model that made the segmentation is included
    when the registry does not list it (a bundle or a napari-unet bioimage.io package chosen
    with Browse...) and its config agrees.
    """
    from napari_unet.core.registry import list_models

    entries = list_models()
    if segmentation is None:
        return [entry.name for entry in entries]
    wanted = (segmentation.mode, tuple(segmentation.class_names))
    names = [entry.name for entry in entries if (entry.mode, entry.class_names) == wanted]
    if segmentation.model and segmentation.model not in {entry.name for entry in entries}:
        from napari_unet.core.errors import UnetError
        from napari_unet.core.registry import read_model_config

        try:
            config = read_model_config(segmentation.model)
        except (UnetError, OSError):
            return names
        if (config["mode"], tuple(config["class_names"])) == wanted:
            names.append(segmentation.model)
    return names


class FinetunePanel(QWidget):
    """Fine-tune a model on the planes the user corrected."""

    trained = Signal(str, str)  # new model name, previous model name
    resegment_requested = Signal(str)  # model name
    # the version every panel should use: the new one when it scored better on the held-out
    # labels or the user picks it, the base one when the user keeps it
    model_chosen = Signal(str)

    def __init__(self, viewer: Any, session: Session, settings: QSettings) -> None:
        super().__init__()
        self.viewer = viewer
        self.session = session
        self.settings = settings
        # writes corrections to the training set, one save at a time; planes copied while one
        # runs wait in _unsaved for the next (a save is never cut short when napari closes)
        self.saver = JobRunner(on_end=lambda _end: self._write_unsaved(), finish_on_close=True)
        self._unsaved: list[tuple[Any, ...]] = []  # (training set, segmentation, planes, stale)
        self.new_model: str | None = None
        self.previous_model: str | None = None
        # corrections made while a fine-tune runs: the layer it trains on, and a queue its job
        # drains into the training (see _feed_running_training)
        self._training_key: str | None = None
        self._training_edited = False
        self._live: queue.SimpleQueue[Any] = queue.SimpleQueue()  # thread-safe
        self.planes_sent = 0  # corrected planes sent to running fine-tunes
        self._tracked: dict[str, Any] = {}  # by layer_key(): the same through napari's proxies
        self._dirty: set[str] = set()
        self._pending: dict[str, set[Any] | None] = {}  # planes to re-read per layer (None: all)
        # per layer, the training set's planes of its image that came from it (saved from it or
        # restored into it): only these may be dropped from the set when it no longer has them,
        # so that a second layer of the same image (e.g. a re-segment to compare) never erases
        # the corrections another layer holds
        self._owned: dict[str, set[Any]] = {}

        self.labels_combo = controls.combo()
        self.base_combo = controls.combo()
        self.summary = controls.text_line("No corrections yet.")
        self.planes = QTreeWidget()
        self.planes.setHeaderLabels(["plane", "use", "fully checked"])
        self.planes.setRootIsDecorated(False)
        self.planes.setMaximumHeight(100)
        header = self.planes.header()  # the columns share the dock's width: no sideways scrolling
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in (1, 2):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.steps_spin = controls.int_spin(1, 100000)
        self.lr_spin = controls.float_spin(1e-5, 1e-1, 1e-4, decimals=5)
        self.patch_spin = controls.int_spin(64, 1024, 32)
        self.val_spin = controls.float_spin(0.0, 0.5)
        self.augment_check = QCheckBox("flips, elastic, intensity")
        self.train_button = QPushButton("Fine-tune")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.eta = controls.text_line()
        self.runner = JobRunner(
            on_yield=self._on_step,
            measure=_training_step,
            status=self.eta.setText,
            on_end=self._on_end,
        )
        self.plot = LossPlot()
        self.plot.setVisible(False)  # from the first fine-tune on
        self.result = controls.text_line()
        self.resegment_button = QPushButton("Re-segment with new model")
        self.keep_button = QPushButton("Keep previous model")
        self.use_button = QPushButton("Use new model")
        for button in self._choice_buttons():
            button.setEnabled(False)
            button.setVisible(False)  # once there is a new version to choose
        self.versions = VersionsPanel(self.base_combo.currentText, image=self._export_image)

        self.advanced = controls.collapsible_form(
            "Advanced",
            [
                ("Steps", self.steps_spin),
                ("Learning rate", self.lr_spin),
                ("Patch size", self.patch_spin),
                ("Validation share", self.val_spin),
                ("Augmentation", self.augment_check),
            ],
        )
        layout = controls.panel_layout(self)
        layout.addLayout(
            controls.form([("Labels", self.labels_combo), ("Base model", self.base_combo)])
        )
        layout.addWidget(self.summary)
        layout.addWidget(self.planes)
        layout.addWidget(self.advanced)
        layout.addLayout(controls.button_row(self.train_button, self.stop_button))
        layout.addWidget(self.eta)
        layout.addWidget(self.plot)
        layout.addWidget(self.result)
        layout.addLayout(controls.button_row(self.resegment_button))
        layout.addLayout(controls.button_row(self.keep_button, self.use_button))
        layout.addWidget(controls.collapsible("Versions", self.versions))
        layout.addStretch()

        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(SAVE_DELAY_MS)
        self._save_timer.timeout.connect(self.save_corrections)
        self._save_timer.timeout.connect(self._feed_running_training)
        # the plane list is refreshed after painting pauses, not on every brush stroke
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(200)
        self._refresh_timer.timeout.connect(self.refresh_planes)
        # napari emits a Labels layer's paint event before it writes the pixels (outside a brush
        # stroke): the tracker reads them once the edit is done, at the next turn of the loop
        self._update_timer = QTimer(self)
        self._update_timer.setSingleShot(True)
        self._update_timer.setInterval(0)
        self._update_timer.timeout.connect(self._apply_edits)
        self._restore_settings()
        self.refresh_models()
        self.train_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.resegment_button.clicked.connect(self._resegment)
        self.keep_button.clicked.connect(self._keep_previous)
        self.use_button.clicked.connect(self._use_new)
        self.labels_combo.currentIndexChanged.connect(self._labels_changed)
        self.base_combo.currentTextChanged.connect(self.versions.schedule_refresh)
        self.trained.connect(self.versions.refresh)  # a new version is on disk
        self.planes.itemChanged.connect(self._plane_ticked)
        viewer.layers.events.removed.connect(self._layer_removed)

    # ----- settings and pickers ---------------------------------------------------------------
    def _schedule_fields(self) -> list[tuple[str, Any, Any]]:
        """(settings key, spin box, today's default) of each remembered schedule field."""
        from napari_unet.core.options import TrainSettings

        defaults = TrainSettings()
        return [
            ("finetune/steps", self.steps_spin, defaults.steps),
            ("finetune/lr", self.lr_spin, defaults.learning_rate),
            ("finetune/patch", self.patch_spin, defaults.patch_size),
            ("finetune/val", self.val_spin, defaults.val_fraction),
        ]

    def _restore_settings(self) -> None:
        """Set the fields to the values the user chose before. A field saved at the default of
        its day follows today's default (defaults change as they are measured again), and so
        does a value saved without the default it was saved against (older settings)."""
        s = self.settings
        for key, spin, default in self._schedule_fields():
            kind = type(default)
            saved, saved_default = s.value(key), s.value(f"{key}_default")
            chosen = saved is not None and saved_default is not None
            if chosen and kind(saved) != kind(saved_default):
                spin.setValue(kind(saved))
            else:
                spin.setValue(default)
        self.augment_check.setChecked(str(s.value("finetune/augment", "true")) == "true")

    def _save_settings(self) -> None:
        s = self.settings
        for key, spin, default in self._schedule_fields():
            s.setValue(key, spin.value())
            s.setValue(f"{key}_default", spin.valueFromText(spin.textFromValue(default)))
        s.setValue("finetune/augment", "true" if self.augment_check.isChecked() else "false")

    def refresh_models(self, select: str | None = None) -> None:
        """List the base models compatible with the selected Labels layer; keep or set the choice.

        A model of another kind (e.g. a semantic membrane model for a nuclei instance
        segmentation) is not offered. When the wanted model is not compatible, the model that
        made the segmentation is selected.
        """
        layer = self.current_layer()
        segmentation = self.session.find(layer)
        names = compatible_models(segmentation) if segmentation is not None else model_names()
        current = select or self.base_combo.currentText()
        if current not in names and segmentation is not None:
            current = segmentation.model if segmentation.model in names else ""
        self.base_combo.clear()
        self.base_combo.addItems(names)
        if current:
            self.base_combo.setCurrentText(current)

    def settings_from_widgets(self) -> Any:
        from napari_unet.core.augment import AugmentSettings
        from napari_unet.core.options import TrainSettings

        enabled = self.augment_check.isChecked()
        return TrainSettings(
            steps=self.steps_spin.value(),
            learning_rate=self.lr_spin.value(),
            patch_size=self.patch_spin.value(),
            val_fraction=self.val_spin.value(),
            augment=AugmentSettings(flips=enabled, elastic=enabled, intensity=enabled),
        )

    # ----- tracking corrections -------------------------------------------------------------
    def track(self, layer: Any) -> None:
        """Start following a Labels layer the plugin wrote.

        A plain segmentation becomes the current layer (its model the base model) and gets the
        image's saved corrections back, unless another layer of this session already holds
        them. A re-segmentation to compare models is listed but changes nothing else: its layer
        shows the new model's own output, and the corrections stay in their layer.
        """
        segmentation = self.session.find(layer)
        if segmentation is None:
            return
        key = layer_key(layer)
        if key not in self._tracked:
            self._tracked[key] = layer
            events = layer.events
            # paint: every edit through the Labels API (brush, fill, data_setitem, restored
            # corrections); data: layer.data replaced; set_data: the layer was refreshed (also
            # after undo / redo, which emit nothing else)
            events.paint.connect(lambda event, k=key: self._edited(k, event.value))
            events.data.connect(lambda event, k=key: self._edited(k, None))
            events.set_data.connect(lambda event, k=key: self._edited(k, None))
        if self.labels_combo.findData(key) < 0:
            self.labels_combo.addItem(layer.name, key)
        if segmentation.comparison and self.current_layer() is not None:
            return
        self.labels_combo.setCurrentIndex(self.labels_combo.findData(key))
        self.refresh_models(select=segmentation.model)
        if not segmentation.comparison and not self.session.others_of_image(layer):
            self.offer_saved(layer)

    def _layer_removed(self, event: Any) -> None:
        key = layer_key(event.value)
        if key in self._tracked:
            self.save_corrections()  # copies the corrected planes now
            self._tracked.pop(key)
        self._pending.pop(key, None)
        self._dirty.discard(key)
        self._owned.pop(key, None)
        self.session.forget(event.value)
        index = self.labels_combo.findData(key)
        if index >= 0:
            self.labels_combo.removeItem(index)

    def current_layer(self) -> Any:
        return self._tracked.get(self.labels_combo.currentData())

    def _labels_changed(self, *_: Any) -> None:
        self.refresh_models()
        self.refresh_planes()

    def _edited(self, key: str, atoms: Any) -> None:
        """A tracked layer changed (``atoms``: a paint event's, None when unknown)."""
        layer = self._tracked.get(key)
        segmentation = self.session.find(layer)
        if segmentation is None:
            return
        planes = segmentation.tracker.planes_in_paint(atoms) if atoms is not None else None
        if planes is None:
            self._pending[key] = None
        elif self._pending.get(key, set()) is not None:
            self._pending.setdefault(key, set()).update(planes)
        self._update_timer.start()

    def _apply_edits(self) -> None:
        """Re-read the edited planes of the tracked layers, now that napari wrote them."""
        pending, self._pending = self._pending, {}
        current = self.labels_combo.currentData()
        for key, planes in pending.items():
            layer = self._tracked.get(key)
            segmentation = self.session.find(layer)
            if segmentation is None:
                continue
            segmentation.tracker.update(np.asarray(layer.data), planes)
            self._dirty.add(key)
            if key == self._training_key:
                self._training_edited = True
            if key == current:
                self._refresh_timer.start()
            self._save_timer.start()

    def _export_image(self) -> tuple[str, Any] | None:
        """The image under the current Labels layer (name and Stack), which an export may
        cut its test patch from if the user agrees; None when nothing was segmented."""
        from napari_unet.core.io import Stack

        layer = self.current_layer()
        segmentation = self.session.find(layer)
        if segmentation is None:
            return None
        return segmentation.image_name, Stack(segmentation.image_data, segmentation.image_axes)

    def refresh_planes(self, *_: Any) -> None:
        """List the corrected planes of the current layer and summarise the training set."""
        layer = self.current_layer()
        segmentation = self.session.find(layer)
        self.planes.blockSignals(True)
        self.planes.clear()
        if segmentation is None:
            self.planes.blockSignals(False)
            self.summary.setText(
                "Segment an image first; then correct it with the brush, eraser and fill."
            )
            return
        tracker = segmentation.tracker
        stack_axes = tracker.stack_axes
        current = shown_plane(self.viewer, tracker.axes)
        corrected = set(tracker.corrected_planes())
        for index in sorted(corrected | ({current} if current is not None else set())):
            label = (
                ", ".join(f"{a.lower()}={i}" for a, i in zip(stack_axes, index, strict=True))
                or "image"
            )
            if index not in corrected:
                label += " (shown)"
            item = QTreeWidgetItem([label, "", ""])
            item.setData(0, Qt.UserRole, index)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(
                1,
                Qt.Unchecked if index in tracker.excluded or index not in corrected else Qt.Checked,
            )
            item.setCheckState(2, Qt.Checked if index in tracker.fully_checked else Qt.Unchecked)
            self.planes.addTopLevelItem(item)
        self.planes.blockSignals(False)
        selected = tracker.selected_planes()
        objects = sum(self._objects(layer, tracker, index) for index in selected)
        self.summary.setText(
            f"{len(selected)} corrected plane(s) selected, {objects} labelled object(s) in the "
            "corrected regions. Tick 'fully checked' for planes you verified everywhere."
        )

    @staticmethod
    def _objects(layer: Any, tracker: Any, index: tuple[int, ...]) -> int:
        plane = np.asarray(layer.data[tracker.plane_slice(index)])
        values = np.unique(plane[tracker.known_mask(index)])
        return int((values > 0).sum())

    def _plane_ticked(self, item: QTreeWidgetItem, column: int) -> None:
        layer = self.current_layer()
        segmentation = self.session.find(layer)
        if segmentation is None:
            return
        index = tuple(item.data(0, Qt.UserRole))
        tracker = segmentation.tracker
        if column == 1:
            (
                tracker.excluded.discard
                if item.checkState(1) == Qt.Checked
                else tracker.excluded.add
            )(index)
        elif column == 2:
            (
                tracker.fully_checked.add
                if item.checkState(2) == Qt.Checked
                else tracker.fully_checked.discard
            )(index)
        self._dirty.add(layer_key(layer))
        self._save_timer.start()
        QTimer.singleShot(0, self.refresh_planes)

    # ----- saving the training set ----------------------------------------------------------
    def save_corrections(self) -> Any:
        """Copy the corrected planes (main thread) and write them to the training set in a
        worker; returns it, or None when nothing is written now (nothing to save, or a save
        is running: the copies are written when it ends)."""
        self._apply_edits()  # edits still waiting for the next turn of the loop
        self._save_timer.stop()  # saving now
        for key in sorted(self._dirty):
            layer = self._tracked.get(key)
            segmentation = self.session.find(layer)
            if segmentation is None:
                continue
            planes = collect_planes(segmentation, layer.data)
            stale = self._stale_planes(key, planes)
            if planes or stale:
                self._unsaved.append(
                    (self.session.training_set(segmentation), segmentation, planes, stale)
                )
        self._dirty.clear()
        return self._write_unsaved()

    def _write_unsaved(self) -> Any:
        """Start writing the copied planes not written yet; the worker, or None."""
        if not self._unsaved or self.saver.running:
            return None
        saves, self._unsaved = self._unsaved, []

        def work(_stop: threading.Event) -> Any:  # a save always finishes
            for done, save in enumerate(saves, start=1):
                save_planes(*save)
                yield Step(done, len(saves), "saving corrections")

        return self.saver.start(Job(work, "", "Could not save corrections"))

    def flush_corrections(self) -> None:
        """Write every correction not saved yet and wait for the writes (napari is closing)."""
        self.saver.close()  # the save in progress ends first
        self.save_corrections()
        self.saver.close()

    def _stale_planes(self, key: str, planes: list[tuple[Any, ...]]) -> list[Any]:
        """Planes this layer gave the training set that it no longer has as corrected."""
        current = {p[0] for p in planes}
        stale = sorted(self._owned.get(key, set()) - current)
        self._owned[key] = current
        return stale

    def offer_saved(self, layer: Any) -> None:
        """If corrections of this image were saved before, put them back into the layer.

        Written through the layer's edit history as one step, so Ctrl+Z takes them out again.
        """
        from napari.utils.notifications import show_info

        segmentation = self.session.find(layer)
        tracker = segmentation.tracker
        training_set = self.session.training_set(segmentation)
        records = training_set.planes_of(segmentation.image_key)
        if not records:
            return
        restored = []
        with layer.block_history():
            for record in records:
                sample = training_set.load_plane(record)
                where = tracker.plane_slice(record.index)
                plane = np.asarray(layer.data[where])
                if plane.shape != sample.labels.shape:
                    continue
                rows, columns = np.nonzero(sample.known & (plane != sample.labels))
                if rows.size:
                    others = iter(record.index)
                    indices = tuple(
                        rows
                        if a == "Y"
                        else columns
                        if a == "X"
                        else np.full(rows.size, next(others), dtype=np.intp)
                        for a in tracker.axes
                    )
                    layer.data_setitem(indices, sample.labels[rows, columns], refresh=False)
                if record.fully_checked:
                    tracker.fully_checked.add(record.index)
                restored.append(record.index)
        if restored:
            layer.refresh()
            tracker.update(np.asarray(layer.data))
            self._owned[layer_key(layer)] = set(tracker.selected_planes()) & set(restored)
            show_info(
                f"Restored your saved corrections of {len(restored)} plane(s) of this image (undo with Ctrl+Z)."
            )
            self.refresh_planes()

    # ----- training -------------------------------------------------------------------------
    @property
    def worker(self) -> Any:
        """The running fine-tune's napari worker, or None (scripts wait for None)."""
        return self.runner.worker

    def start(self) -> Any:
        """Fine-tune the base model on the selected corrected planes in a worker."""
        from napari.utils.notifications import show_error

        from napari_unet.core.registry import next_version_path

        if self.runner.running:
            return None
        layer = self.current_layer()
        segmentation = self.session.find(layer)
        if segmentation is None:
            show_error("Nothing to fine-tune on: segment an image and correct it first.")
            return None
        segmentation.tracker.update(np.asarray(layer.data))  # catches writes that emit no event
        planes = collect_planes(segmentation, layer.data)
        if not planes:
            show_error(
                "No corrected planes: paint corrections (or tick 'fully checked' on a plane) first."
            )
            return None
        self.refresh_planes()
        base_name = self.base_combo.currentText()
        if not base_name:
            show_error(
                f"No base model fits these labels ({segmentation.mode}, classes "
                f"{', '.join(segmentation.class_names)}): segment with a model of that kind first."
            )
            return None
        # the channel the user segmented is the one the network learns from
        settings = replace(self.settings_from_widgets(), channel=segmentation.options.channel)
        self._save_settings()
        training_set = self.session.training_set(segmentation)
        stale = self._stale_planes(layer_key(layer), planes)
        source = segmentation.source
        self._live = live = queue.SimpleQueue()
        self._training_key, self._training_edited = layer_key(layer), False

        def work(stop: threading.Event) -> Any:
            from napari_unet.core.devices import usable_cores
            from napari_unet.core.training_process import iter_finetune_in_child

            save_planes(training_set, segmentation, planes, stale)
            others = [r for r in training_set.planes.values() if r.image != segmentation.image_key]
            samples = samples_from_planes(planes, source) + [
                training_set.load_plane(r) for r in others
            ]
            path = next_version_path(base_name)
            # in a child process: torch.optim would load triton, which crashes napari on
            # software OpenGL (see core/training_process.py)
            result = yield from iter_finetune_in_child(
                base_name,
                samples,
                settings,
                path,
                predict_options=segmentation.options,
                threads=usable_cores(),  # its own process: the viewer keeps its thread
                stop=stop,
                more_samples=lambda: _drain(live),
            )
            return result, path

        self.previous_model = base_name
        self.plot.clear()
        self.plot.setVisible(True)
        self.result.setText("")
        self._started = time.perf_counter()
        worker = self.runner.start(
            Job(work, f"fine-tuning {base_name}", "Fine-tuning failed", self._on_result)
        )
        self._set_running(True)
        return worker

    def _feed_running_training(self) -> None:
        """Send the planes corrected since the fine-tune started to it (2 s after painting
        pauses, with the save); they join its training within the prefetched batches."""
        if not self.runner.running or not self._training_edited:
            return
        self._training_edited = False
        layer = self._tracked.get(self._training_key)
        segmentation = self.session.find(layer)
        if segmentation is None:
            return
        planes = collect_planes(segmentation, layer.data)
        for sample in samples_from_planes(planes, segmentation.source):
            self._live.put(sample)
            self.planes_sent += 1

    def stop(self) -> None:
        """Cooperative stop: training ends at the next step, then both versions are compared."""
        self.runner.stop()
        self.eta.setText("Stopping: scoring the weights so far...")

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        for button in self._choice_buttons():
            button.setEnabled(False)

    def _on_step(self, step: Any) -> None:
        from napari_unet.core.training import TrainStatus

        if isinstance(step, TrainStatus):
            if step.text:  # an empty status is the job's heartbeat: nothing new
                self.eta.setText(step.text[:1].upper() + step.text[1:] + "...")
            return
        if not self.plot.steps and step.initial_score is not None:
            self.plot.add_validation(0, step.initial_score)  # the base model, before training
        self.plot.add(step.step, step.loss, step.val_score)
        if not self.runner.stop_requested:
            remaining = step.elapsed / step.step * (step.total - step.step)
            self.eta.setText(
                f"step {step.step}/{step.total}, loss {step.loss:.3f}, about {remaining:.0f} s left"
            )

    def _on_result(self, outcome: Any) -> None:
        result, path = outcome
        self.new_model = path.name.removesuffix(".safetensors")
        comparison = result.comparison
        verdict = (
            "Nothing was held out to compare the versions (validation share 0)."
            if comparison is None
            else comparison.describe(self.previous_model or "base", self.new_model)
        )
        if result.retention is not None:
            verdict += "\n" + result.retention.describe()
        better = comparison is not None and comparison.verdict == "better"
        kept = self.new_model if better else self.previous_model
        self.result.setText(
            f"Saved {self.new_model} ({result.reason}).\n{verdict}\n"
            + (
                f"{self.new_model} is now selected; Keep previous model goes back."
                if better
                else f"{kept} stays selected; Use new model switches to {self.new_model}."
            )
        )
        self.eta.setText(f"Done in {time.perf_counter() - self._started:.0f} s.")
        self.refresh_models()
        self.trained.emit(self.new_model, self.previous_model or "")
        if better:
            self.refresh_models(select=self.new_model)
            self.model_chosen.emit(self.new_model)
        self._show_choice(kept)

    def _on_end(self, _end: JobEnd) -> None:
        self._training_key = None
        self.train_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.plot.redraw()

    def _resegment(self) -> None:
        if self.new_model:
            self.resegment_requested.emit(self.new_model)

    def _keep_previous(self) -> None:
        """Go back to the base model: here, in the Segment panel and in the remembered settings."""
        from napari.utils.notifications import show_info

        if self.previous_model:
            self.refresh_models(select=self.previous_model)
            show_info(
                f"Keeping {self.previous_model}; {self.new_model} stays on disk for later comparison."
            )
            self.model_chosen.emit(self.previous_model)
            self._show_choice(self.previous_model)

    def _use_new(self) -> None:
        """Use the new version: here, in the Segment panel and in the remembered settings."""
        if self.new_model:
            self.refresh_models(select=self.new_model)
            self.model_chosen.emit(self.new_model)
            self._show_choice(self.new_model)

    def _show_choice(self, chosen: str | None) -> None:
        """After a fine-tune: the button that would switch to the other version stays on."""
        for button in self._choice_buttons():
            button.setVisible(True)
        self.resegment_button.setEnabled(bool(self.new_model))
        self.keep_button.setEnabled(chosen == self.new_model)
        self.use_button.setEnabled(chosen != self.new_model)

    def _choice_buttons(self) -> tuple[QPushButton, ...]:
        return (self.resegment_button, self.keep_button, self.use_button)


def _training_step(item: Any) -> Step | None:
    """The activity dock's view of a fine-tune's progress: its optimiser steps."""
    from napari_unet.core.training import TrainStep

    return Step(item.step, item.total, "training") if isinstance(item, TrainStep) else None


def _drain(items: queue.SimpleQueue[Any]) -> list[Any]:
    """Everything waiting in ``items`` (called from the job's thread)."""
    taken = []
    while True:
        try:
            taken.append(items.get_nowait())
        except queue.Empty:
            return taken

"""The Segment panel: pick an image and a model, run tiled inference in a worker."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QSettings, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QWidget,
)

from napari_unet.core.diameter import describe_sizes
from napari_unet.core.io import Stack
from napari_unet.core.options import DEFAULT_MODEL, RGB_CHOICES, PredictOptions
from napari_unet.core.seed_level import DEFAULT_LEVEL, SURE_LEVEL, describe_levels
from napari_unet.gui.block_segment import BlockSegmenter, full_resolution
from napari_unet.gui.controls import (
    button_row,
    collapsible_form,
    combo,
    float_spin,
    form,
    int_spin,
    panel_layout,
    pin_below,
    text_line,
)
from napari_unet.gui.corrections import CorrectionTracker
from napari_unet.gui.layers import METADATA_KEY, layer_axes
from napari_unet.gui.session import Segmentation, Session
from napari_unet.gui.workers import Job, JobEnd, JobRunner, stage_step

if TYPE_CHECKING:
    from napari_unet.core.bioimageio_foreign import PackageResult
    from napari_unet.core.inference import Prediction

BROWSE = "Browse..."
MODEL_RULE = "model's rule"  # the colour choice that leaves the bundle's input.rgb rule
COLOUR_NAMES = ("red", "green", "blue")  # the colour samples channel:0, channel:1, channel:2
SEMANTIC_COLOURS = [
    "#00000000",
    "#ff3b30",
    "#34c759",
    "#0a84ff",
    "#ffd60a",
    "#bf5af2",
    "#64d2ff",
    "#ff9f0a",
]


@dataclass(frozen=True)
class SegmentRequest:
    """A segmentation as it was asked for (main thread only).

    Attributes
    ----------
    layer : napari.layers.Image
        The image layer segmented.
    stack : Stack
        A copy of its data (or the lazy array itself) with its axes, as the job reads it.
    model : str
    options : PredictOptions
    new_layer : bool
        A re-segmentation to compare models: the result goes to a new layer of its own.
    """

    layer: Any
    stack: Stack
    model: str
    options: PredictOptions
    new_layer: bool = False


@dataclass(frozen=True)
class Segmented:
    """What the segmentation job returns to the main thread.

    Attributes
    ----------
    prediction : Prediction
    diameter : float or None
        The object diameter the model was trained on, when its bundle records one.
    """

    prediction: Prediction
    diameter: float | None


def model_names() -> list[str]:
    """Names of the bundled and the user's models, bundled first."""
    from napari_unet.core.registry import list_models

    return [entry.name for entry in list_models()]


def is_foreign_model(model: str) -> bool:
    """Whether a model choice is a bioimage.io package made by other software (a package
    that cannot be read counts as ours: loading it says what is wrong)."""
    from napari_unet.core.bioimageio_import import is_foreign_package
    from napari_unet.core.errors import BundleError

    try:
        return bool(model) and model != BROWSE and is_foreign_package(model)
    except BundleError:
        return False


def resolved_device_label() -> str:
    """What ``auto`` resolves to here, e.g. ``cpu (bf16)``."""
    from napari_unet.core.devices import resolve_compute

    return resolve_compute("auto").label


def colour_combo() -> QComboBox:
    """The Colour → grey choice: how a colour image becomes a grey model's input
    (:attr:`PredictOptions.rgb`; each entry's data is the rule, None for the model's own)."""
    box = combo()
    box.addItem(MODEL_RULE, None)
    for rule in RGB_CHOICES:
        _, _, k = rule.partition(":")
        box.addItem(COLOUR_NAMES[int(k)] if k else rule, rule)
    box.setToolTip(
        "How a colour (RGB) image becomes the model's grey input. auto: the colour with the "
        "most contrast between objects and background, inverted when the background is bright "
        "(stained tissue, bright-field); luminance, mean, max: the colours combined; red, "
        "green, blue: that colour alone. The status line says what was used."
    )
    return box


class SegmentPanel(QWidget):
    """Run a model on an image layer; the result lands in a Labels layer."""

    segmented = Signal(object)  # the Labels layer written

    def __init__(self, viewer: Any, session: Session, settings: QSettings) -> None:
        super().__init__()
        self.viewer = viewer
        self.session = session
        self.settings = settings

        self.image_combo = combo()
        self.axes_edit = QLineEdit()
        self.axes_edit.setPlaceholderText("axes, e.g. ZYX, TYX, TZYX")
        self.axes_edit.setToolTip(
            "Which axis is which: T time, Z depth, C channel, I independent planes, Y X"
        )
        self.axes_hint = text_line()  # shown only when there is something to say
        self.axes_hint.setVisible(False)
        self.model_combo = combo()
        self.device_combo = combo()
        self.mode_combo = combo("model's mode", "instances", "semantic")
        self.colour_combo = colour_combo()
        self.tile_spin = int_spin(64, 4096, 64)
        self.overlap_spin = float_spin(0.0, 0.5, step=0.025, decimals=4)
        self.threshold_spin = float_spin(0.0, 0.95, special="auto")
        self.threshold_spin.setToolTip(
            "Probability level of the objects' seeds and foreground. 'auto' (the lowest value) "
            f"keeps the foreground at {DEFAULT_LEVEL:g} and chooses the seeds' level for each plane: "
            f"{SURE_LEVEL:g} where the network is sure of much of what it finds (parts touching "
            f"objects), {DEFAULT_LEVEL:g} otherwise (keeps dim objects whole in a noisy image)."
        )
        self.min_size_spin = int_spin(0, 100000, special="auto")
        self.diameter_spin = float_spin(0.0, 2000.0, 1.0, decimals=1, special="auto")
        self.diameter_spin.setToolTip(
            "Typical object diameter in pixels. 'auto' estimates it for each plane from a "
            "first look and rescales the image so objects have the size the model was trained on."
        )
        self.tta_check = QCheckBox("average 8 orientations (8x slower)")
        self.tta_check.setToolTip(
            "Test-time augmentation: segment each tile in its 8 orientations and average them."
        )
        self.channel_spin = int_spin(-1, 64, special="-")
        self.link_check = QCheckBox("link objects through Z")
        self.package_note = text_line()  # about a bioimage.io package from other software
        self._consent_model = ""  # the package the code checkbox's answer is for
        self.code_check = QCheckBox("run the Python code in this package")
        self.code_check.setToolTip(
            "Some bioimage.io packages rebuild their network from Python code in the file: "
            "ticking this executes that code on this computer. Only for packages you trust. "
            "Without it, only TorchScript weights run (no code from the file)."
        )
        self.run_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.status = text_line()
        self.runner = JobRunner(
            on_yield=self._on_progress,
            measure=stage_step,
            status=self.status.setText,
            on_end=self._on_end,
        )
        self.blocks = BlockSegmenter(viewer, self.status.setText)  # large images

        self.advanced = collapsible_form(
            "Advanced",
            [
                ("Tile size", self.tile_spin),
                ("Overlap", self.overlap_spin),
                ("Threshold", self.threshold_spin),
                ("Min object size (px)", self.min_size_spin),
                ("Object diameter (px)", self.diameter_spin),
                ("Test-time aug.", self.tta_check),
                ("Channel", self.channel_spin),
                ("", self.link_check),
            ],
        )
        self.body = layout = panel_layout(self)  # the dock widget adds Correct next to it
        rows = [
            ("Image", self.image_combo),
            ("Axes", self.axes_edit),
            ("Model", self.model_combo),
            ("Device", self.device_combo),
            ("Mode", self.mode_combo),
            ("Colour → grey", self.colour_combo),
        ]
        self.form = form(rows)
        layout.addLayout(self.form)
        layout.addWidget(self.axes_hint)
        layout.addWidget(self.package_note)
        layout.addWidget(self.code_check)
        layout.addWidget(self.advanced)
        layout.addWidget(self.blocks.controls.section)
        layout.addWidget(self.status)
        layout.addStretch()
        pin_below(self, button_row(self.run_button, self.cancel_button), self.progress_bar)

        self._fill_devices()
        self.refresh_models()
        self._restore_settings()
        self.refresh_images()
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.model_combo.activated.connect(self._model_activated)
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.image_combo.currentIndexChanged.connect(self._image_changed)
        for event in (
            viewer.layers.events.inserted,
            viewer.layers.events.removed,
            viewer.layers.events.moved,
        ):
            event.connect(self.refresh_images)

    # ----- pickers -------------------------------------------------------------------------
    def _fill_devices(self) -> None:
        import torch

        from napari_unet.core.devices import mps_available

        self.device_combo.addItem(f"auto: {resolved_device_label()}", "auto")
        self.device_combo.addItem("cpu", "cpu")
        if torch.cuda.is_available():
            self.device_combo.addItem("cuda", "cuda")
        if mps_available():
            self.device_combo.addItem("mps", "mps")

    def refresh_models(self, select: str | None = None) -> None:
        """Re-list the models (bundled, the user's versions) and keep or set the selection."""
        current = (
            select
            or self.model_combo.currentData()
            or self.settings.value("segment/model", DEFAULT_MODEL)
        )
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for name in model_names():
            self.model_combo.addItem(name, name)
        if current and self.model_combo.findData(current) < 0:
            self.model_combo.addItem(str(current), str(current))
        self.model_combo.addItem(BROWSE, BROWSE)
        index = self.model_combo.findData(current)
        self.model_combo.setCurrentIndex(max(index, 0))
        self.model_combo.blockSignals(False)
        self._model_changed()

    def _model_changed(self, *_: Any) -> None:
        """Say what a bioimage.io package from other software can do, and offer to run its
        code; hide both for napari-unet's own models."""
        foreign = is_foreign_model(self.model)
        self.package_note.setText(
            "A bioimage.io package from other software: it runs with its own processing, "
            "for segmentation only (it cannot be fine-tuned). Of the options, only threshold, "
            "minimum size, channel and device apply."
            if foreign
            else ""
        )
        self.package_note.setVisible(foreign)
        self.code_check.setVisible(foreign)
        if self.model != self._consent_model:  # consent is given per package, not remembered
            self.code_check.setChecked(False)
            self._consent_model = self.model

    def _model_activated(self, index: int) -> None:
        if self.model_combo.itemData(index) != BROWSE:
            return
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Choose a model",
            "",
            "napari-unet bundles or bioimage.io packages (*.safetensors *.zip rdf.yaml)",
        )
        if path:
            self.refresh_models(select=path)
        else:
            self.model_combo.setCurrentIndex(0)

    def select_model(self, name: str) -> None:
        """Select a model and remember it for the next session."""
        self.refresh_models(select=name)
        self.settings.setValue("segment/model", self.model)

    @property
    def model(self) -> str:
        return str(self.model_combo.currentData() or "")

    def image_layers(self) -> list[Any]:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def refresh_images(self, *_: Any) -> None:
        """Follow the layer list: list the image layers, keeping the current choice."""
        current = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for layer in self.image_layers():
            self.image_combo.addItem(layer.name)
        index = self.image_combo.findText(current)
        if index >= 0:
            self.image_combo.setCurrentIndex(index)
        self.image_combo.blockSignals(False)
        self._image_changed()

    def selected_image(self) -> Any:
        name = self.image_combo.currentText()
        return next((layer for layer in self.image_layers() if layer.name == name), None)

    def _image_changed(self, *_: Any) -> None:
        layer = self.selected_image()
        axes = layer_axes(layer) if layer is not None else None
        self.axes_edit.setText(axes + ("S" if layer.rgb else "") if axes is not None else "")
        self._show_colour_choice(layer is not None and bool(layer.rgb))
        if layer is None:
            hint = "Open an image (File > Open, or File > Open Sample > napari-unet)."
        elif axes is None:
            shape = "x".join(map(str, layer.data.shape))
            hint = (
                f"This {layer.data.ndim}D image ({shape}) has no axis information: type one letter per "
                "axis (T time, Z depth, C channel, I unrelated planes), ending in YX."
            )
        else:
            hint = ""
        self.axes_hint.setText(hint)
        self.axes_hint.setVisible(bool(hint))

    def _show_colour_choice(self, shown: bool) -> None:
        """The Colour → grey row, only for an image with colour samples (RGB/RGBA)."""
        self.colour_combo.setVisible(shown)
        self.form.labelForField(self.colour_combo).setVisible(shown)

    # ----- settings ------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        s = self.settings
        defaults = PredictOptions()
        self.channel_spin.setValue(-1 if defaults.channel is None else defaults.channel)
        self.tile_spin.setValue(int(s.value("segment/tile", defaults.tile_size)))
        self.overlap_spin.setValue(float(s.value("segment/overlap", defaults.overlap)))
        level = s.value("segment/threshold", defaults.threshold)
        self.threshold_spin.setValue(float(level or 0.0))  # 0.0 shows "auto"
        self.min_size_spin.setValue(int(s.value("segment/min_size", 0)))
        linked = str(s.value("segment/link_z", str(defaults.link_z).lower()))
        self.link_check.setChecked(linked == "true")

    def _save_settings(self) -> None:
        s = self.settings
        s.setValue("segment/model", self.model)
        s.setValue("segment/tile", self.tile_spin.value())
        s.setValue("segment/overlap", self.overlap_spin.value())
        s.setValue("segment/threshold", self.threshold_spin.value())
        s.setValue("segment/min_size", self.min_size_spin.value())
        s.setValue("segment/link_z", "true" if self.link_check.isChecked() else "false")

    def options(self) -> PredictOptions:
        mode = self.mode_combo.currentText()
        return PredictOptions(
            mode=None if mode == "model's mode" else mode,
            tile_size=self.tile_spin.value(),
            overlap=self.overlap_spin.value(),
            threshold=self.threshold_spin.value() or None,
            min_size=self.min_size_spin.value() or None,
            link_z=self.link_check.isChecked(),
            diameter=self.diameter_spin.value() or None,
            tta=self.tta_check.isChecked(),
            channel=None if self.channel_spin.value() < 0 else self.channel_spin.value(),
            rgb=self.colour_combo.currentData(),
            device=str(self.device_combo.currentData()),
        )

    # ----- running -------------------------------------------------------------------------
    @property
    def worker(self) -> Any:
        """The running segmentation's napari worker, or None (scripts wait for None)."""
        return self.runner.worker

    def run(self, *, model: str | None = None, new_layer: bool = False) -> Any:
        """Segment the selected image in a worker. Returns the worker, or None on bad input.

        ``new_layer``: a re-segmentation to compare models. The result goes to a new layer of
        its own, holding the model's output only (saved corrections are not put back into it).
        """
        from napari.utils.notifications import show_error, show_warning

        from napari_unet.core.errors import InputError

        if self.runner.running:
            show_warning("A segmentation is already running; cancel it first.")
            return None
        layer = self.selected_image()
        if layer is None:
            show_error("No image to segment: open an image first.")
            return None
        axes = self.axes_edit.text().strip().upper()
        data = full_resolution(layer)
        blocks = self.blocks.wanted(layer)
        # an in-memory image is copied so the worker never sees the layer; a lazy one (dask,
        # read from a large file) is read-only and read plane by plane in the worker
        data = data.copy() if type(data) is np.ndarray and not blocks else data
        try:
            stack = Stack(data, axes)
        except InputError as error:
            show_error(f"Axes: {error}. Set the Axes field (e.g. ZYX).")
            return None
        layer.metadata.setdefault(METADATA_KEY, {})["axes"] = axes.replace("S", "")
        request = SegmentRequest(layer, stack, model or self.model, self.options(), new_layer)
        self._save_settings()
        if is_foreign_model(request.model):  # whole planes, with the package's own processing
            work, done = self._package_job(request)
        elif blocks:
            job = self.blocks.job(layer, stack, request.model, request.options)
            return self._start(job, f"Segmenting {layer.name} in blocks with {request.model}...")
        else:
            work, done = _model_job, partial(self._on_result, request)
        job = Job(partial(work, request), f"segmenting {layer.name}", "Segmentation failed", done)
        return self._start(job, f"Segmenting {layer.name} with {request.model}...")

    def _start(self, job: Job[Any], status: str) -> Any:
        worker = self.runner.start(job)
        self._set_running(True)
        self.status.setText(status)
        return worker

    def _package_job(self, request: SegmentRequest) -> tuple[Callable[..., Any], Any]:
        """The work and result slot of a run of a package from other software, with the
        consent to run its code as the checkbox gives it now."""
        allow_code = self.code_check.isChecked()

        def work(request: SegmentRequest, _stop: threading.Event) -> Any:
            from napari_unet.core.bioimageio_foreign import iter_predict_package, open_package

            package = open_package(request.model, allow_code=allow_code)
            options = request.options
            return (
                yield from iter_predict_package(
                    request.stack,
                    package,
                    channel=options.channel,
                    threshold=options.threshold,
                    min_size=options.min_size,
                    device=options.device,
                )
            )

        return work, partial(self._on_package_result, request)

    def _on_package_result(self, request: SegmentRequest, result: PackageResult) -> None:
        """A package's labels go to a new Labels layer, any other output to an Image layer;
        neither is offered for fine-tuning (the package cannot be fine-tuned)."""
        image = request.layer
        model = result.name
        scale = _layer_scale(image, request.stack.axes, result.axes)
        metadata = {METADATA_KEY: {"axes": result.axes}}
        if result.kind == "image":
            layer = self.viewer.add_image(
                result.data, name=f"{image.name} output ({model})", scale=scale, metadata=metadata
            )
            what = "its output is not labels, so it opened as an image"
        else:
            layer = self.viewer.add_labels(
                result.data, name=f"{image.name} labels ({model})", scale=scale, metadata=metadata
            )
            what = f"{result.objects} objects" if result.kind == "objects" else "classes"
        self.status.setText(
            f"{layer.name}: {what} ({result.weight_format} weights).\n"
            "This package comes from other software: it cannot be fine-tuned. To fine-tune, "
            "segment with a napari-unet model."
        )
        self.progress_bar.setValue(self.progress_bar.maximum())

    def cancel(self) -> None:
        """Abort the running segmentation, nothing is written; a segmentation in blocks stops
        after the blocks running and keeps those done."""
        if self.blocks.active:
            self.status.setText("Stopping after the blocks running...")
            self.runner.stop()
        elif self.runner.running:
            self.status.setText("Cancelling...")
            self.runner.cancel()

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_progress(self, progress: Any) -> None:
        if self.blocks.active:
            self.blocks.on_progress(progress)
        elif progress.notice:
            from napari.utils.notifications import show_warning

            show_warning(f"napari-unet: {progress.notice}")
        self.progress_bar.setMaximum(max(progress.total, 1))
        self.progress_bar.setValue(progress.done)

    def _on_result(self, request: SegmentRequest, segmented: Segmented) -> None:
        prediction = segmented.prediction
        labels_layer = self._write_labels(request, prediction, segmented.diameter)
        sizes = describe_sizes(prediction.stats.get("sizes", []), segmented.diameter)
        levels = describe_levels(prediction.stats.get("levels", []))
        colour = prediction.stats.get("colour_input")
        self.status.setText(
            f"{labels_layer.name}: {self._describe(prediction)} ({prediction.compute}).\n"
            + "".join(f"{line[0].upper()}{line[1:]}.\n" for line in (colour, sizes, levels) if line)
            + "Correct mistakes with the brush, eraser and fill, then fine-tune."
        )
        self.progress_bar.setValue(self.progress_bar.maximum())
        self.segmented.emit(labels_layer)

    def _describe(self, prediction: Prediction) -> str:
        if prediction.mode == "instances":
            return f"{prediction.stats['objects']} objects"  # counted in the worker, not here
        return f"classes {', '.join(prediction.class_names)}"

    def _write_labels(
        self, request: SegmentRequest, prediction: Prediction, diameter: float | None
    ) -> Any:
        """Put the result in a Labels layer, never overwriting the user's corrections."""
        from napari.utils.notifications import show_info

        image = request.layer
        name = f"{image.name} labels"
        existing = next((lyr for lyr in self.viewer.layers if lyr.name == name), None)
        segmentation = self.session.find(existing)
        reusable = False
        if (
            segmentation is not None
            and existing.data.shape == prediction.labels.shape
            and not request.new_layer
        ):
            segmentation.tracker.update(
                np.asarray(existing.data)
            )  # edits through layer.data[...] emit nothing
            reusable = not segmentation.tracker.edits
        scale = _layer_scale(image, request.stack.axes, prediction.axes)
        if reusable:
            labels_layer = existing
            labels_layer.data = prediction.labels
        else:
            if existing is not None:
                name = f"{name} ({request.model})"
                if not request.new_layer:
                    show_info(
                        f"'{existing.name}' holds your corrections or was not made here, so the result goes to a new layer '{name}'."
                    )
            labels_layer = self.viewer.add_labels(
                prediction.labels,
                name=name,
                scale=scale,
                metadata={METADATA_KEY: {"axes": prediction.axes}},
            )
        if prediction.mode == "semantic":
            self._style_semantic(labels_layer, prediction.class_names)
        tracker = CorrectionTracker(
            prediction.labels, prediction.axes, margin=max(16, int(diameter or 16))
        )
        self.session.register(
            labels_layer,
            Segmentation(
                image_name=image.name,
                image_data=request.stack.data,
                image_axes=request.stack.axes,
                model=request.model,
                mode=prediction.mode,
                class_names=prediction.class_names,
                options=request.options,
                tracker=tracker,
                source=str((image.metadata.get(METADATA_KEY) or {}).get("path") or image.name),
                comparison=request.new_layer,
            ),
        )
        return labels_layer

    def _style_semantic(self, layer: Any, class_names: list[str]) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        colours = {k: SEMANTIC_COLOURS[k % len(SEMANTIC_COLOURS)] for k in range(len(class_names))}
        colours[None] = "#ffffffff"
        layer.colormap = DirectLabelColormap(color_dict=colours)
        layer.features = {"class": class_names}

    def _on_end(self, end: JobEnd) -> None:
        if self.blocks.active:
            self.blocks.finished(end)
        elif end is JobEnd.CANCELLED:
            self.status.setText("Cancelled; nothing was written.")
        if self.progress_bar.value() < self.progress_bar.maximum():  # cancelled or failed
            self.progress_bar.setValue(0)
        self._set_running(False)


def _model_job(request: SegmentRequest, _stop: threading.Event) -> Any:
    """Segment with a napari-unet model (Cancel aborts: no cooperative stop)."""
    from napari_unet.core.inference import iter_predict
    from napari_unet.core.registry import load_bundle

    bundle = load_bundle(request.model)
    prediction = yield from iter_predict(request.stack, bundle, request.options)
    return Segmented(prediction, bundle.config.get("object_diameter"))


def _layer_scale(image: Any, image_axes: str, axes: str) -> list[float] | None:
    """The scale of a result layer with ``axes``, from the image layer it was made from
    (whose data has ``image_axes``); 1 for an axis the image does not have (C)."""
    by_axis = dict(zip(image_axes.replace("S", ""), image.scale, strict=False))
    return [float(by_axis.get(a, 1.0)) if a != "C" else 1.0 for a in axes] or None

"""``napari-unet demo``: napari with the sample nuclei, the dock widget and the bundled model."""

from __future__ import annotations

from collections.abc import Callable

from napari_unet.core.options import DEFAULT_MODEL

NEXT_STEPS = (
    "Next: fix a few mistakes in '{layer}' with napari's brush, eraser and fill (layer "
    "controls, top left), or use 'Find uncertain objects' to see where the model is unsure; "
    "then open the Fine-tune tab and press Fine-tune. Your own images: drag a TIFF into the "
    "window and press Segment."
)


def open_demo(
    viewer: object, *, run: bool = True, report: Callable[[str], None] | None = None
) -> object:
    """Load the sample image into ``viewer``, dock the widget, select the model, and segment.

    Parameters
    ----------
    viewer : napari.Viewer
    run : bool
        Start segmenting the sample.
    report : callable, optional
        Called with a line of text at each stage and with what to try next (``napari-unet
        demo`` prints them, so the terminal says what is happening).

    Returns
    -------
    The dock widget.
    """
    say = report or (lambda text: None)
    from napari_unet.core.errors import BundleError
    from napari_unet.core.registry import resolve_model
    from napari_unet.gui.main_widget import UnetWidget
    from napari_unet.gui.sample_data import nuclei_2d
    from napari_unet.gui.segment_widget import resolved_device_label

    for data, kwargs, _ in nuclei_2d():
        viewer.add_image(data, **kwargs)
        say(
            f"loaded the sample image '{kwargs.get('name', 'image')}' ({' x '.join(map(str, data.shape))} pixels)"
        )
    widget = UnetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="napari-unet", area="right")
    try:
        resolve_model(DEFAULT_MODEL)
    except BundleError as error:
        from napari.utils.notifications import show_error

        show_error(f"The bundled model is missing ({error}); reinstall napari-unet.")
        return widget
    widget.segment.refresh_models(select=DEFAULT_MODEL)
    if run:
        widget.segment.segmented.connect(lambda layer: say(_finished(layer)))
        say(
            f"segmenting it with the bundled model '{DEFAULT_MODEL}' on {resolved_device_label()} ..."
        )
        widget.segment.run()
    return widget


def _finished(layer: object) -> str:
    """What the segmentation found, and what to try next."""
    import numpy as np

    found = int(np.asarray(layer.data).max())
    return f"found {found} nuclei in '{layer.name}'. {NEXT_STEPS.format(layer=layer.name)}"

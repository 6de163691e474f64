"""``napari-unet demo``: napari with the sample nuclei, the dock widget and the bundled model."""

from __future__ import annotations

DEMO_MODEL = "nuclei"


def open_demo(viewer: object, *, run: bool = True) -> object:
    """Load the sample image into ``viewer``, dock the widget, select the model, and segment.

    Returns the dock widget.
    """
    from napari_unet.core.errors import BundleError
    from napari_unet.core.registry import resolve_model
    from napari_unet.gui.main_widget import UnetWidget
    from napari_unet.gui.sample_data import nuclei_2d

    for data, kwargs, _ in nuclei_2d():
        viewer.add_image(data, **kwargs)
    widget = UnetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="napari-unet", area="right")
    try:
        resolve_model(DEMO_MODEL)
    except BundleError as error:
        from napari.utils.notifications import show_error

        show_error(f"The bundled model is missing ({error}); reinstall napari-unet.")
        return widget
    widget.segment.refresh_models(select=DEMO_MODEL)
    if run:
        widget.segment.run()
    return widget


def run_demo() -> int:
    """Start napari with the demo and block until the window closes."""
    import napari

    viewer = napari.Viewer(title="napari-unet demo")
    open_demo(viewer)
    napari.run()
    return 0

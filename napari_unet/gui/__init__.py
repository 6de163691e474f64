"""napari side of napari-unet: reader, writer, sample data and the dock widget.

Everything here may import napari and Qt (through qtpy); the numerics live in
:mod:`napari_unet.core`.
"""

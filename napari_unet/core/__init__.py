"""Qt-free engine of napari-unet: reading, the U-Net, tiled inference, training.

Nothing in this package imports napari, qtpy, magicgui or superqt.
"""

"""Exceptions for mistakes a user can make and faults the engine reports.

They deliberately do not derive from RuntimeError: superqt's generator workers turn a
RuntimeError raised inside a generator into a warning, which would hide the error.
"""

from __future__ import annotations


class UnetError(Exception):
    """Base class of every error napari-unet raises on purpose; its message says what to do."""


class ImageReadError(UnetError):
    """A file could not be read as an image (missing, empty, corrupt or unsupported)."""


class BundleError(UnetError):
    """A model bundle is missing, malformed, mismatched or from a newer format."""


class InputError(UnetError, ValueError):
    """Arguments or data that cannot be used as given (wrong axes, shapes, values)."""


class TrainingDataError(InputError):
    """A training set or its labels cannot be trained on."""


class EngineError(UnetError):
    """An unexpected failure inside inference or training (wraps torch's RuntimeErrors)."""

"""The training set on disk, shared by the GUI and the CLI.

A training set is a folder::

    manifest.json           format version, mode, class names, images, planes (written last)
    planes/<key>.npz        one file per labelled plane: image, labels, known

Every file is written atomically and the manifest last, so an interrupted save leaves the
previous state readable. Plane files are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.atomic import atomic_write_bytes, atomic_write_text, remove_stale_partials
from napari_unet.core.errors import TrainingDataError
from napari_unet.core.samples import TrainingSample
from napari_unet.core.targets import check_labels

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
LOCK_SECONDS = 60


def image_fingerprint(data: np.ndarray) -> str:
    """A short, stable hash of an image's pixels (sampled for large images)."""
    digest = hashlib.sha256()
    digest.update(str((data.shape, str(data.dtype))).encode())
    flat = np.ascontiguousarray(data).reshape(-1)
    step = max(1, flat.size // 4_000_000)
    digest.update(np.ascontiguousarray(flat[::step]).tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class PlaneRecord:
    """One labelled plane in the manifest."""

    image: str  # image key (fingerprint)
    index: tuple[int, ...]  # position along the image's stack axes
    file: str  # relative path of the .npz
    fully_checked: bool
    n_objects: int
    updated: str

    @property
    def key(self) -> str:
        return plane_key(self.image, self.index)


def plane_key(image: str, index: tuple[int, ...]) -> str:
    """File-safe key of a plane: ``<image>_<i>_<j>``."""
    return "_".join([image, *map(str, index)]) if index else f"{image}_0"


class TrainingSet:
    """A folder of labelled planes with a manifest.

    Parameters
    ----------
    folder : path-like
        Where the set lives; created on the first write.
    mode : {"instances", "semantic"}
    class_names : list of str
    """

    def __init__(self, folder: str | os.PathLike[str], mode: str, class_names: list[str]) -> None:
        self.folder = Path(folder)
        self.mode = mode
        self.class_names = list(class_names)
        self.images: dict[str, dict[str, Any]] = {}
        self.planes: dict[str, PlaneRecord] = {}

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> TrainingSet:
        """Open an existing training set.

        Raises
        ------
        TrainingDataError
            If the folder holds no valid manifest.
        """
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise TrainingDataError(f"{folder} is not a training set (no {MANIFEST})")
        for part in (folder, folder / "planes"):  # left by writers that were killed
            remove_stale_partials(part)
        try:
            manifest = json.loads(path.read_text("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise TrainingDataError(f"{path} is damaged: {error}") from error
        if not isinstance(manifest, dict) or manifest.get("format_version", 0) > FORMAT_VERSION:
            raise TrainingDataError(f"{path} is from a newer napari-unet or not a manifest")
        try:
            training_set = cls(folder, str(manifest["mode"]), list(manifest["class_names"]))
            training_set.images = dict(manifest.get("images", {}))
            for record in manifest.get("planes", []):
                plane = PlaneRecord(
                    image=str(record["image"]),
                    index=tuple(int(i) for i in record["index"]),
                    file=_inside(folder, str(record["file"]), path),
                    fully_checked=bool(record.get("fully_checked", False)),
                    n_objects=int(record.get("n_objects", 0)),
                    updated=str(record.get("updated", "")),
                )
                training_set.planes[plane.key] = plane
        except (KeyError, TypeError, ValueError) as error:
            what = f"lacks {error}" if isinstance(error, KeyError) else f"is malformed ({error})"
            raise TrainingDataError(f"{path} {what}; it is not a usable manifest") from error
        return training_set

    @classmethod
    def open_or_create(
        cls, folder: str | os.PathLike[str], mode: str, class_names: list[str]
    ) -> TrainingSet:
        """Open the set in ``folder`` if there is one (checking it matches), else a new one."""
        if (Path(folder) / MANIFEST).is_file():
            existing = cls.open(folder)
            if existing.mode != mode or existing.class_names != list(class_names):
                raise TrainingDataError(
                    f"{folder} holds a {existing.mode} training set with classes "
                    f"{existing.class_names}; it cannot take {mode} labels with classes {class_names}"
                )
            return existing
        return cls(folder, mode, class_names)

    def add_image(self, key: str, *, source: str, shape: tuple[int, ...], axes: str) -> None:
        """Record an image the planes come from (its path, shape and axes)."""
        self.images[key] = {"source": source, "shape": list(shape), "axes": axes}

    def put_plane(
        self,
        image: str,
        index: tuple[int, ...],
        pixels: np.ndarray,
        labels: np.ndarray,
        known: np.ndarray | None,
        *,
        plane_axes: str = "YX",
        fully_checked: bool = False,
    ) -> PlaneRecord:
        """Save (or replace) one labelled plane and rewrite the manifest.

        Parameters
        ----------
        image : str
            Key of an image added with :meth:`add_image`.
        index : tuple of int
            Position of the plane along the image's stack axes.
        pixels : ndarray
            Raw image plane, axes ``plane_axes``.
        labels : ndarray of shape (Y, X)
        known : ndarray of shape (Y, X) or None
            Nonzero where the labels are trusted; None (or ``fully_checked``) = everywhere.
        """
        if image not in self.images:
            raise TrainingDataError(f"unknown image {image!r}; add it first")
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape != pixels.shape[:2]:
            raise TrainingDataError(
                f"labels {labels.shape} do not match the plane {pixels.shape[:2]}"
            )
        check_labels(labels, self.mode, len(self.class_names))
        if known is None or fully_checked:
            known = np.ones(labels.shape, dtype=bool)
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            image=np.asarray(pixels),
            labels=labels,
            known=np.asarray(known, dtype=bool),
            plane_axes=np.array(plane_axes),
        )
        key = plane_key(image, index)
        relative = f"planes/{key}.npz"
        (self.folder / "planes").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / relative, buffer.getvalue())
        record = PlaneRecord(
            image=image,
            index=tuple(int(i) for i in index),
            file=relative,
            fully_checked=fully_checked,
            n_objects=_count_objects(labels, known, self.mode),
            updated=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        )
        self._update(lambda: self.planes.__setitem__(key, record))
        return record

    def remove_plane(self, image: str, index: tuple[int, ...]) -> None:
        """Forget a plane (its file is removed after the manifest no longer lists it)."""
        key = plane_key(image, index)
        removed: list[PlaneRecord] = []
        self._update(lambda: removed.extend([self.planes.pop(key)] if key in self.planes else []))
        for record in removed:
            (self.folder / record.file).unlink(missing_ok=True)

    def _update(self, change: Callable[[], object]) -> None:
        """Apply ``change`` to the manifest as it is on disk now, and write it back.

        Under a lock file (``.lock``), the images and planes written meanwhile by another
        writer (a second napari window, a CLI run) are read back first, so neither loses the
        other's planes.
        """
        from filelock import FileLock, Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(self.folder / LOCK, timeout=LOCK_SECONDS):
                if (self.folder / MANIFEST).is_file():
                    on_disk = TrainingSet.open(self.folder)
                    self.images = {**on_disk.images, **self.images}  # ours: not yet written
                    self.planes = on_disk.planes  # every plane written so far, by anyone
                change()
                self.write_manifest()
        except Timeout as error:
            raise TrainingDataError(
                f"{self.folder} is locked by another program for over {LOCK_SECONDS} s; "
                f"if none is running, delete {self.folder / LOCK}"
            ) from error

    def write_manifest(self) -> None:
        """Write the manifest atomically (callers hold the lock: see :meth:`_update`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION,
            "mode": self.mode,
            "class_names": self.class_names,
            "images": self.images,
            "planes": [
                {
                    "image": r.image,
                    "index": list(r.index),
                    "file": r.file,
                    "fully_checked": r.fully_checked,
                    "n_objects": r.n_objects,
                    "updated": r.updated,
                }
                for r in sorted(self.planes.values(), key=lambda r: (r.image, r.index))
            ],
        }
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=1))

    def planes_of(self, image: str) -> list[PlaneRecord]:
        """Planes recorded for one image."""
        return [r for r in self.planes.values() if r.image == image]

    def load_plane(self, record: PlaneRecord) -> TrainingSample:
        """Read one plane back as a training sample."""
        path = self.folder / record.file
        try:
            with np.load(path, allow_pickle=False) as data:
                return TrainingSample(
                    image=data["image"],
                    labels=data["labels"],
                    known=data["known"],
                    plane_axes=str(data["plane_axes"]),
                    source=f"{self.images.get(record.image, {}).get('source', record.image)}{list(record.index)}",
                )
        except (OSError, ValueError, KeyError) as error:
            raise TrainingDataError(f"{path} is damaged or missing: {error}") from error

    def samples(self, keys: list[str] | None = None) -> list[TrainingSample]:
        """All planes (or those with the given keys) as training samples."""
        records = [r for k, r in sorted(self.planes.items()) if keys is None or k in keys]
        return [self.load_plane(r) for r in records]

    def summary(self) -> dict[str, int]:
        """Counts: ``images``, ``planes``, ``objects`` (labelled objects in known regions)."""
        return {
            "images": len({r.image for r in self.planes.values()}),
            "planes": len(self.planes),
            "objects": sum(r.n_objects for r in self.planes.values()),
        }


def _inside(folder: Path, relative: str, manifest: Path) -> str:
    """``relative`` if it names a file inside ``folder``; a manifest may not point elsewhere
    (``../``, absolute paths, links out of the folder)."""
    root = folder.resolve()
    target = (folder / relative).resolve()
    if not target.is_relative_to(root) or Path(relative).is_absolute():
        raise TrainingDataError(
            f"{manifest} points outside its folder ({relative!r}); a training set only reads "
            "its own files"
        )
    return relative


def _count_objects(labels: np.ndarray, known: np.ndarray, mode: str) -> int:
    inside = labels[np.asarray(known, dtype=bool)]
    values = np.unique(inside[inside > 0])
    return int(values.size)

"""Open a bioimage.io model package (zip or folder) exported by napari-unet, offline.

The package's description names the napari-unet bundle it carries (``config.napari_unet``)
and lists it among its attachments with a SHA-256. That bundle is read, checked against the
hash and loaded like any ``.safetensors`` bundle: no pickle, no code from the package, and
neither ``bioimageio.spec`` nor ``bioimageio.core`` is needed.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

from napari_unet.core.bundle import Bundle, load_bundle_bytes
from napari_unet.core.errors import BundleError

DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml")
MAX_BUNDLE_BYTES = 2**30  # far above any bundle a valid architecture makes (0.8 GB of weights)


def is_package(path: str | os.PathLike[str]) -> bool:
    """True for a bioimage.io package: a zip or a folder with an ``rdf.yaml`` or
    ``bioimageio.yaml`` at its top, or that description file itself."""
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in DESCRIPTION_NAMES)
    if path.name in DESCRIPTION_NAMES:
        return path.is_file()
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name in archive.namelist() for name in DESCRIPTION_NAMES)


def not_a_package(path: str | os.PathLike[str]) -> str | None:
    """Why a ``.zip`` file or a folder is not a bioimage.io package, as the end of a
    sentence that starts with its path; None for a package or any other path."""
    path = Path(path)
    if path.is_dir():
        return None if is_package(path) else f"is a folder without {DESCRIPTION_NAMES[0]}"
    if path.suffix != ".zip" or not path.is_file():
        return None
    if not zipfile.is_zipfile(path):
        return "is not a valid zip file"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name in names for name in DESCRIPTION_NAMES):
        return None
    inner = next((n for n in names if Path(n).name in DESCRIPTION_NAMES), None)
    where = f" (it is at {inner}: zip the package's files, not their folder)" if inner else ""
    return f"has no {DESCRIPTION_NAMES[0]} at its top{where}"


def read_description(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The package's model description, as plain data.

    Raises
    ------
    BundleError
        If the package has no readable description.
    """
    import yaml

    text = _read_member(Path(path), None)
    try:
        description = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise BundleError(f"{path}: its description is not valid YAML ({error})") from error
    if not isinstance(description, dict):
        raise BundleError(f"{path}: its description is not a YAML mapping")
    return description


def is_foreign_package(path: str | os.PathLike[str]) -> bool:
    """True for a bioimage.io package that carries no napari-unet bundle (made by other
    software: it runs through :mod:`napari_unet.core.bioimageio_foreign`, for prediction
    only)."""
    return is_package(path) and not isinstance(_own_config(read_description(path)), dict)


def _own_config(description: dict[str, Any]) -> Any:
    """The ``config.napari_unet`` entry of a description (None when absent)."""
    config = description.get("config")
    return config.get("napari_unet") if isinstance(config, dict) else None


def load_package_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Load the napari-unet bundle attached to a bioimage.io package.

    Parameters
    ----------
    path : path-like
        A ``.zip`` package, its folder, or its ``rdf.yaml``.

    Returns
    -------
    Bundle
        As :func:`~napari_unet.core.bundle.load_bundle_bytes`; its ``path`` is the package.

    Raises
    ------
    BundleError
        If the package was not exported by napari-unet (such a package can only predict,
        through :mod:`napari_unet.core.bioimageio_foreign`), its bundle is missing,
        referenced by URL, or does not match its SHA-256, or the bundle itself is refused.
    """
    path = Path(path)
    description = read_description(path)
    own = _own_config(description)
    if not isinstance(own, dict):
        raise BundleError(
            f"{path} is a bioimage.io package that was not exported by napari-unet: it can "
            "segment images (napari-unet predict, the Segment panel) but cannot be "
            "fine-tuned or trained further; start from a napari-unet model instead"
        )
    if not isinstance(own.get("bundle"), str):
        raise BundleError(f"{path}: its napari-unet config names no bundle")
    name = own["bundle"]
    entry = next(
        (
            item
            for item in description.get("attachments") or []
            if isinstance(item, dict) and item.get("source") == name
        ),
        None,
    )
    if entry is None:
        raise BundleError(f"{path}: its bundle {name!r} is not among its attachments")
    if "://" in name or Path(name).name != name or not name.endswith(".safetensors"):
        raise BundleError(
            f"{path}: its bundle must be a .safetensors file inside the package, not {name!r}"
        )
    content = _read_member(path, name)
    digest = hashlib.sha256(content).hexdigest()
    if entry.get("sha256") and entry["sha256"] != digest:
        raise BundleError(f"{path}: {name} does not match the SHA-256 in the description")
    bundle = load_bundle_bytes(content, name.removesuffix(".safetensors"))
    bundle.path = path
    return bundle


def _read_member(path: Path, name: str | None) -> bytes:
    """One file of a package (``None``: its description), from a zip or a folder."""
    try:
        if path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                member = name or next((n for n in DESCRIPTION_NAMES if n in names), None)
                if member is None or member not in names:
                    raise BundleError(f"{path} has no {member or DESCRIPTION_NAMES[0]}")
                if archive.getinfo(member).file_size > MAX_BUNDLE_BYTES:
                    raise BundleError(f"{path}: {member} is too large to be a model bundle")
                return archive.read(member)
        folder = path.parent if path.name in DESCRIPTION_NAMES else path
        member = name or next((n for n in DESCRIPTION_NAMES if (folder / n).is_file()), None)
        if member is None or not (folder / member).is_file():
            raise BundleError(f"{folder} has no {member or DESCRIPTION_NAMES[0]}")
        if (folder / member).stat().st_size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{folder / member} is too large to be a model bundle")
        return (folder / member).read_bytes()
    except (OSError, zipfile.BadZipFile) as error:
        raise BundleError(f"{path}: the package cannot be read ({error})") from error

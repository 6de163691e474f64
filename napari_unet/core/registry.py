"""Where models live: the bundled ones and the user's model folder; names and versions.

Fine-tuned versions are named ``<base>-ft<n>`` and saved in the user's model folder, which
is the platform's data folder (``napari-unet/models``) or ``$NAPARI_UNET_MODELS_DIR``.
Bundled names are reserved: a user's file with a bundled model's name is not used by name
(it is reported as a problem, and still usable by its path), so it can never silently
replace the model a colleague's instructions refer to.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from napari_unet.core.atomic import is_partial, remove_stale_partials
from napari_unet.core.bioimageio_import import is_package, load_package_bundle, not_a_package
from napari_unet.core.bundle import Bundle, load_bundle_file, read_bundle_config
from napari_unet.core.errors import BundleError

SUFFIX = ".safetensors"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models"
_VERSION = re.compile(r"^(?P<base>.+?)-ft(?P<n>\d+)$")


@dataclass(frozen=True)
class ModelEntry:
    """One model file the registry knows about."""

    name: str
    path: Path
    bundled: bool
    base: str
    version: int
    mode: str
    class_names: tuple[str, ...]


def user_models_dir() -> Path:
    """The user's model folder (created on demand by writers, not here)."""
    override = os.environ.get("NAPARI_UNET_MODELS_DIR")
    if override:
        return Path(override)
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-unet", appauthor=False)) / "models"


def split_version(name: str) -> tuple[str, int]:
    """Split ``"nuclei-ft3"`` into ``("nuclei", 3)``; a base model is version 0."""
    match = _VERSION.match(name)
    if match:
        return match["base"], int(match["n"])
    return name, 0


def list_models(models_dir: Path | None = None) -> list[ModelEntry]:
    """All usable models: bundled first, then the user's, sorted by base and version.

    Files that cannot be used are left out; :func:`scan_models` also says which and why.
    """
    return scan_models(models_dir)[0]


def scan_models(
    models_dir: Path | None = None,
) -> tuple[list[ModelEntry], list[tuple[Path, str]]]:
    """The usable models (as :func:`list_models`) and the model files that cannot be used by
    name, with the reason (damaged, too large, or a bundled model's name)."""
    entries: list[ModelEntry] = []
    problems: list[tuple[Path, str]] = []
    reserved = {p.name for p in BUNDLED_DIR.glob(f"*{SUFFIX}")}
    folders = [(BUNDLED_DIR, True), (models_dir or user_models_dir(), False)]
    remove_stale_partials(folders[1][0])  # left by saves that were killed
    for folder, bundled in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"*{SUFFIX}")):
            if is_partial(path):
                continue
            if not bundled and path.name in reserved:
                problems.append(
                    (
                        path,
                        "has the name of a bundled model, which is used instead; rename it "
                        "to use it by name",
                    )
                )
                continue
            try:
                config = read_bundle_config(path)
            except Exception as error:  # any damage: report it, keep listing the others
                problems.append(
                    (path, str(error) if isinstance(error, BundleError) else repr(error))
                )
                continue
            name = path.name.removesuffix(SUFFIX)
            base, version = split_version(name)
            entries.append(
                ModelEntry(
                    name=name,
                    path=path,
                    bundled=bundled,
                    base=base,
                    version=version,
                    mode=config["mode"],
                    class_names=tuple(config["class_names"]),
                )
            )
    return sorted(entries, key=lambda e: (not e.bundled, e.base, e.version)), problems


def resolve_model(name_or_path: str | os.PathLike[str], models_dir: Path | None = None) -> Path:
    """Path of a model given a file path or a name; bundled names are reserved.

    A path may be a ``.safetensors`` bundle or a bioimage.io package (a ``.zip``, its folder
    or its ``rdf.yaml``). A folder given without a slash (``pz``) is a path when no model
    has that name.

    Raises
    ------
    BundleError
        When no model has the name, the file does not exist, or a ``.zip`` or folder is not
        a bioimage.io package (each saying why).
    """
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if not _is_path(text):
        for folder in (BUNDLED_DIR, models_dir or user_models_dir()):
            path = folder / f"{text}{SUFFIX}"
            if path.is_file():
                return path
        if not candidate.is_dir():  # a folder named without a slash is still a path
            known = sorted({entry.name for entry in list_models(models_dir)})
            raise BundleError(
                f"no model named {text!r}; known models: {', '.join(known) if known else 'none'} "
                "(or give a path to a .safetensors file or a bioimage.io .zip)"
            )
    why = not_a_package(candidate)
    if why is not None:
        raise BundleError(f"{candidate} {why}; give a bioimage.io package or a .safetensors file")
    if not candidate.exists():
        raise BundleError(f"model file not found: {candidate}")
    return candidate


def _is_path(text: str) -> bool:
    """Whether a model is given by its path (a known suffix or a folder in it), not by name."""
    return Path(text).suffix in (SUFFIX, ".zip") or os.sep in text or "/" in text


def model_name(name_or_path: str | os.PathLike[str]) -> str:
    """The name a model goes by: its own name, a bundle file's name without ``.safetensors``,
    or the name of the bundle a napari-unet bioimage.io package carries (``nuclei-ft1``)."""
    text = str(name_or_path)
    if not _is_path(text) and not Path(text).is_dir():
        return text
    path = resolve_model(text)
    return load_package_bundle(path).name if is_package(path) else path.name.removesuffix(SUFFIX)


def load_bundle(name_or_path: str | os.PathLike[str], *, models_dir: Path | None = None) -> Bundle:
    """Load a bundle by file path or by model name (bundled or in the user's folder).

    Parameters
    ----------
    name_or_path : str or path-like
        A ``.safetensors`` path, a bioimage.io package exported by napari-unet (its attached
        bundle is loaded), or a name listed by ``napari-unet models``.
    models_dir : Path, optional
        The user's model folder (defaults to the platform's data folder).

    Raises
    ------
    BundleError
        As :func:`~napari_unet.core.bundle.load_bundle_file`, or when no model has the name.
    """
    path = resolve_model(name_or_path, models_dir=models_dir)
    return load_package_bundle(path) if is_package(path) else load_bundle_file(path)


def read_model_config(path: str | os.PathLike[str]) -> dict:
    """The config of a ``.safetensors`` bundle (no weights loaded) or of the bundle a
    napari-unet bioimage.io package carries (loaded, to check it against its hash).

    Raises
    ------
    BundleError
        As :func:`load_bundle`; a package from other software has no config.
    """
    return load_package_bundle(path).config if is_package(path) else read_bundle_config(path)


def next_version_path(base_name: str, models_dir: Path | None = None) -> Path:
    """Path for the next fine-tuned version of ``base_name`` in the user's folder.

    ``nuclei`` and ``nuclei-ft2`` both share the base ``nuclei``; the next free number is
    one above the highest existing version. A model given by its path (a bundle file or a
    napari-unet bioimage.io package) counts by its name (:func:`model_name`).
    """
    folder = models_dir or user_models_dir()
    base, _ = split_version(model_name(base_name))
    taken = [0]
    if folder.is_dir():
        for path in folder.glob(f"{base}-ft*{SUFFIX}"):
            found_base, version = split_version(path.name.removesuffix(SUFFIX))
            if found_base == base:
                taken.append(version)
    return folder / f"{base}-ft{max(taken) + 1}{SUFFIX}"

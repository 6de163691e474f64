"""Export a model bundle as a bioimage.io model package (spec 0.5, one zip file).

The package holds the network twice, as ``pytorch_state_dict`` weights with the architecture
source cut from :mod:`napari_unet.core.model` (``unet.py``, importing only torch) and as
TorchScript (``torch.jit.script``: no Python needed to run it; tracing is deprecated and the
ONNX exporter's default path imports ``torch._dynamo``), and it attaches the napari-unet
bundle itself, which napari-unet re-imports exactly and without pickle. Test tensors are a
256 x 256 patch with objects and the output of a plain float32 forward pass on it.

Writing a package needs neither ``bioimageio.spec`` nor ``bioimageio.core``: the description
is written as YAML here, and the tests check it with those libraries.
"""

from __future__ import annotations

import copy
import hashlib
import io
import re
import warnings
import zipfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet.core.architecture_source import ENTRY_POINT, standalone_source
from napari_unet.core.atomic import atomic_path
from napari_unet.core.bioimageio_docs import UNET_CITATION, cover, lineage, origin_of, readme
from napari_unet.core.bundle import Bundle
from napari_unet.core.errors import InputError
from napari_unet.core.generators import run_to_end
from napari_unet.core.io import Stack, read_image
from napari_unet.core.options import PredictOptions
from napari_unet.core.postprocess import (
    default_min_size,
    instance_labels,
    seed_smoothing_sigma,
    semantic_labels,
)
from napari_unet.core.preprocess import iter_planes, normalize, to_model_channels
from napari_unet.core.seed_level import (
    DEFAULT_LEVEL,
    SURE_INTERIOR,
    SURE_LEVEL,
    SURE_SHARE,
    choose_level,
)

FORMAT_VERSION = "0.5.12"
RDF_NAME = "rdf.yaml"
PATCH = 256  # edge of the test patch
SEARCH = 1024  # the patch is chosen inside a central region at most this large
# context discarded at each inner border of a block, in pixels: blocks of the nuclei model
# (2026-12-07) differed from the whole plane by up to 0.11 in probability with 32 (the
# panel's tile overlap) and by 0.018 with 64 (tests/test_bioimageio.py)
HALO = 64
SCALE_RANGE_EPS = 1e-6  # the spec's default; napari-unet's own normalisation adds nothing
INPUT_ID = "raw"
OUTPUT_ID = "probabilities"
_LICENSE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")
_SAMPLES = {
    "nuclei": ("nuclei_2d.tif", "instances"),
    "em-membranes": ("em_sections.tif", "semantic"),
}


@dataclass(frozen=True)
class ExportStep:
    """Progress of an export: ``done`` of ``total`` stages, now doing ``stage``."""

    done: int
    total: int
    stage: str


@dataclass(frozen=True)
class PatchData:
    """The test patch and where it comes from.

    Attributes
    ----------
    raw : ndarray of shape (C, Y, X), float32
        Pixels mapped to the model's channels, not yet normalised.
    source : str
        Where the patch was cut, for the README.
    """

    raw: np.ndarray
    source: str


def export_package(bundle: Bundle, output: str | Path, **options: Any) -> Path:
    """Write ``bundle`` as a bioimage.io package; :func:`iter_export` without progress."""
    return run_to_end(iter_export(bundle, output, **options))


def iter_export(
    bundle: Bundle,
    output: str | Path,
    *,
    authors: Sequence[str],
    license_id: str,
    test_image: Stack | None = None,
    share_test_image: bool = False,
    channel: int | None = None,
    pixel_size_um: float | None = None,
    parent_id: str | None = None,
    overwrite: bool = False,
) -> Generator[ExportStep, None, Path]:
    """Write ``bundle`` as a bioimage.io model package (a zip file), yielding each stage.

    Parameters
    ----------
    bundle : Bundle
        The model to export (same padding; any number of channels and classes).
    output : path-like
        The ``.zip`` file to write (atomically).
    authors : sequence of str
        Names of the people who made the model (at least one).
    license_id : str
        SPDX identifier of the package's licence, e.g. ``CC-BY-4.0``. A model descending
        from non-commercial data needs a non-commercial licence (``...-NC-...``).
    test_image : Stack, optional
        The user's own image to cut the test patch from; used only with
        ``share_test_image`` (the patch is shipped in the package). Without it the patch
        comes from the bundle's replay set, else from the bundled sample images.
    share_test_image : bool
        The user agrees that a patch of ``test_image`` goes into the package.
    channel : int, optional
        Channel of ``test_image`` for a one-channel model.
    pixel_size_um : float, optional
        Pixel size the model expects, in micrometres (default: known for the bundled
        models' lineage, else left unstated).
    parent_id : str, optional
        bioimage.io id of the parent model, for a fine-tuned version; default
        ``napari-unet/<parent name>``.
    overwrite : bool
        Replace an existing ``output``.

    Yields
    ------
    ExportStep

    Returns
    -------
    Path
        The written package.

    Raises
    ------
    InputError
        On a missing author or licence, a licence that the training data forbids, a user
        image without consent, an existing output, or a model the spec cannot describe.
    """
    output = Path(output)
    config = bundle.config
    _check_request(config, output, authors, license_id, test_image, share_test_image, overwrite)
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise InputError(f"the pixel size must be positive, got {pixel_size_um}")
    total = 4
    yield ExportStep(0, total, "choosing a test patch")
    network = copy.deepcopy(bundle.network).float().cpu().eval()
    data = _test_data(bundle, network, test_image, channel)
    yield ExportStep(1, total, "computing the test output (float32)")
    normalised = normalize(data.raw, config["normalization"])
    with torch.no_grad():
        logits = network(torch.from_numpy(normalised)[None])
    probabilities = torch.softmax(logits, dim=1).numpy()
    yield ExportStep(2, total, "compiling TorchScript weights")
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export
        warnings.simplefilter("ignore", FutureWarning)
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(network), buffer)
    yield ExportStep(3, total, "writing the package")
    files = _package_files(bundle, network, data, normalised, probabilities, buffer.getvalue())
    rdf = _description(
        bundle,
        files,
        authors=list(authors),
        license_id=license_id,
        pixel_size_um=pixel_size_um,
        parent_id=parent_id,
        test_source=data.source,
    )
    files[RDF_NAME] = rdf.encode()
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output, overwrite=overwrite) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, content in files.items():
                archive.writestr(name, content)
    yield ExportStep(4, total, "done")
    return output


def _check_request(
    config: dict[str, Any],
    output: Path,
    authors: Sequence[str],
    license_id: str,
    test_image: Stack | None,
    share_test_image: bool,
    overwrite: bool,
) -> None:
    """Raise InputError for a request that cannot make a valid, permitted package."""
    if output.suffix.lower() != ".zip":
        raise InputError(f"{output}: a bioimage.io package is a .zip file")
    if output.exists() and not overwrite:
        raise InputError(f"{output} already exists; choose another name or allow overwriting")
    if not [a for a in authors if a.strip()]:
        raise InputError("name at least one author of the model (--author)")
    if any("/" in a or "\\" in a for a in authors):
        raise InputError("author names cannot contain slashes")
    if not _LICENSE.match(license_id or ""):
        raise InputError(
            f"licence {license_id!r} is not an SPDX identifier such as CC-BY-4.0 or MIT"
        )
    found = origin_of(config)
    if found is not None and found[1].non_commercial and "-NC" not in license_id.upper():
        raise InputError(
            f"this model descends from {found[0]!r}, trained on data {found[1].terms}: "
            f"choose a non-commercial licence such as CC-BY-NC-4.0, not {license_id}"
        )
    if test_image is not None and not share_test_image:
        raise InputError(
            "a 256 x 256 patch of your image would be shipped in the package: agree to share "
            "it (--share-test-image), or leave the image out to use bundled sample data"
        )
    if config["architecture"].get("padding") != "same":
        raise InputError("only same-padding networks can be exported to bioimage.io")


def _test_data(
    bundle: Bundle, network: torch.nn.Module, test_image: Stack | None, channel: int | None
) -> PatchData:
    """The test patch: from the user's image, else the replay set, else a bundled sample."""
    config = bundle.config
    if test_image is not None:
        _, plane, plane_axes = next(iter_planes(test_image.data, test_image.axes))
        raw = to_model_channels(plane, plane_axes, config["input"], channel)
        where = f"first plane of the user's image {test_image.name}"
        return _best_patch(raw, network, config, where)
    if bundle.replay is not None:
        counts = [_object_count(labels, config["mode"]) for labels in bundle.replay.labels]
        index = int(np.argmax(counts))
        image = bundle.replay.images[index]
        raw = to_model_channels(image, bundle.replay.plane_axes, config["input"])
        if min(raw.shape[1:]) >= PATCH:
            where = f"replay patch {index} of the bundle ({bundle.replay.source})"
            return _best_patch(raw, network, config, where)
    found = origin_of(config)
    file_name, _ = _SAMPLES.get(found[0] if found else "", ("", ""))
    if not file_name:
        file_name = next(name for name, mode in _SAMPLES.values() if mode == config["mode"])
    if int(config["input"].get("channels", 1)) != 1:
        raise InputError(
            "the bundled sample images have one channel and this model takes "
            f"{config['input']['channels']}: give a test image of your own"
        )
    stack = read_image(Path(str(resources.files("napari_unet.sample_data") / file_name)))
    _, plane, plane_axes = next(iter_planes(stack.data, stack.axes))
    raw = to_model_channels(plane, plane_axes, config["input"])
    where = f"first plane of napari-unet's sample image {file_name} (see its sample_data/README)"
    return _best_patch(raw, network, config, where)


def _object_count(labels: np.ndarray, mode: str) -> int:
    """Objects (instances) or labelled foreground pixels (semantic) in a label patch."""
    if mode == "instances":
        return int(np.unique(labels[labels > 0]).size)
    return int(np.count_nonzero(labels))


def _best_patch(
    raw: np.ndarray, network: torch.nn.Module, config: dict[str, Any], where: str
) -> PatchData:
    """The PATCH x PATCH window of ``raw`` (C, Y, X) where the network sees most foreground.

    The network runs once on a central region of at most SEARCH x SEARCH pixels; the window
    with the largest summed non-background probability wins (ties: the first).
    """
    height, width = raw.shape[1:]
    if min(height, width) < PATCH:
        raise InputError(
            f"the test image ({where}) is {height} x {width}; it must be at least {PATCH} x {PATCH}"
        )
    multiple = 2 ** int(config["architecture"]["depth"])
    region_y = min(SEARCH, height) // multiple * multiple
    region_x = min(SEARCH, width) // multiple * multiple
    top, left = (height - region_y) // 2, (width - region_x) // 2
    region = raw[:, top : top + region_y, left : left + region_x]
    with torch.no_grad():
        logits = network(torch.from_numpy(normalize(region, config["normalization"]))[None])
    foreground = 1.0 - torch.softmax(logits, dim=1)[0, 0].numpy().astype(np.float64)
    summed = np.pad(foreground.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    windows = (
        summed[PATCH:, PATCH:]
        - summed[:-PATCH, PATCH:]
        - summed[PATCH:, :-PATCH]
        + summed[:-PATCH, :-PATCH]
    )
    y, x = np.unravel_index(int(np.argmax(windows)), windows.shape)
    y0, x0 = top + int(y), left + int(x)
    patch = np.ascontiguousarray(raw[:, y0 : y0 + PATCH, x0 : x0 + PATCH], dtype=np.float32)
    return PatchData(patch, f"{where}, rows {y0}-{y0 + PATCH - 1}, columns {x0}-{x0 + PATCH - 1}")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _tif(array: np.ndarray) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack", compression="zlib")
    return buffer.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _bundle_bytes(bundle: Bundle) -> bytes:
    """The bundle's file as saved (exact), or a fresh save of an unsaved bundle."""
    if bundle.path is not None and Path(bundle.path).suffix == ".safetensors":
        return Path(bundle.path).read_bytes()
    import tempfile

    from napari_unet.core.bundle import clone_bundle, save_bundle

    with tempfile.TemporaryDirectory() as folder:
        path = save_bundle(clone_bundle(bundle), Path(folder) / f"{_file_stem(bundle)}.safetensors")
        return path.read_bytes()


def _file_stem(bundle: Bundle) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", bundle.name) or "model"


def _package_files(
    bundle: Bundle,
    network: torch.nn.Module,
    data: PatchData,
    normalised: np.ndarray,
    probabilities: np.ndarray,
    torchscript: bytes,
) -> dict[str, bytes]:
    """Every file of the package but the description and README, by name."""
    config = bundle.config
    state = io.BytesIO()
    torch.save(network.state_dict(), state)
    if config["mode"] == "instances":
        level = choose_level(probabilities[0], PredictOptions().threshold)
        labels = instance_labels(
            probabilities[0],
            threshold=level.foreground,
            seed_level=level.level,
            min_size=default_min_size(config.get("object_diameter")),
            seed_sigma=seed_smoothing_sigma(config.get("object_diameter")),
        )
    else:
        labels = semantic_labels(probabilities[0])
    return {
        "test_input.npy": _npy(data.raw[None]),
        "test_output.npy": _npy(probabilities.astype(np.float32)),
        "sample_input.tif": _tif(data.raw[None]),
        "sample_output.tif": _tif(probabilities.astype(np.float32)),
        "weights.pt": state.getvalue(),
        "weights_torchscript.pt": torchscript,
        "unet.py": standalone_source().encode(),
        "cover.png": _png(cover(normalised[0], labels)),
        f"{_file_stem(bundle)}.safetensors": _bundle_bytes(bundle),
    }


def _sha(files: dict[str, bytes], name: str) -> dict[str, str]:
    return {"source": name, "sha256": hashlib.sha256(files[name]).hexdigest()}


def _name(text: str) -> str:
    """A bioimage.io model name: letters, digits, ``_+- ()``, 5 to 64 characters."""
    return re.sub(r"[^A-Za-z0-9_+\- ()]", "-", f"napari-unet {text}")[:64]


def _torch_version() -> str:
    return torch.__version__.split("+")[0]


def _description(
    bundle: Bundle,
    files: dict[str, bytes],
    *,
    authors: list[str],
    license_id: str,
    pixel_size_um: float | None,
    parent_id: str | None,
    test_source: str,
) -> str:
    """The package's ``rdf.yaml`` (bioimage.io model description 0.5); adds README.md."""
    import yaml

    config = bundle.config
    architecture = config["architecture"]
    found = origin_of(config)
    chain = lineage(config)
    if pixel_size_um is None and found is not None:
        pixel_size_um = found[1].pixel_size_um
    step = 2 ** int(architecture["depth"])
    halo = HALO
    min_size = (2 * halo // step + 1) * step  # the smallest size left with pixels after the halo
    diameter = config.get("object_diameter")
    min_object_size = default_min_size(diameter)
    instances = config["mode"] == "instances"
    text = readme(
        config,
        authors=authors,
        license_id=license_id,
        halo=halo,
        min_size=min_size,
        step=step,
        test_source=test_source,
        min_object_size=min_object_size,
    )
    files["README.md"] = text.encode()
    scale = {"scale": pixel_size_um, "unit": "micrometer"} if pixel_size_um else {}
    size_note = f"objects ~{diameter:.0f} px across" if diameter else "no reference object size"
    pixel_note = f"{pixel_size_um:g} um pixels" if pixel_size_um else "pixel size not recorded"

    def space(axis: str, size: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "space",
            "id": axis,
            "size": size,
            "description": f"{size_note}; {pixel_note}",
            **scale,
            **extra,
        }

    channels = int(architecture["in_channels"])
    description = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": _name(bundle.name),
        "description": (
            f"2D U-Net (depth {architecture['depth']}, base width "
            f"{architecture['base_channels']}) for "
            + (
                "instance segmentation: background/interior/boundary probabilities, objects by "
                "seeded watershed in napari-unet"
                if instances
                else f"semantic segmentation into {', '.join(config['class_names'])}"
            )
            + (f"; fine-tuned from {chain[-1]}" if chain else "")
            + (f"; trained on {found[1].data}" if found and not chain else "")
            + ". Non-commercial use only." * bool(found and found[1].non_commercial)
        ),
        "authors": [{"name": name.strip()} for name in authors if name.strip()],
        "license": license_id,
        "documentation": {"source": "README.md"},
        "covers": [{"source": "cover.png"}],
        "attachments": [_sha(files, f"{_file_stem(bundle)}.safetensors")],
        "cite": [UNET_CITATION, *(found[1].citations if found else ())],
        "tags": sorted(
            {
                "napari-unet",
                "unet",
                "2d",
                "pytorch",
                "instance-segmentation" if instances else "semantic-segmentation",
                *(found[1].modality_tags if found else ()),
            }
        ),
        "timestamp": config.get("created") or None,
        "inputs": [
            {
                "id": INPUT_ID,
                "description": f"{channels} channel(s), raw intensities (float32)",
                "axes": [
                    {"type": "batch"},
                    {
                        "type": "channel",
                        "channel_names": [f"channel{c}" for c in range(channels)],
                    },
                    *(space(a, {"min": min_size, "step": step}, {}) for a in ("y", "x")),
                ],
                "test_tensor": _sha(files, "test_input.npy"),
                "sample_tensor": _sha(files, "sample_input.tif"),
                "data": {"type": "float32"},
                "pad": {"mode": "symmetric"},  # as napari-unet's tiling mirrors image borders
                "preprocessing": [
                    {
                        "id": "scale_range",
                        "kwargs": {
                            "axes": ["y", "x"],
                            "min_percentile": float(config["normalization"].get("low", 1.0)),
                            "max_percentile": float(config["normalization"].get("high", 99.8)),
                            "eps": SCALE_RANGE_EPS,
                        },
                    }
                ],
            }
        ],
        "outputs": [
            {
                "id": OUTPUT_ID,
                "description": "class probabilities (softmax of the network's logits)",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": list(config["class_names"])},
                    *(
                        space(a, {"tensor_id": INPUT_ID, "axis_id": a}, {"halo": halo})
                        for a in ("y", "x")
                    ),
                ],
                "test_tensor": _sha(files, "test_output.npy"),
                "sample_tensor": _sha(files, "sample_output.tif"),
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}}],
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                **_sha(files, "weights.pt"),
                "architecture": {
                    **_sha(files, "unet.py"),
                    "callable": ENTRY_POINT,
                    "kwargs": dict(architecture),
                },
                "pytorch_version": _torch_version(),
            },
            "torchscript": {
                **_sha(files, "weights_torchscript.pt"),
                "pytorch_version": _torch_version(),
                "parent": "pytorch_state_dict",
                "comment": "torch.jit.script of the same network and weights",
            },
        },
        "config": {
            "bioimageio": {
                "architecture_type": "U-Net",
                "model_parameter_count": sum(p.numel() for p in bundle.network.parameters()),
            },
            "napari_unet": {
                "bundle": f"{_file_stem(bundle)}.safetensors",
                "package_version": config.get("package_version"),
                "mode": config["mode"],
                "class_names": list(config["class_names"]),
                "object_diameter": diameter,
                "threshold": PredictOptions().threshold,
                "threshold_auto": {  # the seeds' level per plane (core/seed_level.py)
                    "sure_interior": SURE_INTERIOR,
                    "sure_share": SURE_SHARE,
                    "sure_level": SURE_LEVEL,
                    "default_level": DEFAULT_LEVEL,
                },
                "min_object_size": min_object_size,
                "normalization": dict(config["normalization"]),
                "input": dict(config["input"]),
            },
        },
    }
    if chain:
        description["parent"] = {"id": parent_id or _parent_id(chain[-1])}
    if description["timestamp"] is None:
        del description["timestamp"]
    return yaml.safe_dump(description, sort_keys=False, allow_unicode=True)


def _parent_id(name: str) -> str:
    """``napari-unet/<name>`` in the characters a bioimage.io id allows."""
    return "napari-unet/" + (re.sub(r"[^a-z0-9_.-]", "-", name.lower()).strip("/") or "model")

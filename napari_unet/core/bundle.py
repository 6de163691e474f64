"""Model bundles: one ``.safetensors`` file holding the weights and the config as JSON.

The config lives in the file's ``__metadata__`` under the key ``napari_unet``. Loading never
unpickles anything; saving is atomic (temporary file in the same folder, fsync, replace).

A bundle may also carry a small replay set: patches of the data its network was trained on
(tensors ``replay.images`` and ``replay.labels``, described by the config's ``replay`` entry),
which fine-tuning rehearses so that a few corrections do not make the network forget what it
knew; its last ``checks`` patches are never rehearsed and measure what a fine-tuned network
kept (:mod:`napari_unet.core.retention`). Only data whose licence allows redistribution may go
in.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from napari_unet.core.atomic import atomic_path
from napari_unet.core.errors import BundleError, InputError
from napari_unet.core.model import UNet, build_unet, expected_state
from napari_unet.core.samples import TrainingSample
from napari_unet.core.version import __version__

FORMAT_VERSION = 2  # 2: optional replay tensors
METADATA_KEY = "napari_unet"
MODES = ("instances", "semantic")
INSTANCE_CLASSES = ["background", "interior", "boundary"]
DEFAULT_NORMALIZATION = {"low": 1.0, "high": 99.8, "scope": "slice"}
DEFAULT_INPUT = {"channels": 1, "rgb": "auto"}  # see preprocess.choose_colour_input
REPLAY_PREFIX = "replay."
FLOAT16_MAX = float(torch.finfo(torch.float16).max)
# dtypes every supported torch (>= 2.2) stores; uint16 is not among them before 2.3
_REPLAY_DTYPES = (np.uint8, np.int16, np.int32, np.float16, np.float32)


@dataclass(frozen=True)
class ReplaySet:
    """Labelled patches of a model's own training data, shipped inside its bundle.

    Attributes
    ----------
    images : ndarray of shape (N, Y, X) or (N, Y, X, C)
        Raw pixels, normalised like any input when used.
    labels : ndarray of shape (N, Y, X)
        Labels in the model's mode (instance ids or class indices), all checked by a person.
    source : str
        Where the patches come from and under which licence.
    checks : int
        How many of the last patches are kept out of rehearsal, to check what a fine-tuned
        network still gets right of its training data.
    """

    images: np.ndarray
    labels: np.ndarray
    source: str
    checks: int = 0

    def __post_init__(self) -> None:
        n, *plane = self.labels.shape
        if self.labels.ndim != 3 or self.images.shape[:3] != (n, *plane) or self.images.ndim > 4:
            raise BundleError(
                f"replay images {self.images.shape} and labels {self.labels.shape} must be "
                "(N, Y, X[, C]) and (N, Y, X)"
            )
        for array in (self.images, self.labels):
            if array.dtype not in _REPLAY_DTYPES:
                raise BundleError(f"replay data of dtype {array.dtype} cannot be stored")
        if not 0 <= self.checks <= n:
            raise BundleError(f"{self.checks} check patches, but the replay set holds {n}")

    @property
    def plane_axes(self) -> str:
        return "YXC" if self.images.ndim == 4 else "YX"

    @property
    def rehearsed(self) -> int:
        """How many patches fine-tuning rehearses (the first ones; the rest are checks)."""
        return len(self.labels) - self.checks

    def samples(self) -> list[TrainingSample]:
        """The patches to rehearse, as fully known training samples."""
        return self._samples(0, self.rehearsed)

    def check_samples(self) -> list[TrainingSample]:
        """The check patches (never rehearsed), as fully known samples."""
        return self._samples(self.rehearsed, len(self.labels))

    def _samples(self, start: int, stop: int) -> list[TrainingSample]:
        return [
            TrainingSample(self.images[i], self.labels[i], None, self.plane_axes, f"replay {i}")
            for i in range(start, stop)
        ]


@dataclass
class Bundle:
    """A U-Net with everything needed to use it on new images.

    Attributes
    ----------
    network : UNet
        The torch module (in eval mode after loading).
    config : dict
        JSON-serialisable description: ``architecture``, ``input``, ``normalization``,
        ``mode``, ``class_names``, ``object_diameter``, ``training``, ``provenance``,
        ``parent``, ``created``, ``name``, ``package_version``, ``format_version``.
    path : Path or None
        The file it was loaded from or saved to.
    replay : ReplaySet or None
        Patches of the training data, rehearsed during fine-tuning; kept by fine-tuned copies.
    """

    network: UNet
    config: dict[str, Any]
    path: Path | None = field(default=None)
    replay: ReplaySet | None = field(default=None)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or (self.path.stem if self.path else "unnamed"))

    @property
    def mode(self) -> str:
        return str(self.config["mode"])

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])


def new_config(
    *,
    architecture: dict[str, Any],
    mode: str = "instances",
    class_names: list[str] | None = None,
    input_spec: dict[str, Any] | None = None,
    normalization: dict[str, Any] | None = None,
    object_diameter: float | None = None,
    name: str | None = None,
    parent: str | None = None,
) -> dict[str, Any]:
    """Make a complete bundle config for a new network.

    Parameters
    ----------
    architecture : dict
        Options of :class:`~napari_unet.core.model.UNet`.
    mode : {"instances", "semantic"}
        Instances: 3 classes (background, interior, boundary) turned into objects.
        Semantic: one class index per pixel.
    class_names : list of str, optional
        Semantic class names, background first; ignored for instances.
    """
    if mode not in MODES:
        raise InputError(f"mode {mode!r} is not valid; choose one of {', '.join(MODES)}")
    if mode == "instances":
        class_names = list(INSTANCE_CLASSES)
    elif not class_names or len(class_names) < 2:
        raise InputError(
            "a semantic model needs at least two class names, background first "
            "(e.g. --class-names background,membrane)"
        )
    architecture = {**architecture, "n_classes": len(class_names)}
    input_spec = {**DEFAULT_INPUT, **(input_spec or {})}
    architecture["in_channels"] = int(input_spec["channels"])

    return {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "name": name,
        "architecture": _complete_architecture(architecture),
        "input": input_spec,
        "normalization": {**DEFAULT_NORMALIZATION, **(normalization or {})},
        "mode": mode,
        "class_names": list(class_names),
        "object_diameter": object_diameter,
        "training": {"history": []},
        "provenance": {},
        "parent": parent,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _complete_architecture(architecture: dict[str, Any]) -> dict[str, Any]:
    """Every option of the architecture, defaults filled in, checked without allocating."""
    expected_state(architecture)  # bounds and parameter budget
    with torch.device("meta"):
        return build_unet(architecture).config


def bundle_from_config(config: dict[str, Any]) -> Bundle:
    """Build a freshly initialised network for ``config`` (validated)."""
    _check_config(config, source="config")
    return Bundle(network=build_unet(config["architecture"]).eval(), config=config)


def save_bundle(
    bundle: Bundle,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    half: bool = False,
) -> Path:
    """Write ``bundle`` to one ``.safetensors`` file atomically.

    Parameters
    ----------
    bundle : Bundle
        Network and config to save.
    path : path-like
        Destination; should end in ``.safetensors``.
    overwrite : bool
        Replace an existing file. Without it an existing path is an error.
    half : bool
        Store floating-point weights as float16 (half the size); a tensor with values
        beyond float16's range stays float32.

    Returns
    -------
    Path
        The written path.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise BundleError(f"{path} already exists; choose another name or allow overwriting")
    config = dict(bundle.config)
    config["format_version"] = FORMAT_VERSION
    config["name"] = path.name.removesuffix(".safetensors")  # the file name is the identity
    config.pop("replay", None)
    tensors = {}
    if bundle.replay is not None:
        config["replay"] = {
            "patches": len(bundle.replay.labels),
            "checks": bundle.replay.checks,
            "source": bundle.replay.source,
        }
        tensors[REPLAY_PREFIX + "images"] = torch.from_numpy(bundle.replay.images.copy())
        tensors[REPLAY_PREFIX + "labels"] = torch.from_numpy(bundle.replay.labels.copy())
    _check_config(config, source=str(path))
    for key, value in bundle.network.state_dict().items():
        value = value.detach().cpu()
        if half and value.is_floating_point() and value.abs().max() <= FLOAT16_MAX:
            value = value.half()  # a larger value (a batch norm's variance) stays float32
        tensors[key] = value.contiguous()
    metadata = {METADATA_KEY: json.dumps(config)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    bundle.config = config
    bundle.path = path
    return path


def read_bundle_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read only the config of a bundle file (cheap: no weights are loaded)."""
    path = Path(path)
    metadata = _read_metadata(path)
    return _parse_config(metadata, path)


def load_bundle_file(path: str | os.PathLike[str]) -> Bundle:
    """Load the bundle in one ``.safetensors`` file (by name: :func:`~napari_unet.core.registry.load_bundle`).

    Raises
    ------
    BundleError
        If the file is missing, not a bundle, from a newer format, asks for a network too
        large, or its weights do not match its architecture or are not finite.
    """
    path = Path(path)
    config = read_bundle_config(path)  # checks the architecture's size without building it
    expected = expected_state(config["architecture"])
    try:
        with safe_open(str(path), framework="pt") as handle:
            _check_header(handle, expected, path)
            network = build_unet(config["architecture"])
            targets = network.state_dict()
            state = {}
            for key in expected:  # one tensor at a time: checked before the next is read
                tensor = handle.get_tensor(key)
                if not torch.isfinite(tensor).all():
                    raise BundleError(f"{path}: weight {key} holds NaN or infinite values")
                state[key] = tensor.to(targets[key].dtype)
            replay_keys = [key for key in handle.keys() if key.startswith(REPLAY_PREFIX)]
            replay_tensors = {key: handle.get_tensor(key) for key in replay_keys}
    except BundleError:
        raise
    except Exception as error:  # safetensors raises its own error type on corrupt data
        raise BundleError(f"{path}: the weights are damaged or truncated ({error})") from error
    replay = _replay_from(replay_tensors, config, path)
    network.load_state_dict(state)
    return Bundle(network=network.eval(), config=config, path=path, replay=replay)


def load_bundle_bytes(data: bytes, name: str = "model") -> Bundle:
    """Load a bundle from the bytes of its file, with every check of :func:`load_bundle_file`
    (a model sent to a worker that cannot see the file; ``path`` is None)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.safetensors"
        path.write_bytes(data)
        bundle = load_bundle_file(path)  # every tensor is read into memory here
    bundle.path = None
    return bundle


_WEIGHT_DTYPES = ("F16", "BF16", "F32", "F64")


def _check_header(handle: Any, expected: dict[str, tuple[int, ...]], path: Path) -> None:
    """Compare the file's tensor names, shapes and dtypes with the architecture, reading no
    weights."""
    names = [key for key in handle.keys() if not key.startswith(REPLAY_PREFIX)]
    missing = sorted(set(expected) - set(names))
    unexpected = sorted(set(names) - set(expected))
    if missing or unexpected:
        raise BundleError(
            f"{path}: the weights do not match the architecture in its config "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for key in names:
        header = handle.get_slice(key)
        shape, dtype = tuple(header.get_shape()), header.get_dtype()
        if shape != expected[key]:
            raise BundleError(
                f"{path}: weight {key} has shape {shape} but the config's architecture needs "
                f"{expected[key]}"
            )
        is_counter = key.endswith("num_batches_tracked")
        if not is_counter and dtype not in _WEIGHT_DTYPES:
            raise BundleError(
                f"{path}: weight {key} is stored as {dtype}; weights must be floating point "
                f"({', '.join(_WEIGHT_DTYPES)})"
            )


def _replay_from(
    tensors: dict[str, torch.Tensor], config: dict[str, Any], path: Path
) -> ReplaySet | None:
    """The replay set held by the file's ``replay.*`` tensors, checked against the config."""
    described = config.get("replay")
    if not tensors and described is None:
        return None
    if set(tensors) != {REPLAY_PREFIX + "images", REPLAY_PREFIX + "labels"} or not isinstance(
        described, dict
    ):
        raise BundleError(
            f"{path}: its replay data is incomplete (tensors {sorted(tensors)}, "
            f"config entry {described!r})"
        )
    checks = described.get("checks", 0)
    if not isinstance(checks, int) or isinstance(checks, bool):
        raise BundleError(f"{path}: the replay entry's check count {checks!r} is not a number")
    try:
        replay = ReplaySet(
            tensors[REPLAY_PREFIX + "images"].numpy(),
            tensors[REPLAY_PREFIX + "labels"].numpy(),
            str(described.get("source", "")),
            checks,
        )
    except BundleError as error:
        raise BundleError(f"{path}: {error}") from error
    if described.get("patches") != len(replay.labels):
        raise BundleError(
            f"{path}: the config announces {described.get('patches')} replay patches, "
            f"the file holds {len(replay.labels)}"
        )
    return replay


def _read_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise BundleError(f"model file not found: {path}")
    if path.stat().st_size < 8:
        raise BundleError(f"{path} is empty or truncated; it is not a model bundle")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as error:
        raise BundleError(
            f"{path} is not a napari-unet model bundle (.safetensors): {error}. "
            "Pickled torch checkpoints (.pt/.pth) are refused because they can run code."
        ) from error


def _parse_config(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    if METADATA_KEY not in metadata:
        raise BundleError(
            f"{path} is a safetensors file but not a napari-unet bundle (no {METADATA_KEY!r} "
            "config in its metadata)"
        )
    try:
        config = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise BundleError(f"{path}: its config is not valid JSON ({error})") from error
    _check_config(config, source=str(path))
    return config


def _check_config(config: Any, *, source: str) -> None:
    if not isinstance(config, dict):
        raise BundleError(f"{source}: the config must be a JSON object")
    version = config.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{source}: the config has no integer format_version")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{source} uses bundle format {version}, newer than this napari-unet understands "
            f"({FORMAT_VERSION}); upgrade napari-unet to use it"
        )
    for key in ("architecture", "mode", "class_names", "input", "normalization"):
        if key not in config:
            raise BundleError(f"{source}: the config lacks {key!r}")
    if config["mode"] not in MODES:
        raise BundleError(f"{source}: mode {config['mode']!r} is not one of {', '.join(MODES)}")
    architecture = config["architecture"]
    if not isinstance(architecture, dict):
        raise BundleError(f"{source}: architecture must be an object")
    if architecture.get("n_classes") != len(config["class_names"]):
        raise BundleError(
            f"{source}: the network has {architecture.get('n_classes')} outputs but "
            f"{len(config['class_names'])} class names"
        )
    if config["mode"] == "instances" and len(config["class_names"]) != 3:
        raise BundleError(f"{source}: an instance model must have exactly 3 classes")
    expected_state(architecture)  # shapes only; raises BundleError naming the valid choices


def clone_bundle(bundle: Bundle) -> Bundle:
    """Deep copy of a bundle (independent weights and config)."""
    import copy

    return Bundle(
        network=copy.deepcopy(bundle.network),
        config=json.loads(json.dumps(bundle.config)),
        path=bundle.path,
        replay=bundle.replay,  # read-only arrays, shared
    )


def network_state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a network's weights (for keeping the best ones)."""
    return {key: value.detach().to("cpu", copy=True) for key, value in network.state_dict().items()}

"""The bad-input battery: files a microscope (or a user) may hand us, and what must happen.

Each case builds its input in a folder and says what is expected: a labels image of a given
shape, or an error whose message matches a pattern. tests/test_battery.py runs every case
through the CLI and through napari; ``python -m tests.battery`` runs them through the CLI and
prints the table of docs/reliability.md with the observed outcomes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile


@dataclass(frozen=True)
class Case:
    """One battery case.

    Attributes
    ----------
    name : str
    description : str
        What the input is, for the table.
    make : callable
        ``make(folder) -> dict`` of CLI inputs: ``image`` (and for training, ``labels``,
        ``mask``, ``dataset``).
    command : {"predict", "train"}
    expect_shape : tuple or None
        Shape of the labels a successful prediction must write.
    expect_error : str or None
        Regex the error message must match (the run must fail).
    args : list of str
        Extra CLI arguments.
    simulated : str
        How a condition that cannot be produced for real in a test is simulated.
    """

    name: str
    description: str
    make: Callable[[Path], dict[str, Path]]
    command: str = "predict"
    expect_shape: tuple[int, ...] | None = None
    expect_error: str | None = None
    args: list[str] = field(default_factory=list)
    simulated: str = ""


def _tif(name: str, data: np.ndarray, **kwargs) -> Callable[[Path], dict[str, Path]]:
    def make(folder: Path) -> dict[str, Path]:
        path = folder / name
        tifffile.imwrite(path, data, **kwargs)
        return {"image": path}

    return make


def _bytes(name: str, content: Callable[[Path], bytes]) -> Callable[[Path], dict[str, Path]]:
    def make(folder: Path) -> dict[str, Path]:
        path = folder / name
        path.write_bytes(content(folder))
        return {"image": path}

    return make


def _nuclei(shape: tuple[int, ...] = (64, 64), dtype: str = "uint16") -> np.ndarray:
    """Bright disks on a noisy background, like fluorescent nuclei."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    image = rng.normal(100, 10, shape[-2:])
    for cy, cx in ((16, 16), (40, 20), (24, 44), (48, 48)):
        image += 800 * (((yy - cy) ** 2 + (xx - cx) ** 2) < 64)
    image = np.broadcast_to(image, shape)
    return image.astype(dtype) if dtype != "bool" else image > 400


def _valid_tiff_bytes(folder: Path) -> bytes:
    path = folder / "whole.tif"
    tifffile.imwrite(path, _nuclei((4, 64, 64)), photometric="minisblack")
    return path.read_bytes()


def _png_bytes(folder: Path) -> bytes:
    import imageio.v3 as iio

    path = folder / "real.png"
    iio.imwrite(path, _nuclei(dtype="uint8"))
    return path.read_bytes()


def _imagej_wrong_slices(folder: Path) -> dict[str, Path]:
    """An ImageJ stack whose description claims 9 slices while 5 pages exist."""
    path = folder / "imagej_mismatch.tif"
    tifffile.imwrite(path, _nuclei((5, 64, 64)), imagej=True, metadata={"axes": "ZYX"})
    content = path.read_bytes()
    patched = content.replace(b"images=5", b"images=9", 1).replace(b"slices=5", b"slices=9", 1)
    assert patched != content
    path.write_bytes(patched)
    return {"image": path}


def _training(
    labels: np.ndarray, image_shape: tuple[int, ...] = (64, 64), mask: np.ndarray | None = None
) -> Callable[[Path], dict[str, Path]]:
    def make(folder: Path) -> dict[str, Path]:
        files = {"image": folder / "train_image.tif", "labels": folder / "train_labels.tif"}
        tifffile.imwrite(files["image"], _nuclei(image_shape))
        tifffile.imwrite(files["labels"], labels)
        if mask is not None:
            files["mask"] = folder / "train_mask.tif"
            tifffile.imwrite(files["mask"], mask)
        return files

    return make


def _empty_dataset(folder: Path) -> dict[str, Path]:
    (folder / "empty_set").mkdir()
    return {"dataset": folder / "empty_set"}


def _disk_labels(shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    return (_nuclei(shape) > 400).astype(np.uint16)


def _one_plane_corrected() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((5, 64, 64), np.uint16)
    labels[2] = _disk_labels()
    mask = np.zeros((5, 64, 64), np.uint8)
    mask[2] = 1
    return labels, mask


def _single_pixel() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((64, 64), np.uint16)
    labels[16, 16] = 1
    mask = np.zeros((64, 64), np.uint8)
    mask[16, 16] = 1
    return labels, mask


_STACK_LABELS, _STACK_MASK = _one_plane_corrected()
_PIXEL_LABELS, _PIXEL_MASK = _single_pixel()
_TRAIN = ["--steps", "4", "--patch-size", "32", "--batch-size", "2"]

CASES: list[Case] = [
    Case("zero_byte", "zero-byte .tif", _bytes("empty.tif", lambda f: b""), expect_error="empty"),
    Case(
        "random_bytes",
        "random bytes named .tif",
        _bytes("random.tif", lambda f: np.random.default_rng(1).bytes(5000)),
        expect_error="not a readable TIFF",
    ),
    Case(
        "truncated",
        "TIFF cut after 5000 of its bytes",
        _bytes("cut.tif", lambda f: _valid_tiff_bytes(f)[:5000]),
        expect_error="not a readable TIFF|truncated",
    ),
    Case(
        "png_renamed",
        "PNG file renamed .tif",
        _bytes("png.tif", _png_bytes),
        expect_shape=(64, 64),
    ),
    Case(
        "one_by_one", "1 x 1 image", _tif("1x1.tif", np.ones((1, 1), np.uint8)), expect_shape=(1, 1)
    ),
    Case(
        "one_by_n",
        "1 x 50 image",
        _tif("1xn.tif", np.ones((1, 50), np.uint8)),
        expect_shape=(1, 50),
    ),
    Case(
        "smaller_than_tile",
        "20 x 30 image, smaller than one tile",
        _tif("small.tif", _nuclei((20, 30))),
        expect_shape=(20, 30),
    ),
    Case(
        "five_d_channels",
        "5D ImageJ hyperstack TZCYX with 2 channels, no channel chosen",
        _tif("tzcyx.tif", _nuclei((2, 3, 2, 64, 64)), imagej=True, metadata={"axes": "TZCYX"}),
        expect_error="channels.*choose one",
    ),
    Case(
        "five_d_channel_chosen",
        "the same 5D hyperstack with --channel 1",
        _tif("tzcyx1.tif", _nuclei((2, 3, 2, 64, 64)), imagej=True, metadata={"axes": "TZCYX"}),
        expect_shape=(2, 3, 64, 64),
        args=["--channel", "1"],
    ),
    Case(
        "six_d",
        "6D TIFF without axis names (2 x 2 x 2 x 5 x 48 x 48)",
        _tif("six.tif", _nuclei((2, 2, 2, 5, 48, 48), dtype="uint8")),
        expect_shape=(2, 2, 2, 5, 48, 48),
    ),
    Case(
        "rgb",
        "RGB image",
        _tif("rgb.tif", np.stack([_nuclei(dtype="uint8")] * 3, -1), photometric="rgb"),
        expect_shape=(64, 64),
    ),
    Case(
        "rgba",
        "RGBA image",
        _tif(
            "rgba.tif",
            np.stack([_nuclei(dtype="uint8")] * 3 + [np.full((64, 64), 255, np.uint8)], -1),
            photometric="rgb",
            extrasamples=["unassalpha"],
        ),
        expect_shape=(64, 64),
    ),
    Case(
        "two_channel",
        "2-channel image (ImageJ CYX composite, as Fiji saves it), no channel chosen",
        _tif(
            "cyx.tif",
            _nuclei((2, 64, 64)),
            imagej=True,
            metadata={"axes": "CYX", "mode": "composite"},
        ),
        expect_error="channels.*choose one",
    ),
    *[
        Case(
            f"dtype_{dtype}",
            f"{dtype} pixels",
            _tif(f"{dtype}.tif", _nuclei(dtype=dtype)),
            expect_shape=(64, 64),
        )
        for dtype in ("bool", "int8", "int32", "int64", "uint32", "float16", "float64")
    ],
    Case(
        "dtype_complex",
        "complex64 pixels",
        _tif("complex.tif", _nuclei(dtype="complex64")),
        expect_error="pixel type complex64 is not supported",
    ),
    Case(
        "nan_inf",
        "float32 image with NaN and Inf pixels",
        _tif(
            "naninf.tif",
            np.where(np.eye(64, dtype=bool), np.nan, _nuclei(dtype="float32")).astype(np.float32)
            + np.pad([[np.inf, -np.inf]], ((0, 63), (0, 62))).astype(np.float32),
        ),
        expect_shape=(64, 64),
    ),
    Case(
        "constant_zero",
        "constant image (all zero)",
        _tif("zeros.tif", np.zeros((64, 64), np.uint16)),
        expect_shape=(64, 64),
    ),
    Case(
        "imagej_mismatch",
        "ImageJ stack whose metadata claims 9 slices, 5 pages present",
        _imagej_wrong_slices,
        expect_shape=(5, 64, 64),
    ),
    Case(
        "too_large",
        "compressed TIFF whose single page does not fit in free memory",
        _tif("huge.tif", _nuclei((256, 256)), compression="zlib"),
        expect_error="needs 128.0 KiB but only 1.0 KiB of memory is free",
        simulated="free memory patched to 1 KiB and the lazy-read threshold to 1 KiB",
    ),
    Case(
        "labels_negative",
        "training labels with negative values",
        _training(np.full((64, 64), -1, np.int16)),
        command="train",
        expect_error="must not be negative",
    ),
    Case(
        "labels_float",
        "training labels of float dtype with fractions",
        _training(np.full((64, 64), 1.5, np.float32)),
        command="train",
        expect_error="whole numbers",
    ),
    Case(
        "labels_shape",
        "training labels whose shape does not match the image",
        _training(np.zeros((32, 64), np.uint16)),
        command="train",
        expect_error="does not match",
    ),
    Case(
        "empty_training_set",
        "empty training-set folder",
        _empty_dataset,
        command="train",
        expect_error="no training set|empty|no planes|nothing",
    ),
    Case(
        "no_objects",
        "labels with no objects (all background, all known)",
        _training(np.zeros((64, 64), np.uint16)),
        command="train",
    ),
    Case(
        "all_foreground",
        "labels where everything is one object",
        _training(np.ones((64, 64), np.uint16)),
        command="train",
    ),
    Case(
        "single_pixel",
        "a single annotated pixel (mask of one pixel)",
        _training(_PIXEL_LABELS, mask=_PIXEL_MASK),
        command="train",
    ),
    Case(
        "one_plane_corrected",
        "z-stack with corrections in one plane only (mask marks that plane)",
        _training(_STACK_LABELS, image_shape=(5, 64, 64), mask=_STACK_MASK),
        command="train",
        args=["--axes", "ZYX"],
    ),
]


def cli_arguments(case: Case, inputs: dict[str, Path], folder: Path, model: str) -> list[str]:
    """The ``napari-unet`` arguments that run ``case`` on its inputs."""
    if case.command == "predict":
        return ["predict", str(inputs["image"]), "-o", str(folder / "out"), "--model", model]
    argv = ["train", "--init", model, "-o", str(folder / "trained.safetensors"), *_TRAIN]
    if "dataset" in inputs:
        return [*argv, "--dataset", str(inputs["dataset"])]
    argv += ["--image", str(inputs["image"]), "--labels", str(inputs["labels"])]
    if "mask" in inputs:
        argv += ["--mask", str(inputs["mask"])]
    return argv


@contextlib.contextmanager
def simulated_conditions(case: Case):
    """Patch what ``case.simulated`` says (free memory for ``too_large``)."""
    if case.name != "too_large":
        yield
        return
    import napari_unet.core.io as io_module

    saved = io_module.LAZY_BYTES, io_module.available_memory
    io_module.LAZY_BYTES = 1024
    io_module.available_memory = lambda: 1024
    try:
        yield
    finally:
        io_module.LAZY_BYTES, io_module.available_memory = saved


def run_cli(case: Case, folder: Path, model: str = "nuclei") -> tuple[int, str, Path, list[str]]:
    """Run ``case`` through ``napari-unet``.

    Returns
    -------
    The exit status, stderr, the output folder, and the user's files (those the case made)
    whose bytes changed or that vanished.
    """
    from napari_unet.cli import main

    inputs = case.make(folder)
    owned = {p: _digest(p) for p in folder.rglob("*") if p.is_file()}
    err, out = io.StringIO(), io.StringIO()  # stdout kept out of the printed table
    with (
        simulated_conditions(case),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(out),
    ):
        status = main([*cli_arguments(case, inputs, folder, model), *case.args])
    changed = [
        str(p.relative_to(folder)) for p, d in owned.items() if not p.is_file() or _digest(p) != d
    ]
    return status, err.getvalue(), folder / "out", changed


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def observed_table() -> str:
    """Markdown rows: case, expected, observed (through the CLI)."""
    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            status, err, out, _ = run_cli(case, Path(tmp))
            if status:
                message = err.strip().splitlines()[-1] if err.strip() else "(no message)"
                observed = f"exit {status}: `{message.split('error: ', 1)[-1][:160]}`"
            elif case.command == "predict":
                labels = tifffile.imread(next(out.glob("*.tif")))
                observed = f"exit 0, labels {labels.shape} {labels.dtype}, {labels.max()} max id"
            else:
                observed = "exit 0, model written"
        expected = (
            f"error matching `{case.expect_error}`"
            if case.expect_error
            else f"labels {case.expect_shape}"
            if case.expect_shape
            else "trains, model written"
        )
        note = f" (simulated: {case.simulated})" if case.simulated else ""
        rows.append(f"| {case.description}{note} | {expected} | {observed} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write("| case | expected | observed (CLI) |\n|---|---|---|\n")
    sys.stdout.write(observed_table() + "\n")

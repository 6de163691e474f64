"""bioimage.io packages made by other software, from the command line: labels from a
probability, an image from any other output, consent for Python code, refusals in one line."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.cli import EXIT_USER, main
from napari_unet.core.bioimageio_export import export_package
from napari_unet.core.generators import run_to_end
from napari_unet.core.io import Stack, read_image
from tests.conftest import tiny_bundle
from tests.foreign_packages import (
    Denoiser,
    Logits,
    Narrow,
    TwoMaps,
    build_package,
    probability_package,
    weights_by_url,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    """Packages as other tools write them: a probability (declared by its data range, or by
    a sigmoid postprocessing), a denoiser, two non-label channels, Python architecture code,
    weights on the internet."""
    pytest.importorskip("bioimageio.core")
    folder = tmp_path_factory.mktemp("foreign")
    probability = probability_package(folder / "probability")
    return {
        "probability": probability,
        "logits": build_package(folder / "logits", Logits(), ["foreground"], sigmoid=True),
        "denoiser": build_package(folder / "denoiser", Denoiser(), ["restored"]),
        "narrow": build_package(folder / "narrow", Narrow(), ["same"]),
        "two maps": build_package(folder / "maps", TwoMaps(), ["signal", "complement"]),
        "code": probability_package(folder / "code", code=True),
        "url": weights_by_url(probability, folder / "url.zip"),
    }


@pytest.fixture
def blobs(tmp_path) -> tuple[Path, np.ndarray]:
    """A two-plane ZYX TIFF with two bright squares per plane, and where they are; its
    planes are not a size the packages take (64 + 16n)."""
    stack = np.zeros((2, 100, 134), np.uint16)
    stack[0, 10:30, 10:30] = stack[0, 50:80, 60:100] = 1000
    stack[1, 40:70, 5:25] = stack[1, 5:20, 90:120] = 800
    path = tmp_path / "blobs.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
    return path, stack > 0


def predict(model: Path | str, image: Path, output: Path, *extra: str) -> int:
    return main(["predict", str(image), "-o", str(output), "--model", str(model), *extra])


def test_probability_package_writes_objects_unique_across_planes(packages, blobs, tmp_path, capsys):
    image, truth = blobs
    assert predict(packages["probability"], image, tmp_path / "out") == 0
    labels = read_image(tmp_path / "out" / "blobs_labels.tif")
    assert labels.axes == "ZYX" and np.array_equal(labels.data > 0, truth)
    assert sorted(np.unique(labels.data)) == [0, 1, 2, 3, 4]  # planes are not linked
    line = capsys.readouterr().out
    assert "4 objects; bioimage.io package, torchscript weights" in line


@pytest.mark.parametrize("shape", [(40, 50), (100, 134), (300, 261)])
def test_any_plane_size_runs(packages, shape):
    """Smaller than the model's smallest input (padded), between block sizes, larger than
    one block (split into blocks): the labels cover the plane exactly."""
    from napari_unet.core.bioimageio_foreign import iter_predict_package, open_package

    image = np.zeros(shape, np.float32)
    image[5:25, 7:30] = image[-15:, -12:] = 100.0
    result = run_to_end(
        iter_predict_package(Stack(image, "YX"), open_package(packages["probability"]))
    )
    assert result.data.shape == shape and result.objects == 2
    assert np.array_equal(result.data > 0, image > 0)


def test_only_a_declared_probability_becomes_objects(packages, blobs, tmp_path, capsys):
    image, truth = blobs
    assert predict(packages["logits"], image, tmp_path / "out") == 0  # the sigmoid declares it
    assert np.array_equal(read_image(tmp_path / "out" / "blobs_labels.tif").data > 0, truth)
    # one float channel, no range, no sigmoid: a restored image, not thresholded into objects
    assert predict(packages["denoiser"], image, tmp_path / "out2") == 0
    assert not (tmp_path / "out2" / "blobs_labels.tif").exists()
    written = read_image(tmp_path / "out2" / "blobs_output.tif")
    assert written.axes == "ZYX" and written.data.dtype == np.float32
    assert np.allclose(written.data, truth * 3.0 + 0.2)
    assert "float32 image: the package's output is not labels" in capsys.readouterr().out


def test_other_outputs_are_written_as_a_float_image(packages, blobs, tmp_path, capsys):
    image, truth = blobs
    assert predict(packages["two maps"], image, tmp_path / "out") == 0
    assert not (tmp_path / "out" / "blobs_labels.tif").exists()
    written = read_image(tmp_path / "out" / "blobs_output.tif")
    assert written.axes == "ZCYX" and written.data.dtype == np.float32
    # the package's own preprocessing scaled each plane to 0-1 before its network ran
    assert np.array_equal(written.data[:, 0], truth.astype(np.float32))
    assert np.array_equal(written.data[:, 1], 1 - truth.astype(np.float32))
    assert "float32 image: the package's output is not labels" in capsys.readouterr().out


def test_python_architecture_runs_only_with_consent(packages, blobs, tmp_path, capsys):
    image, truth = blobs
    assert predict(packages["code"], image, tmp_path / "out") == EXIT_USER
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--allow-package-code" in error
    assert "executes code from the file" in error and not (tmp_path / "out").exists()
    assert predict(packages["code"], image, tmp_path / "out", "--allow-package-code") == 0
    labels = read_image(tmp_path / "out" / "blobs_labels.tif").data
    assert np.array_equal(labels > 0, truth)
    assert "pytorch_state_dict weights" in capsys.readouterr().out


def test_options_that_do_not_apply_are_named(packages, blobs, tmp_path, capsys):
    image, truth = blobs
    extra = [
        "--mode",
        "semantic",
        "--tta",
        "--diameter",
        "20",
        "--rgb",
        "mean",
        "--threshold",
        "0.4",
    ]
    assert predict(packages["probability"], image, tmp_path / "out", *extra) == 0
    notice = capsys.readouterr().err.splitlines()[0]
    assert notice.endswith(": --mode, --rgb, --diameter, --tta do not apply to it and are ignored")
    assert np.array_equal(read_image(tmp_path / "out" / "blobs_labels.tif").data > 0, truth)


def test_refusals_are_one_line_with_exit_2(packages, blobs, tmp_path, capsys):
    image, _ = blobs
    cases = {
        "on the internet, and napari-unet runs offline": [packages["url"]],
        "runs without --scheduler": [packages["probability"], "--scheduler", "local"],
        "its results are TIFF files": [packages["probability"], "--format", "ome-zarr"],
        "takes 1 channel(s); the image has 2": [packages["probability"], "--axes", "CYX"],
    }
    for why, (model, *extra) in cases.items():
        assert predict(model, image, tmp_path / "out", *extra) == EXIT_USER, why
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and why in error, error
    assert not (tmp_path / "out").exists()


def test_a_failure_while_running_is_one_line(packages, blobs, tmp_path, capsys):
    image, _ = blobs
    assert predict(packages["narrow"], image, tmp_path / "out") == EXIT_USER
    error = capsys.readouterr().err.splitlines()[-1]  # after the progress bars
    assert "failed on plane 1 (ValueError: planes wider than 64 pixels are not supported)" in error
    assert not (tmp_path / "out" / "blobs_output.tif").exists()


def test_package_folders_by_name_and_what_is_not_a_package(
    packages, blobs, tmp_path, capsys, monkeypatch
):
    image, truth = blobs
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile(packages["probability"]) as archive:
        archive.extractall("pz")
        archive.extractall("nested/pz")
        members = archive.namelist()
    assert predict(Path("pz"), image, tmp_path / "out") == 0  # no model is named pz
    assert np.array_equal(read_image(tmp_path / "out" / "blobs_labels.tif").data > 0, truth)
    capsys.readouterr()
    argv = ["export", "pz", "-o", "again.zip", "--author", "A", "--license", "MIT"]
    assert main(argv) == EXIT_USER
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "not a napari-unet model: it cannot be exported" in error

    Path("broken.zip").write_bytes(b"not a zip")
    with zipfile.ZipFile("in_folder.zip", "w") as archive:
        for member in members:
            archive.write(Path("nested") / "pz" / member, f"pz/{member}")
    Path("empty").mkdir()
    cases = {
        "broken.zip is not a valid zip file": "broken.zip",
        "in_folder.zip has no rdf.yaml at its top (it is at pz/rdf.yaml": "in_folder.zip",
        "empty is a folder without rdf.yaml": "empty",
        "nested is a folder without rdf.yaml": "nested/",
    }
    for why, model in cases.items():
        assert predict(model, image, tmp_path / "out2") == EXIT_USER, why
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and why in error, error


def test_help_names_the_image_output_and_package_folders(capsys):
    for command in ("predict", "export"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # as one line, whatever the wrapping
    assert "or DIR/<name>_output.tif for a bioimage.io package whose output is not labels" in text
    assert "replace existing label files (or <name>_output.tif files)" in text
    assert "bioimage.io package exported by napari-unet (.zip, folder or rdf.yaml)" in text


def test_foreign_packages_cannot_be_fine_tuned(packages, blobs, tmp_path, capsys):
    image, truth = blobs
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, truth.astype(np.uint16), imagej=True, metadata={"axes": "ZYX"})
    argv = ["train", "--init", str(packages["probability"]), "--image", str(image)]
    argv += ["--labels", str(labels), "-o", str(tmp_path / "tuned.safetensors")]
    assert main(argv) == EXIT_USER
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot be fine-tuned" in error


def test_without_the_extra_only_foreign_packages_need_it(
    packages, blobs, models_dir, tmp_path, capsys, monkeypatch
):
    own = export_package(tiny_bundle(), tmp_path / "own.zip", authors=["A"], license_id="MIT")
    for name in ("bioimageio", "bioimageio.spec", "bioimageio.core"):
        monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    image, _ = blobs
    assert predict(packages["probability"], image, tmp_path / "out") == EXIT_USER
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and 'pip install "napari-unet[bioimageio]"' in error
    assert predict(own, image, tmp_path / "out", "--device", "cpu") == 0
    assert (tmp_path / "out" / "blobs_labels.tif").is_file()

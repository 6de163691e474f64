"""bioimage.io export and import: the ecosystem's own check, exact re-import, the CLI.

``bioimageio.core.test_model`` and fine-tuning run in child processes: they import
``torch._dynamo`` and triton, which must never load in a process that may open a napari
window (the GUI tests run later in the same pytest process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_unet.cli import EXIT_USER, main
from napari_unet.core.architecture_source import standalone_source
from napari_unet.core.bioimageio_docs import BUNDLED_ORIGINS
from napari_unet.core.bioimageio_export import export_package
from napari_unet.core.bioimageio_foreign import iter_predict_package, open_package
from napari_unet.core.bioimageio_import import load_package_bundle
from napari_unet.core.errors import BundleError, InputError
from napari_unet.core.generators import run_to_end
from napari_unet.core.inference import PredictOptions, iter_predict
from napari_unet.core.io import Stack, read_image
from napari_unet.core.model import UNet
from napari_unet.core.options import TrainSettings
from napari_unet.core.preprocess import normalize
from napari_unet.core.registry import load_bundle
from napari_unet.core.training_process import iter_finetune_in_child

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"
AUTHORS = {"authors": ["Ada Lovelace"], "license_id": "CC-BY-4.0"}
CHECK = """
import json, sys
from bioimageio.core import test_model
summary = test_model(sys.argv[1])
print(json.dumps({
    "status": summary.status,
    "details": [[d.name, d.status] for d in summary.details],
    "errors": [str(e.msg) for d in summary.details for e in d.errors],
}))
"""


def bioimageio_test(path: Path) -> dict:
    """``bioimageio.core.test_model`` on a package, with its default tolerances, in a child."""
    pytest.importorskip("bioimageio.core")
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=path.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def description(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return yaml.safe_load(archive.read("rdf.yaml"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """The bundled nuclei model and a freshly fine-tuned version of it, exported."""
    folder = tmp_path_factory.mktemp("bioimageio")
    base = load_bundle("nuclei")
    corrections = base.replay.samples()[:2]  # real labelled nuclei
    settings = TrainSettings(
        steps=3, patch_size=64, batch_size=2, val_every=3, learning_rate=1e-3, device="cpu"
    )
    tuned_path = folder / "nuclei-ft1.safetensors"
    run_to_end(iter_finetune_in_child("nuclei", corrections, settings, tuned_path))
    return {
        "nuclei": export_package(base, folder / "nuclei.zip", **AUTHORS),
        "nuclei-ft1": export_package(load_bundle(tuned_path), folder / "nuclei-ft1.zip", **AUTHORS),
        "nuclei-ft1.safetensors": tuned_path,
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nuclei", "nuclei-ft1"])
def test_bioimageio_core_passes_every_weight_format(exported, name):
    report = bioimageio_test(exported[name])
    assert report["status"] == "passed", report["errors"]
    reproduced = [d for d in report["details"] if d[0].startswith("Reproduce test outputs")]
    assert sorted(reproduced) == [
        ["Reproduce test outputs from test inputs (pytorch_state_dict)", "passed"],
        ["Reproduce test outputs from test inputs (torchscript)", "passed"],
    ]
    assert set(description(exported[name])["weights"]) == {"pytorch_state_dict", "torchscript"}


def test_package_describes_sizes_halo_preprocessing_and_lineage(exported):
    base, tuned = description(exported["nuclei"]), description(exported["nuclei-ft1"])
    y = base["inputs"][0]["axes"][2]
    assert y["size"] == {"min": 144, "step": 16} and base["outputs"][0]["axes"][2]["halo"] == 64
    assert "objects ~20 px across" in y["description"]
    assert base["inputs"][0]["preprocessing"][0]["kwargs"]["min_percentile"] == 1.0
    assert base["outputs"][0]["postprocessing"] == [
        {"id": "softmax", "kwargs": {"axis": "channel"}}
    ]
    assert "parent" not in base and tuned["parent"] == {"id": "napari-unet/nuclei"}
    with zipfile.ZipFile(exported["nuclei-ft1"]) as archive:
        readme = archive.read("README.md").decode()
        test_input = np.load(archive.open("test_input.npy"))
    assert "Lineage (oldest first): nuclei -> nuclei-ft1" in readme and "## Validation" in readme
    assert test_input.shape == (1, 1, 256, 256) and test_input.std() > 0


def test_reimport_predicts_identical_labels_and_fine_tunes_again(exported, tmp_path):
    image = np.asarray(read_image(SAMPLES / "nuclei_2d.tif").data)[:256, :384]
    options = PredictOptions(device="cpu")
    for original, package in [
        (load_bundle("nuclei"), exported["nuclei"]),
        (load_bundle(exported["nuclei-ft1.safetensors"]), exported["nuclei-ft1"]),
    ]:
        imported = load_bundle(package)
        assert imported.path == package and imported.name == original.name
        expected = run_to_end(iter_predict(image, original, options)).labels
        assert expected.max() > 20
        assert np.array_equal(run_to_end(iter_predict(image, imported, options)).labels, expected)
    settings = TrainSettings(steps=1, patch_size=64, batch_size=2, val_fraction=0.0, device="cpu")
    again = tmp_path / "nuclei-ft2.safetensors"
    run_to_end(iter_finetune_in_child(package, imported.replay.samples()[:1], settings, again))
    assert load_bundle(again).config["parent"] == "nuclei-ft1"


def test_architecture_source_runs_without_napari_unet(tmp_path):
    (tmp_path / "unet.py").write_text(standalone_source())
    network = UNet(depth=2, base_channels=8, norm="group", upsampling="bilinear").eval()
    torch.save(network.state_dict(), tmp_path / "weights.pt")
    x = torch.randn(1, 1, 32, 48)
    np.save(tmp_path / "x.npy", x.numpy())
    script = (
        "import sys; sys.modules['napari_unet'] = None\n"  # any napari_unet import fails
        "import numpy as np, torch, unet\n"
        "net = unet.UNet(depth=2, base_channels=8, norm='group', upsampling='bilinear')\n"
        "net.load_state_dict(torch.load('weights.pt', weights_only=True))\n"
        "np.save('y.npy', net.eval()(torch.from_numpy(np.load('x.npy'))).detach().numpy())\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=120)
    with torch.no_grad():  # same network, same weights; float sums may differ in order
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), network(x).numpy(), atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"padding": "valid", "norm": "group", "upsampling": "bilinear", "dropout": 0.2},
        {"norm": "none", "in_channels": 2, "n_classes": 2},
    ],
)
def test_unet_scripts_with_the_same_weights_and_outputs(options):
    torch.manual_seed(0)
    network = UNet(depth=2, base_channels=8, **options).eval()
    scripted = torch.jit.script(network)
    x = torch.randn(2, network.in_channels, 44 if options.get("padding") else 32, 44)
    assert list(scripted.state_dict()) == list(network.state_dict())
    with torch.no_grad():
        assert torch.equal(scripted(x), network(x))


def test_export_refusals(tmp_path):
    em = load_bundle("em-membranes")
    with pytest.raises(InputError, match="non-commercial"):
        export_package(em, tmp_path / "em.zip", authors=["A"], license_id="CC-BY-4.0")
    nuclei = load_bundle("nuclei")
    for kwargs, message in [
        ({"authors": [" "], "license_id": "MIT"}, "author"),
        ({"authors": ["A"], "license_id": "not a licence"}, "SPDX"),
        ({**AUTHORS, "test_image": read_image(SAMPLES / "nuclei_2d.tif")}, "share"),
    ]:
        with pytest.raises(InputError, match=message):
            export_package(nuclei, tmp_path / "n.zip", **kwargs)
    with pytest.raises(InputError, match=r"\.zip"):
        export_package(nuclei, tmp_path / "n.tar", **AUTHORS)
    assert not list(tmp_path.iterdir())


def test_import_refuses_foreign_and_tampered_packages(tmp_path, exported):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump({"type": "model", "name": "other"}))
    with pytest.raises(BundleError, match="not exported by napari-unet"):
        load_bundle(foreign)
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(exported["nuclei"]) as source, zipfile.ZipFile(tampered, "w") as copy:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "nuclei.safetensors":
                data = data[:-1] + bytes([data[-1] ^ 1])
            copy.writestr(item, data)
    with pytest.raises(BundleError, match="SHA-256"):
        load_package_bundle(tampered)
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(exported["nuclei"]).extractall(folder)
    assert load_bundle(folder).name == load_bundle(folder / "rdf.yaml").name == "nuclei"


def test_cli_export_with_consented_user_image_loads_no_dynamo(tmp_path):
    output = tmp_path / "mine.zip"
    script = (
        "import sys; from napari_unet.cli import main\n"
        f"rc = main(['export', 'nuclei', '-o', {str(output)!r}, '--author', 'Ada Lovelace', "
        f"'--license', 'CC-BY-4.0', '--test-image', {str(SAMPLES / 'nuclei_2d.tif')!r}, "
        "'--share-test-image'])\n"
        "print(rc, 'torch._dynamo' in sys.modules, 'triton' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.stdout.split()[-3:] == ["0", "False", "False"], done.stderr[-2000:]
    with zipfile.ZipFile(output) as archive:
        assert "user's image nuclei_2d" in archive.read("README.md").decode()


def test_cli_export_mistakes_exit_2(tmp_path, capsys):
    base = ["--author", "A", "--license", "MIT"]
    cases = [
        ["export", "em-membranes", "-o", str(tmp_path / "em.zip"), *base],
        ["export", "nuclei", "-o", str(tmp_path / "n.zip"), *base, "--test-image", "x.tif"],
        ["export", "nuclei", "-o", str(tmp_path / "n.zip"), *base, "--share-test-image"],
        ["export", "nuclei", "-o", str(tmp_path / "n.zip"), *base, "--pixel-size", "0"],
        ["export", "no-such-model", "-o", str(tmp_path / "n.zip"), *base],
    ]
    for argv in cases:
        assert main(argv) == EXIT_USER, argv
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("napari-unet export: error:")
    assert not list(tmp_path.iterdir())


def repackage(source: Path, target: Path, edit, files: dict[str, bytes] | None = None) -> Path:
    """A copy of a package whose description ``edit`` changes in place; ``files`` replace or
    add members, and members the description no longer names are left out."""
    with zipfile.ZipFile(source) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        edit(rdf)
        text = yaml.safe_dump(rdf)
        members = {name: archive.read(name) for name in archive.namelist() if name != "rdf.yaml"}
    members.update(files or {})
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("rdf.yaml", text)
        for name, content in members.items():
            if name in text:
                archive.writestr(name, content)
    return target


def predict_with_package(plane: np.ndarray, package: Path, *, allow_code: bool = False, **options):
    """A foreign package's result on one (Y, X) plane."""
    opened = open_package(package, allow_code=allow_code)
    return run_to_end(iter_predict_package(Stack(plane, "YX"), opened, device="cpu", **options))


def foreign(rdf: dict) -> None:
    """Make a napari-unet description look like another tool's: no bundle, no own config."""
    rdf["config"].pop("napari_unet")
    rdf.pop("attachments")


def test_foreign_package_runs_its_torchscript_through_bioimageio_core(exported, tmp_path):
    pytest.importorskip("bioimageio.core")
    package = repackage(exported["nuclei"], tmp_path / "other.zip", foreign)
    with pytest.raises(BundleError, match="cannot be fine-tuned"):
        load_bundle(package)
    plane = np.asarray(read_image(SAMPLES / "nuclei_2d.tif").data)[:256, :384]
    result = predict_with_package(plane, package)
    assert (result.kind, result.axes, result.weight_format) == ("image", "CYX", "torchscript")
    assert result.data.shape == (3, 256, 384)
    network = load_bundle("nuclei").network.eval()
    normalised = normalize(plane[np.newaxis].astype(np.float32), {"low": 1.0, "high": 99.8})
    with torch.no_grad():
        ours = torch.softmax(network(torch.from_numpy(normalised)[None]), dim=1)[0].numpy()
    # bioimageio.core pads by the halo before normalising: the borders differ, the inside not
    inside = (slice(None), slice(48, -48), slice(48, -48))
    assert np.abs(result.data[inside] - ours[inside]).max() < 0.02


def test_foreign_python_code_and_remote_weights_need_consent_or_are_refused(exported, tmp_path):
    pytest.importorskip("bioimageio.core")

    def code_only(rdf):
        foreign(rdf)
        del rdf["weights"]["torchscript"]

    package = repackage(exported["nuclei"], tmp_path / "code.zip", code_only)
    plane = np.asarray(read_image(SAMPLES / "nuclei_2d.tif").data)[:96, :96]
    with pytest.raises(BundleError, match="allow the package's code"):
        predict_with_package(plane, package)
    assert predict_with_package(plane, package, allow_code=True).weight_format == (
        "pytorch_state_dict"
    )

    def remote(rdf):
        code_only(rdf)
        rdf["weights"]["pytorch_state_dict"]["source"] = "https://example.org/weights.pt"

    package = repackage(exported["nuclei"], tmp_path / "remote.zip", remote)
    with pytest.raises(BundleError, match="on the internet"):
        open_package(package, allow_code=True)


class ClassMap(torch.nn.Module):
    """Class 1 where the normalised pixel is over 0.5, as integers (a class-map model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0.5).to(torch.int64)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("head", ["probability", "class map"])
def test_foreign_single_channel_outputs_become_labels(exported, tmp_path, head):
    pytest.importorskip("bioimageio.core")
    import io

    if head == "probability":
        network = torch.nn.Conv2d(1, 1, 1)  # sigmoid over 0.5 where the input is over 0.5
        with torch.no_grad():
            network.weight.fill_(40.0)
            network.bias.fill_(-20.0)
    else:
        network = ClassMap()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(network), buffer)

    def single_channel(rdf):
        foreign(rdf)
        del rdf["weights"]["pytorch_state_dict"]
        weights = rdf["weights"]["torchscript"]
        del weights["parent"], weights["sha256"]
        weights["source"] = "head.pt"
        (output,) = rdf["outputs"]
        output["axes"][1]["channel_names"] = ["foreground"]
        output.pop("sample_tensor")
        if head == "probability":
            output["postprocessing"] = [{"id": "sigmoid"}]
        else:
            output["postprocessing"] = []
            output["data"] = {"type": "int64"}

    package = repackage(
        exported["nuclei"], tmp_path / "head.zip", single_channel, {"head.pt": buffer.getvalue()}
    )
    plane = np.zeros((96, 128), np.float32)
    plane[10:30, 10:30] = plane[50:80, 60:100] = 100.0
    result = predict_with_package(plane, package, min_size=5)
    assert (result.kind, result.axes) == (
        "objects" if head == "probability" else "classes",
        "YX",
    )
    expected = 2 if head == "probability" else 1  # objects, or the one foreground class
    assert result.data.max() == expected and np.array_equal(result.data > 0, plane > 0)


@pytest.mark.parametrize("name", sorted(BUNDLED_ORIGINS))
def test_bundled_origins_repeat_their_model_cards(name):
    """The packages' data and scores of the bundled models must follow their model cards."""
    import re

    card = (Path(__file__).resolve().parents[1] / "docs" / "models" / f"{name}.md").read_text()
    origin = BUNDLED_ORIGINS[name]
    for number in re.findall(r"\d+\.\d+", origin.validation):
        assert number in card, f"{number} of BUNDLED_ORIGINS[{name!r}] is not in its model card"
    history = load_bundle(name).config["training"]["history"]
    assert f"{len(history[0]['samples'])} " in origin.data  # images trained on

"""bioimage.io packages as other software makes them, built offline for the tests.

Each package is a tiny TorchScript network described with ``bioimageio.spec``'s own model
description classes (spec 0.5) and written with ``save_bioimageio_package``, so napari-unet
meets it exactly as it would meet a package from the model zoo.
"""

from __future__ import annotations

import inspect
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml


class Probability(torch.nn.Module):
    """A sigmoid over 0.5 where the (0-1 scaled) input is over 0.5: one probability channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(40.0 * (x - 0.5))


class Logits(torch.nn.Module):
    """The logits of :class:`Probability`: a probability once the package's sigmoid ran."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40.0 * (x - 0.5)


class Denoiser(torch.nn.Module):
    """One float channel that is not a probability, as a denoising or restoration model
    gives: values above 0.5 everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 3.0 + 0.2


class Narrow(torch.nn.Module):
    """Fails, inside TorchScript, on inputs wider than its 64-pixel test tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 64:
            raise ValueError("planes wider than 64 pixels are not supported")
        return x


class TwoMaps(torch.nn.Module):
    """Two channels that are not labels: the input and its complement."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, 1.0 - x], dim=1)


def probability_package(folder: Path, *, code: bool = False) -> Path:
    """The package of :class:`Probability`, its output declared as data in [0, 1]."""
    return build_package(folder, Probability(), ["foreground"], code=code, output_range=(0, 1))


def build_package(
    folder: Path,
    network: torch.nn.Module,
    outputs: list[str],
    *,
    code: bool = False,
    output_range: tuple[float, float] | None = None,
    sigmoid: bool = False,
) -> Path:
    """A zip package of ``network`` (one grey input, one output with the channels
    ``outputs``), with min-max scaling as its preprocessing; returns its path.

    Its weights are TorchScript, or with ``code`` a ``pytorch_state_dict`` whose architecture
    is the network's class in a Python file of the package (running it runs that code). The
    output's data range is ``output_range`` where given, else not stated; with ``sigmoid``
    a sigmoid is its postprocessing.
    """
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5

    folder.mkdir(parents=True, exist_ok=True)
    version = v0_5.Version(torch.__version__.split("+")[0])
    if code:
        weights = folder / "weights.pt"
        torch.save(network.state_dict(), weights)
        source = folder / "architecture.py"
        source.write_text("import torch\n\n\n" + inspect.getsource(type(network)))
        entries = v0_5.WeightsDescr(
            pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
                source=weights,
                architecture=v0_5.ArchitectureFromFileDescr(
                    source=source, callable=v0_5.Identifier(type(network).__name__)
                ),
                pytorch_version=version,
            )
        )
    else:
        weights = folder / "weights.ts"
        torch.jit.save(torch.jit.script(network.eval()), weights)
        entries = v0_5.WeightsDescr(
            torchscript=v0_5.TorchscriptWeightsDescr(source=weights, pytorch_version=version)
        )
    rng = np.random.default_rng(0)
    test_input = rng.uniform(0, 255, (1, 1, 64, 64)).astype(np.float32)
    scaled = (test_input - test_input.min()) / (test_input.max() - test_input.min())
    with torch.no_grad():
        test_output = network(torch.from_numpy(scaled))
    test_output = (torch.sigmoid(test_output) if sigmoid else test_output).numpy()
    np.save(folder / "test_input.npy", test_input)
    np.save(folder / "test_output.npy", test_output)

    def axes(channels: list[str], output: bool) -> list:
        space = v0_5.SpaceOutputAxis if output else v0_5.SpaceInputAxis
        size = v0_5.SizeReference(tensor_id=v0_5.TensorId("raw"), axis_id=v0_5.AxisId("y"))
        return [
            v0_5.BatchAxis(),
            v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in channels]),
            space(
                id=v0_5.AxisId("y"),
                size=size if output else v0_5.ParameterizedSize(min=64, step=16),
            ),
            space(
                id=v0_5.AxisId("x"),
                size=v0_5.SizeReference(tensor_id=v0_5.TensorId("raw"), axis_id=v0_5.AxisId("x"))
                if output
                else v0_5.ParameterizedSize(min=64, step=16),
            ),
        ]

    description = v0_5.ModelDescr(
        name="Other tool (test)",
        description="A tiny network made for napari-unet's tests",
        authors=[v0_5.Author(name="Test Author")],
        cite=[v0_5.CiteEntry(text="A test", doi=v0_5.Doi("10.1000/test"))],
        license=v0_5.LicenseId("MIT"),
        documentation=v0_5.FileDescr(source=_readme(folder)),
        inputs=[
            v0_5.InputTensorDescr(
                id=v0_5.TensorId("raw"),
                axes=axes(["grey"], output=False),
                test_tensor=v0_5.FileDescr(source=folder / "test_input.npy"),
                preprocessing=[
                    v0_5.ScaleRangeDescr(
                        kwargs=v0_5.ScaleRangeKwargs(
                            axes=[v0_5.AxisId("y"), v0_5.AxisId("x")],
                            min_percentile=0.0,
                            max_percentile=100.0,
                        )
                    )
                ],
            )
        ],
        outputs=[
            v0_5.OutputTensorDescr(
                id=v0_5.TensorId("prediction"),
                axes=axes(outputs, output=True),
                test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"),
                data=v0_5.IntervalOrRatioDataDescr(range=output_range or (None, None)),
                postprocessing=[v0_5.SigmoidDescr()] if sigmoid else [],
            )
        ],
        weights=entries,
    )
    return save_bioimageio_package(description, output_path=folder / "package.zip")


def _readme(folder: Path) -> Path:
    path = folder / "README.md"
    path.write_text("# A test model\n")
    return path


def weights_by_url(package: Path, target: Path) -> Path:
    """A copy of ``package`` whose TorchScript weights are a URL, as a zoo entry may have."""
    with zipfile.ZipFile(package) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    name = next(n for n in ("rdf.yaml", "bioimageio.yaml") if n in members)
    rdf = yaml.safe_load(members.pop(name))
    source = rdf["weights"]["torchscript"]["source"]
    members.pop(source)
    rdf["weights"]["torchscript"]["source"] = f"https://example.org/models/{source}"
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr(name, yaml.safe_dump(rdf))
        for member, content in members.items():
            archive.writestr(member, content)
    return target

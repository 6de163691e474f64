"""The ``napari-unet`` command: predict, train, evaluate, models, info, export, demo.

Exit statuses: 0 success; 2 a mistake in what was asked or a problem of the environment (a
malformed command line, as argparse reports it, an unreadable file, an existing output, a
full or read-only disk), one line on stderr, no traceback; 70 an internal error (a bug, one
line asking for a report; EX_SOFTWARE in sysexits.h); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from napari_unet.core.options import (
    DEFAULT_MODE,
    DEFAULT_MODEL,
    DEVICES,
    LABEL_FORMATS,
    MODES,
    OPTIMIZERS,
    NewModelSettings,
    PredictOptions,
    TrainSettings,
)
from napari_unet.core.seed_level import DEFAULT_LEVEL, SURE_LEVEL

PREDICT_DEFAULTS = PredictOptions()
TRAIN_DEFAULTS = TrainSettings()
NEW_MODEL = NewModelSettings()
EXIT_USER = 2  # argparse's usage status, for every mistake and environment fault alike
EXIT_BUG = 70  # an unexpected exception: a bug to report (EX_SOFTWARE)
EXIT_INTERRUPTED = 130


class _PairAction(argparse.Action):
    """Collects ``--image A --labels B [--mask M]`` groups in order into ``args.pairs``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        value: Any,
        option: str | None = None,
    ) -> None:
        pairs = getattr(namespace, "pairs", None) or []
        key = self.dest
        if key == "image":
            pairs.append({"image": value})
        elif not pairs or key in pairs[-1]:
            parser.error(f"{option} must follow its --image")
        else:
            pairs[-1][key] = value
        namespace.pairs = pairs


Commands = Any  # the object argparse's add_subparsers returns


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``napari-unet`` command.

    Returns
    -------
    argparse.ArgumentParser
        One subcommand per ``run_*`` function; every default and choice comes from
        :mod:`napari_unet.core.options`, and ``--help`` shows it.
    """
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="Segment microscopy images with a U-Net, and train it on your own labels.",
        epilog=f"exit status: 0 success; {EXIT_USER} a mistake in the request or a problem of "
        f"the environment (one line on stderr says what to do); {EXIT_BUG} an internal error "
        f"(a bug: please report it); {EXIT_INTERRUPTED} interrupted",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_predict,
        _add_train,
        _add_evaluate,
        _add_models,
        _add_info,
        _add_export,
        _add_demo,
    ):
        add(commands)
    return parser


def _add_predict(commands: Commands) -> None:
    """``napari-unet predict``: the inputs, the model and its tiling, the output."""
    p = commands.add_parser(
        "predict",
        help="segment images and write label TIFFs or OME-Zarr",
        description="Segment images; writes DIR/<name>_labels.tif (or "
        "DIR/<name>_labels.ome.zarr) for each input, or DIR/<name>_output.tif for a "
        "bioimage.io package whose output is not labels.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="TIFF/OME-TIFF/ImageJ, PNG or JPEG files, OME-Zarr images or Zarr arrays "
        "(a folder or a URL)",
    )
    p.add_argument(
        "--output", "-o", required=True, metavar="DIR", help="folder for the label images"
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME_OR_PATH",
        help="model name, .safetensors file, or bioimage.io package (.zip, folder or "
        "rdf.yaml; offline). A package from other software runs with its own processing "
        "(needs the 'bioimageio' extra; only --channel, --threshold, --min-size and --device "
        "apply): a probability or class map is written as labels, any other output as "
        "DIR/<name>_output.tif (float32) (default: %(default)s)",
    )
    p.add_argument(
        "--allow-package-code",
        action="store_true",
        help="run a bioimage.io package whose weights need the Python architecture code it "
        "ships (this executes code from the file; by default only TorchScript weights run)",
    )
    p.add_argument("--mode", choices=MODES, help="default: the model's mode")
    _add_device(p)
    _add_number(p, "--tile-size", PREDICT_DEFAULTS.tile_size, "largest tile edge in pixels")
    _add_number(
        p, "--overlap", PREDICT_DEFAULTS.overlap, "tile overlap as a fraction of the tile", "F"
    )
    _add_number(p, "--batch-size", PREDICT_DEFAULTS.batch_size, "tiles per forward pass")
    p.add_argument(
        "--axes",
        metavar="AXES",
        help="axis letters of the input, e.g. ZYX, TZCYX (overrides the file's)",
    )
    _add_series(p)
    p.add_argument(
        "--channel", type=int, metavar="K", help="channel to segment in a multichannel image"
    )
    p.add_argument(
        "--rgb",
        default=PREDICT_DEFAULTS.rgb,
        metavar="{auto,luminance,mean,max,channel:K}",
        help="how a colour (RGB/RGBA) image becomes the model's grey input: auto (the colour "
        "with the most contrast, inverted when the background is bright), luminance, mean, "
        "max, or channel:K (0 red, 1 green, 2 blue) (default: the model's rule, auto for "
        "the bundled nuclei model); what was used is printed after each image",
    )
    p.add_argument(
        "--diameter",
        type=float,
        metavar="PX",
        help="typical object diameter in pixels; the image is rescaled so objects have the "
        "size the model was trained on (default: estimated for each plane)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average each tile's 8 flips and rotations (8x slower)",
    )
    p.add_argument(
        "--threshold",
        type=threshold_argument,
        default=PREDICT_DEFAULTS.threshold,
        metavar="P|auto",
        help="probability level of the objects' seeds and foreground; auto keeps the "
        f"foreground at {DEFAULT_LEVEL:g} and chooses the seeds' level for each plane "
        f"({SURE_LEVEL:g} where the network is sure of much of what it finds, "
        f"{DEFAULT_LEVEL:g} otherwise) and prints it (a package from other software: "
        f"{DEFAULT_LEVEL:g}) (default: %(default)s)",
    )
    p.add_argument("--min-size", type=int, metavar="PX", help="smallest object kept, in pixels")
    p.add_argument(
        "--per-plane",
        action="store_false",
        dest="link_z",
        default=PREDICT_DEFAULTS.link_z,
        help="segment each Z plane on its own (default: objects are linked through Z, one id "
        "per object in a z-stack)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing label files (or <name>_output.tif files)",
    )
    p.add_argument(
        "--format",
        choices=LABEL_FORMATS,
        default=LABEL_FORMATS[0],
        help="label file format (default: %(default)s, which is OME-Zarr for a Zarr input or "
        "labels too large for memory, TIFF otherwise)",
    )
    _add_distributed(p)


def _add_distributed(parser: argparse.ArgumentParser) -> None:
    """``predict``'s options of a run on a Dask cluster."""
    dask = parser.add_argument_group(
        "distributed", "run on a Dask cluster (needs the 'distributed' extra; see docs/cli.md)"
    )
    dask.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a Dask scheduler's address (tcp://host:8786), or 'local' to start a local cluster",
    )
    dask.add_argument(
        "--scheduler-file", metavar="PATH", help="the scheduler file of a running Dask cluster"
    )
    dask.add_argument(
        "--workers", type=int, metavar="N", help="worker processes of --scheduler local"
    )
    dask.add_argument(
        "--block-size",
        type=int,
        metavar="N",
        help="block edge in pixels (Y/X) of a distributed run (default: a block whose window "
        "with its halo is a whole number of tiles, up to 3072 px, from the workers' memory; "
        "at least the tile size; rounded up to the network's grid, 16 px for depth 4)",
    )


def _add_train(commands: Commands) -> None:
    """``napari-unet train``: what to learn from, where to start, the schedule, the output."""
    t = commands.add_parser(
        "train",
        help="train or fine-tune a model on labelled images",
        description="Train a model bundle from labelled images or a training-set folder.",
    )
    _add_training_data(t)
    start = t.add_mutually_exclusive_group()
    start.add_argument(
        "--init",
        metavar="NAME_OR_PATH",
        help=f"model to fine-tune (default: {DEFAULT_MODEL})",
    )
    start.add_argument("--from-scratch", action="store_true", help="start from random weights")
    t.add_argument(
        "--mode",
        choices=MODES,
        help=f"with --from-scratch: what the new model learns (default: {NEW_MODEL.mode}; "
        "a fine-tune keeps its base's mode)",
    )
    t.add_argument("--class-names", metavar="A,B,..", help="semantic class names, background first")
    _add_number(t, "--depth", NEW_MODEL.depth, "with --from-scratch: U-Net depth")
    _add_number(
        t, "--base-channels", NEW_MODEL.base_channels, "with --from-scratch: first level's width"
    )
    t.add_argument(
        "--object-diameter",
        type=float,
        metavar="PX",
        help="with --from-scratch (instances): the object diameter in pixels the new model "
        "works at; training and prediction rescale images so their objects have it "
        "(default: the training labels' median diameter)",
    )
    _add_schedule(t)
    _add_augmentation(t)
    t.add_argument(
        "--half", action="store_true", help="store the weights as float16 (half the size)"
    )
    _add_device(t)
    t.add_argument("--output", "-o", required=True, metavar="MODEL.safetensors")
    t.add_argument("--overwrite", action="store_true", help="replace an existing model file")


def _add_training_data(parser: argparse.ArgumentParser) -> None:
    """``train``'s labelled images: ``--image/--labels/--mask`` groups or a ``--dataset``."""
    parser.add_argument(
        "--image",
        action=_PairAction,
        metavar="IMAGE",
        help="an image (repeat --image/--labels for more)",
    )
    parser.add_argument(
        "--labels",
        action=_PairAction,
        metavar="LABELS",
        help="its label image (instance ids or class indices)",
    )
    parser.add_argument(
        "--mask",
        action=_PairAction,
        metavar="MASK",
        help="optional: nonzero where a person drew or checked the labels; when fine-tuning, "
        "labels outside it are read as the model's prediction the person left as it was "
        "(ignored when the model carries replay patches, as nuclei does; else trained on "
        "with a lower weight); from scratch they are ignored",
    )
    parser.add_argument(
        "--dataset", metavar="DIR", help="a training-set folder saved by the napari plugin"
    )
    parser.add_argument("--axes", metavar="AXES", help="axis letters of the images")
    parser.add_argument(
        "--channel", type=int, metavar="K", help="channel to train on in multichannel images"
    )


def _add_schedule(parser: argparse.ArgumentParser) -> None:
    """``train``'s optimiser, steps, patches and validation."""
    _add_number(parser, "--steps", TRAIN_DEFAULTS.steps, "optimiser steps, as the GUI's Fine-tune")
    parser.add_argument(
        "--learning-rate",
        type=float,
        metavar="LR",
        help=f"the optimiser's step size (default: {TRAIN_DEFAULTS.learning_rate:g}; "
        f"from scratch: {NEW_MODEL.learning_rate:g})",
    )
    _add_number(parser, "--patch-size", TRAIN_DEFAULTS.patch_size, "training patch edge in pixels")
    _add_number(parser, "--batch-size", TRAIN_DEFAULTS.batch_size, "patches per optimiser step")
    _add_number(
        parser,
        "--val-fraction",
        TRAIN_DEFAULTS.val_fraction,
        "share of the labelled planes (or pixels) held out to compare the new model with the base",
        "F",
    )
    _add_number(
        parser, "--val-every", TRAIN_DEFAULTS.val_every, "score the held-out labels every N steps"
    )
    parser.add_argument(
        "--border-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the U-Net paper's weight map that stresses thin gaps between touching objects "
        "(semantic models: between regions of one class, e.g. cells across a membrane) "
        "(default: as the base model was trained; off from scratch)",
    )
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=TRAIN_DEFAULTS.optimizer,
        help="AdamW or the paper's SGD with momentum 0.99 (default: %(default)s)",
    )
    _add_number(parser, "--seed", TRAIN_DEFAULTS.seed, "seed of the random draws")


def _add_augmentation(parser: argparse.ArgumentParser) -> None:
    """``train``'s augmentations beyond the default flips, elastic and intensity changes."""
    augment = TRAIN_DEFAULTS.augment
    parser.add_argument(
        "--zoom",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="random zoom of the training patches between LOW and HIGH (e.g. 0.5 2), so the "
        "model learns more than one object size (default: off)",
    )
    _add_number(
        parser,
        "--invert-chance",
        augment.invert,
        "chance of showing a patch with inverted contrast (dark objects on bright)",
        "P",
    )
    _add_number(
        parser,
        "--blur-chance",
        augment.blur,
        "chance of blurring a patch (Gaussian, sigma 0.5-1.5 px)",
        "P",
    )


def _add_evaluate(commands: Commands) -> None:
    """``napari-unet evaluate``."""
    e = commands.add_parser("evaluate", help="score a label image against ground truth")
    e.add_argument("--prediction", required=True, metavar="P.tif")
    e.add_argument("--truth", required=True, metavar="T.tif")
    e.add_argument(
        "--mode",
        choices=MODES,
        default=DEFAULT_MODE,
        help="object ids or class indices (default: %(default)s)",
    )
    _add_json(e)


def _add_models(commands: Commands) -> None:
    """``napari-unet models``."""
    _add_json(commands.add_parser("models", help="list bundled and your own models"))


def _add_info(commands: Commands) -> None:
    """``napari-unet info``."""
    i = commands.add_parser("info", help="show how a file is read (shape, dtype, axes, scale)")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--axes", metavar="AXES", help="axis letters to apply")
    _add_series(i)


def _add_export(commands: Commands) -> None:
    """``napari-unet export``: the model, its authors and licence, the test image."""
    x = commands.add_parser(
        "export",
        help="write a model as a bioimage.io package (zip)",
        description="Write a model as a bioimage.io model package (spec 0.5): TorchScript and "
        "PyTorch weights, test tensors, cover, README with provenance, and the napari-unet "
        "bundle itself. Test tensors come from the model's replay patches or the bundled "
        "sample images unless --test-image is given.",
    )
    x.add_argument(
        "model",
        metavar="MODEL",
        help="model name, .safetensors file, or bioimage.io package exported by napari-unet "
        "(.zip, folder or rdf.yaml)",
    )
    x.add_argument("--output", "-o", required=True, metavar="NAME.zip", help="package to write")
    x.add_argument(
        "--author",
        action="append",
        required=True,
        metavar="NAME",
        help="an author of the model (repeat for more)",
    )
    x.add_argument(
        "--license",
        required=True,
        metavar="SPDX",
        help="licence of the package, e.g. CC-BY-4.0 (models trained on em-membranes' "
        "data need a non-commercial one, e.g. CC-BY-NC-4.0)",
    )
    x.add_argument(
        "--test-image",
        metavar="IMAGE",
        help="cut the test patch (256 x 256, shipped in the package) from this image of yours "
        "instead; needs --share-test-image",
    )
    x.add_argument(
        "--share-test-image",
        action="store_true",
        help="agree that a patch of --test-image is shipped in the package",
    )
    x.add_argument(
        "--channel", type=int, metavar="K", help="channel of --test-image for a 1-channel model"
    )
    x.add_argument(
        "--pixel-size",
        type=float,
        metavar="UM",
        help="pixel size the model expects, in micrometres (default: known for the bundled "
        "models, else not stated)",
    )
    x.add_argument(
        "--parent-id",
        metavar="ID",
        help="bioimage.io id of the parent model of a fine-tuned version (default: "
        "napari-unet/<parent name>)",
    )
    x.add_argument("--overwrite", action="store_true", help="replace an existing package")


def _add_demo(commands: Commands) -> None:
    """``napari-unet demo``."""
    commands.add_parser(
        "demo", help="open napari with sample data, the widgets and the bundled model"
    )


def _add_number(
    parser: argparse.ArgumentParser, flag: str, default: float, text: str, metavar: str = "N"
) -> None:
    """An option taking one number of ``default``'s type, its default shown in ``--help``."""
    parser.add_argument(
        flag,
        type=type(default),
        default=default,
        metavar=metavar,
        help=f"{text} (default: %(default)s)",
    )


def threshold_argument(text: str) -> float | None:
    """``--threshold``'s value: a number, or None for ``auto``."""
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'auto': {text!r}") from None


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def _add_series(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--series",
        type=int,
        metavar="K",
        help="which image of a multi-image TIFF (e.g. an OME-TIFF's positions) to use "
        "(default 0; the files say how many they hold)",
    )


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default=PREDICT_DEFAULTS.device,
        choices=DEVICES,
        help="auto picks cuda > mps > cpu (default: %(default)s)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-unet`` command; returns the exit status."""
    from napari_unet.core.errors import UnetError

    args = build_parser().parse_args(argv)
    handlers = {
        "predict": run_predict,
        "train": run_train,
        "evaluate": run_evaluate,
        "models": run_models,
        "info": run_info,
        "export": run_export,
        "demo": run_demo,
    }
    try:
        return handlers[args.command](args)
    except UnetError as error:
        print(f"napari-unet {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER
    except OSError as error:  # the environment (full disk, permissions, a vanished file)
        where = f" ({error.filename})" if error.filename else ""
        print(
            f"napari-unet {args.command}: error: {error.strerror or error}{where}; "
            "check the disk and the folder's permissions, then run it again",
            file=sys.stderr,
        )
        return EXIT_USER
    except KeyboardInterrupt:
        print(f"napari-unet {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # a bug: still one clear line, and nothing half-written
        print(
            f"napari-unet {args.command}: unexpected error ({type(error).__name__}: {error}); "
            "this is a bug in napari-unet, please report it with the command you ran",
            file=sys.stderr,
        )
        return EXIT_BUG


def output_name(
    path: Path | str, series: int | None = None, fmt: str = "tif", what: str = "labels"
) -> str:
    """``cells.ome.tif`` -> ``cells_labels.tif`` (``cells_series2_labels.tif`` for series 2);
    ``cells.ome.zarr`` -> ``cells_labels.ome.zarr`` with ``fmt="ome-zarr"``; ``what="output"``
    names a package's image output ``cells_output.tif``."""
    from napari_unet.core.io import strip_image_suffix
    from napari_unet.core.zarr_io import LABELS_SUFFIX

    part = "" if series is None else f"_series{series}"
    name = strip_image_suffix(Path(str(path).rstrip("/")).name)
    return f"{name}{part}{LABELS_SUFFIX if fmt == 'ome-zarr' else f'_{what}.tif'}"


def run_predict(args: argparse.Namespace) -> int:
    """``napari-unet predict``."""
    from tqdm import tqdm

    from napari_unet.core.atomic import check_output, remove_stale_partials
    from napari_unet.core.diameter import describe_sizes
    from napari_unet.core.disk_labels import labels_on_disk
    from napari_unet.core.errors import InputError
    from napari_unet.core.generators import run_to_end
    from napari_unet.core.inference import Progress, iter_predict
    from napari_unet.core.registry import load_bundle
    from napari_unet.core.seed_level import describe_levels
    from napari_unet.core.zarr_io import check_zarr_output, is_zarr

    distributed = bool(args.scheduler or args.scheduler_file)
    if args.workers is not None and args.scheduler != "local":
        raise InputError("--workers starts a local cluster: use it with --scheduler local")
    if args.block_size is not None and not distributed:
        raise InputError("--block-size splits a distributed run: use it with --scheduler")
    options = PredictOptions(
        mode=args.mode,
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        threshold=args.threshold,
        min_size=args.min_size,
        link_z=args.link_z,
        diameter=args.diameter,
        tta=args.tta,
        channel=args.channel,
        rgb=args.rgb,
        device=args.device,
    )
    options.check()
    package = _foreign_package(args, options, distributed)
    inputs = list(args.inputs)
    output = Path(args.output)
    targets: dict[str, Path] = {}
    for path in inputs:
        zarr_input = is_zarr(path)
        if not zarr_input and not Path(path).is_file():
            raise InputError(f"{path}: no such file")
        fmt = args.format
        if package is not None:
            fmt = "tif"
        elif fmt == "auto":
            fmt = "ome-zarr" if zarr_input or _labels_too_large(path, args) else "tif"
        what = "output" if package is not None and package.kind == "image" else "labels"
        target = output / output_name(path, args.series, fmt, what)
        if target in targets.values():
            raise InputError(f"two inputs would both write {target}; rename one")
        check = check_zarr_output if fmt == "ome-zarr" else check_output
        targets[path] = check(
            target, [p for p in inputs if "://" not in p], overwrite=args.overwrite
        )
    remove_stale_partials(output)  # left by runs that were killed
    if package is not None:
        return _predict_with_package(args, package, targets)
    bundle = load_bundle(args.model)
    if distributed:
        return _predict_on_dask(args, options, bundle, targets)
    for path, target in targets.items():
        stack = _open_input(path, args)
        if stack.series_notice and args.series is None:
            print(f"{stack.series_notice} (choose with --series)", file=sys.stderr)
        name = Path(path.rstrip("/")).name
        with (
            labels_on_disk(target) as make_labels,
            tqdm(desc=name, unit="tile", file=sys.stderr, leave=False) as bar,
        ):

            def show(progress: Progress, bar: tqdm = bar, name: str = name) -> None:
                if progress.notice:
                    bar.write(f"{name}: {progress.notice}", file=sys.stderr)
                bar.total = progress.total
                bar.set_postfix_str(progress.stage)
                bar.update(progress.done - bar.n)

            result = run_to_end(iter_predict(stack, bundle, options, make_labels=make_labels), show)
            _write_result(target, result.labels, result.axes, stack, path, args.overwrite)
        count = result.stats["objects"] if result.mode == "instances" else len(result.class_names)
        what = "objects" if result.mode == "instances" else "classes"
        print(
            f"{path} -> {target} ({result.axes} {tuple(result.labels.shape)}, {count} {what}, {result.compute})"
        )
        sizes = describe_sizes(result.stats["sizes"], bundle.config.get("object_diameter"))
        levels = describe_levels(result.stats["levels"])
        for line in (result.stats["colour_input"], sizes, levels):
            if line:
                print(f"  {line}")
    return 0


def _foreign_package(args: argparse.Namespace, options: PredictOptions, distributed: bool) -> Any:
    """The ForeignPackage ``--model`` names when it is a bioimage.io package from other
    software (checked, not yet loaded), else None; says in one line which of the given
    ``options`` it does not use."""
    from napari_unet.core.bioimageio_import import is_foreign_package
    from napari_unet.core.errors import InputError
    from napari_unet.core.registry import resolve_model

    path = resolve_model(args.model)
    if not is_foreign_package(path):
        return None
    from napari_unet.core.bioimageio_foreign import UNUSED_OPTIONS, open_package

    unused = [
        f"--{name.replace('_', '-')}"
        for name in UNUSED_OPTIONS
        if getattr(options, name) != getattr(PREDICT_DEFAULTS, name)
    ]
    if unused:
        print(
            f"{path} is a package from other software, with its own processing: "
            f"{', '.join(unused)} do not apply to it and are ignored",
            file=sys.stderr,
        )
    if distributed:
        raise InputError(f"{path} is a package from other software: it runs without --scheduler")
    if args.format == "ome-zarr":
        raise InputError(f"{path} is a package from other software: its results are TIFF files")
    return open_package(path, allow_code=args.allow_package_code)


def _predict_with_package(args: argparse.Namespace, package: Any, targets: dict[str, Path]) -> int:
    """``predict`` with a bioimage.io package from other software: labels from a probability
    or a class map, a float32 image from any other output."""
    from tqdm import tqdm

    from napari_unet.core.bioimageio_foreign import iter_predict_package
    from napari_unet.core.generators import run_to_end
    from napari_unet.core.io import write_image, write_labels

    # bioimageio.core loads TorchScript with torch.jit.load, which warns of its own future
    warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
    for path, target in targets.items():
        stack = _open_input(path, args)
        name = Path(path.rstrip("/")).name
        with tqdm(desc=name, unit="plane", file=sys.stderr, leave=False) as bar:

            def show(progress: Any, bar: tqdm = bar) -> None:
                bar.total = progress.total
                bar.set_postfix_str(progress.stage)
                bar.update(progress.done - bar.n)

            result = run_to_end(
                iter_predict_package(
                    stack,
                    package,
                    channel=args.channel,
                    threshold=args.threshold,
                    min_size=args.min_size,
                    device=args.device,
                ),
                show,
            )
        common = {"axes": result.axes, "scale": stack.scale, "units": stack.units}
        if result.kind == "image":
            write_image(target, result.data, **common, overwrite=args.overwrite)
            what = "float32 image: the package's output is not labels"
        else:
            write_labels(target, result.data, **common, overwrite=args.overwrite)
            what = f"{result.objects} objects" if result.kind == "objects" else "class map"
        print(
            f"{path} -> {target} ({result.axes} {tuple(result.data.shape)}, {what}; "
            f"bioimage.io package, {result.weight_format} weights)"
        )
    return 0


def _write_result(
    target: Path, labels: Any, axes: str, stack: Any, source: str, overwrite: bool
) -> None:
    """Write ``labels`` to ``target``: an OME-Zarr label image (recording ``source``, the
    image they were predicted from) for a ``.zarr`` name, else a TIFF; with ``stack``'s
    physical pixel sizes and units."""
    from napari_unet.core.io import write_labels
    from napari_unet.core.zarr_io import write_labels_zarr

    common = {"axes": axes, "scale": stack.scale, "units": stack.units, "overwrite": overwrite}
    if target.name.endswith(".zarr"):
        write_labels_zarr(target, labels, source=source, **common)
    else:
        write_labels(target, labels, **common)


def _open_input(path: str, args: argparse.Namespace) -> Any:
    """The Stack of a TIFF/PNG/JPEG file or of a Zarr store (lazily where large)."""
    from napari_unet.core.errors import InputError
    from napari_unet.core.io import read_image
    from napari_unet.core.zarr_io import is_zarr, read_zarr

    if is_zarr(path):
        if args.series is not None:
            raise InputError(f"{path} is a Zarr store: --series applies to TIFF files")
        return read_zarr(path, axes=args.axes)
    return read_image(path, axes=args.axes, series=args.series)


def _labels_too_large(path: str, args: argparse.Namespace) -> bool:
    """Whether an input's uint32 labels would take more than half the free memory."""
    import numpy as np

    from napari_unet.core.errors import UnetError
    from napari_unet.core.preprocess import labels_axes_of
    from napari_unet.core.resources import available_memory

    try:
        stack = _open_input(path, args)
    except UnetError:  # reported when the input is segmented, after the model is checked
        return False
    sizes = dict(zip(stack.axes, stack.data.shape, strict=True))
    pixels = int(np.prod([sizes[a] for a in labels_axes_of(stack.axes)], dtype=np.int64))
    return 4 * pixels > available_memory() // 2


def _predict_on_dask(
    args: argparse.Namespace, options: PredictOptions, bundle: Any, targets: dict[str, Path]
) -> int:
    """``predict --scheduler``: one input is split into blocks; several run one task each."""
    from tqdm import tqdm

    from napari_unet.core.distributed import (
        connect,
        discard_work,
        iter_predict_blocks,
        iter_predict_files,
        model_bytes,
    )
    from napari_unet.core.generators import run_to_end
    from napari_unet.core.seed_level import describe_levels

    model = model_bytes(bundle)
    with (
        connect(args.scheduler, args.scheduler_file, args.workers) as (client, threads),
        tqdm(file=sys.stderr, leave=False) as bar,
    ):

        def show(progress: Any) -> None:
            if progress.notice:
                bar.write(progress.notice, file=sys.stderr)
            bar.set_description(progress.stage)
            bar.total = progress.total
            bar.update(progress.done - bar.n)

        if len(targets) > 1:
            lines = run_to_end(
                iter_predict_files(
                    targets,
                    model,
                    options,
                    client,
                    axes=args.axes,
                    series=args.series,
                    overwrite=args.overwrite,
                    torch_threads=threads,
                ),
                show,
            )
            for line in lines:
                print(line)
            return 0
        ((path, target),) = targets.items()
        stack = _open_input(path, args)
        result = run_to_end(
            iter_predict_blocks(
                stack,
                model,
                options,
                client,
                target,
                block_size=args.block_size,
                torch_threads=threads,
            ),
            show,
        )
        # an OME-Zarr is written chunk by chunk from the cluster; a TIFF from memory
        labels = result.labels if target.name.endswith(".zarr") else result.labels.compute()
        _write_result(target, labels, result.axes, stack, path, args.overwrite)
    discard_work(target)
    stats = result.stats
    what = f"{stats['objects']} objects" if result.mode == "instances" else "classes"
    print(
        f"{path} -> {target} ({result.axes} {tuple(result.labels.shape)}, {what}, "
        f"{stats['blocks']} blocks of {stats['block_size']} px + {stats['halo']} px halo, "
        f"{stats['resumed']} resumed; merge {stats['merge_seconds']:.1f} s)"
    )
    for line in (stats["colour_input"], describe_levels(stats["levels"])):
        if line:
            print(f"  {line}")
    return 0


def _keep_safe(bundle: Any, output: Path, half: bool) -> Path | None:
    """Save a trained bundle that could not be written to ``output`` somewhere else: the
    user's model folder, else the temporary folder. Returns where, or None if nowhere."""
    import datetime as dt
    import tempfile

    from napari_unet.core.bundle import save_bundle
    from napari_unet.core.registry import user_models_dir

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for folder in (user_models_dir(), Path(tempfile.gettempdir())):
        try:
            return save_bundle(
                bundle, folder / f"{output.stem}-kept-{stamp}.safetensors", half=half
            )
        except Exception:  # try the next place; the caller reports the first failure
            continue
    return None


def collect_samples(args: argparse.Namespace) -> list[Any]:
    """Training samples from ``--image/--labels/--mask`` groups or from ``--dataset``."""
    import numpy as np

    from napari_unet.core.dataset import TrainingSet
    from napari_unet.core.errors import InputError
    from napari_unet.core.io import read_image
    from napari_unet.core.preprocess import iter_planes, labels_axes_of
    from napari_unet.core.samples import TrainingSample

    pairs = getattr(args, "pairs", None) or []
    if args.dataset and pairs:
        raise InputError("give either --dataset or --image/--labels pairs, not both")
    if args.dataset:
        return TrainingSet.open(args.dataset).samples()
    if not pairs:
        raise InputError(
            "nothing to train on: give --image A.tif --labels A_labels.tif (or --dataset DIR)"
        )
    samples = []
    for pair in pairs:
        if "labels" not in pair:
            raise InputError(f"--image {pair['image']} has no --labels")
        stack = read_image(pair["image"], axes=args.axes)
        label_axes = labels_axes_of(stack.axes)
        labels = read_image(pair["labels"]).data
        mask = read_image(pair["mask"]).data if "mask" in pair else None
        expected = tuple(
            n for n, a in zip(stack.data.shape, stack.axes, strict=True) if a in label_axes
        )
        labels = _fit_shape(labels, expected, pair["labels"], label_axes)
        mask = None if mask is None else _fit_shape(mask, expected, pair["mask"], label_axes)
        label_planes = iter_planes(labels, label_axes)
        mask_planes = iter_planes(mask, label_axes) if mask is not None else None
        for (index, pixels, plane_axes), (_, plane_labels, _) in zip(
            iter_planes(stack.data, stack.axes), label_planes, strict=True
        ):
            known = next(mask_planes)[1] if mask_planes is not None else None
            if known is not None and not known.any():
                continue
            samples.append(
                TrainingSample(
                    np.asarray(pixels),
                    np.asarray(plane_labels),
                    known,
                    plane_axes,
                    f"{pair['image']}{list(index)}",
                )
            )
    return samples


def _fit_shape(array: Any, expected: tuple[int, ...], name: str, axes: str) -> Any:
    """Reshape ``array`` to ``expected`` when they differ only by axes of length 1."""
    import numpy as np

    from napari_unet.core.errors import InputError

    if tuple(n for n in array.shape if n != 1) != tuple(n for n in expected if n != 1):
        raise InputError(
            f"{name}: shape {tuple(array.shape)} does not match the image's {expected} ({axes})"
        )
    return np.asarray(array).reshape(expected)


def run_train(args: argparse.Namespace) -> int:
    """``napari-unet train``."""
    from tqdm import tqdm

    from napari_unet.core.atomic import check_output
    from napari_unet.core.bundle import bundle_from_config, new_config, save_bundle
    from napari_unet.core.errors import InputError, UnetError
    from napari_unet.core.generators import run_to_end
    from napari_unet.core.registry import load_bundle, resolve_model
    from napari_unet.core.training import TrainStep, iter_finetune

    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise InputError(f"{output}: the model file must end in .safetensors")
    inputs = [path for pair in getattr(args, "pairs", None) or [] for path in pair.values()]
    if not args.from_scratch:  # the base model's file is an input too
        inputs.append(resolve_model(args.init or DEFAULT_MODEL))
    check_output(output, inputs, overwrite=args.overwrite)
    start = NEW_MODEL if args.from_scratch else TRAIN_DEFAULTS
    settings = TrainSettings(
        steps=args.steps,
        learning_rate=start.learning_rate if args.learning_rate is None else args.learning_rate,
        context_weight=start.context_weight,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        border_weights=args.border_weights,
        augment=replace(
            TRAIN_DEFAULTS.augment,
            zoom=tuple(args.zoom) if args.zoom else TRAIN_DEFAULTS.augment.zoom,
            invert=args.invert_chance,
            blur=args.blur_chance,
        ),
        optimizer=args.optimizer,
        seed=args.seed,
        device=args.device,
        channel=args.channel,
    )
    settings.check()  # before any file is read
    if args.object_diameter is not None and not (
        args.from_scratch and (args.mode or NEW_MODEL.mode) == "instances"
    ):
        raise InputError(
            "--object-diameter sets the working size of a new instance model (--from-scratch); "
            "a fine-tuned model keeps its base's and a semantic model has none"
        )
    if args.object_diameter is not None and not 1 <= args.object_diameter <= 1000:
        raise InputError(
            f"--object-diameter must be between 1 and 1000 pixels, got {args.object_diameter:g}"
        )
    samples = collect_samples(args)
    if args.class_names and not (args.from_scratch and args.mode == "semantic"):
        raise InputError(
            "--class-names names the classes of a new semantic model (--from-scratch --mode "
            "semantic); a fine-tuned model keeps its base's classes, and an instance model's "
            "are always background, interior, boundary"
        )
    if args.from_scratch:
        mode = args.mode or NEW_MODEL.mode
        class_names = args.class_names.split(",") if args.class_names else None
        config = new_config(
            architecture={"depth": args.depth, "base_channels": args.base_channels},
            mode=mode,
            class_names=class_names,
            object_diameter=args.object_diameter,
        )  # without it, an instance model's object diameter is measured from the labels
        base = bundle_from_config(config)
    else:
        base = load_bundle(args.init or DEFAULT_MODEL)
        if args.mode and args.mode != base.mode:
            raise InputError(
                f"model {base.name!r} is a {base.mode} model; it cannot be trained for {args.mode}"
            )
    generator = iter_finetune(base, samples, settings)
    with tqdm(total=settings.steps, desc="training", unit="step", file=sys.stderr) as bar:

        def show(item: Any) -> None:
            if not isinstance(item, TrainStep):
                bar.set_postfix_str(item.text)
                return
            bar.update(1)
            postfix = f"loss {item.loss:.4f}"
            if item.val_score is not None:
                postfix += f" held-out {item.val_score:.3f}"
            bar.set_postfix_str(postfix)

        result = run_to_end(generator, show)
    try:
        save_bundle(result.bundle, output, overwrite=args.overwrite, half=args.half)
    except (OSError, UnetError) as error:  # a full disk, a folder gone read-only, a race
        kept = _keep_safe(result.bundle, output, args.half)
        raise InputError(
            f"could not write {output} ({error}); the trained model was kept at {kept}"
            if kept
            else f"could not write {output} ({error}), nor a copy elsewhere: the model is lost"
        ) from error
    print(f"saved {output}: {len(samples)} planes, {len(result.history)} steps ({result.reason})")
    if result.comparison is not None:
        start = base.name if base.path else "the untrained start"
        print(result.comparison.describe(start, output.stem))
    if result.retention is not None:
        print(result.retention.describe())
    return 0


MAX_CLASSES = 256  # semantic labels are class indices, not object ids


def _label_image(path: str, mode: str) -> Any:
    """A label image read for ``evaluate``: whole, non-negative numbers (whole-valued floats
    are accepted as such), and for semantic labels class indices below MAX_CLASSES."""
    import numpy as np

    from napari_unet.core.errors import InputError
    from napari_unet.core.io import read_image

    data = np.squeeze(np.asarray(read_image(path).data))
    if data.dtype.kind == "f":
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise InputError(
                f"{path} holds fractional or non-finite values ({data.dtype}): labels must be "
                "whole numbers (object ids or class indices), e.g. a uint16 TIFF"
            )
        data = data.astype(np.int64)
    elif data.dtype.kind not in "biu":
        raise InputError(f"{path}: labels of type {data.dtype} cannot be scored")
    if data.size and data.min() < 0:
        raise InputError(f"{path} holds negative labels; 0 is background, objects are 1, 2, ...")
    if mode == "semantic" and data.size and int(data.max()) >= MAX_CLASSES:
        raise InputError(
            f"{path} holds the value {int(data.max())}: semantic labels are class indices "
            f"(0-{MAX_CLASSES - 1}); use --mode instances for object ids"
        )
    return data


def run_evaluate(args: argparse.Namespace) -> int:
    """``napari-unet evaluate``."""

    from napari_unet.core.errors import InputError
    from napari_unet.core.metrics import class_iou, instance_scores, pixel_error

    prediction = _label_image(args.prediction, args.mode)
    truth = _label_image(args.truth, args.mode)
    if prediction.shape != truth.shape:
        raise InputError(
            f"prediction shape {prediction.shape} differs from truth shape {truth.shape}"
        )
    if args.mode == "instances":
        scores = instance_scores(prediction, truth)
        report = {
            "ap@0.5": scores.at(0.5),
            "ap@0.75": scores.at(0.75),
            "ap@0.5:0.95": scores.mean_ap,
            "precision@0.5": scores.precision(0.5),
            "recall@0.5": scores.recall(0.5),
            "n_true": scores.n_true,
            "n_pred": scores.n_pred,
        }
    else:
        n = int(max(prediction.max(), truth.max())) + 1
        iou = class_iou(prediction, truth, n)
        report = {
            "pixel_error": pixel_error(prediction, truth),
            **{f"iou_class_{k}": float(v) for k, v in enumerate(iou)},
        }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>14}  {value:.4f}" if isinstance(value, float) else f"{key:>14}  {value}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    """``napari-unet models``."""
    from napari_unet.core.registry import scan_models

    entries, problems = scan_models()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": e.name,
                        "version": e.version,
                        "mode": e.mode,
                        "class_names": list(e.class_names),
                        "bundled": e.bundled,
                        "path": str(e.path),
                        "problem": None,
                    }
                    for e in entries
                ]
                + [{"path": str(path), "problem": problem} for path, problem in problems]
            )
        )
        return 0
    if not entries:
        print("no models found")
    else:
        print(f"{'name':<24} {'version':>7}  {'mode':<10} {'classes':<34} path")
    for e in entries:
        print(f"{e.name:<24} {e.version:>7}  {e.mode:<10} {','.join(e.class_names):<34} {e.path}")
    for path, problem in problems:
        print(f"not usable: {path}: {problem}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """``napari-unet info``."""
    from napari_unet.core.io import read_image

    stack = read_image(args.file, axes=args.axes, series=args.series)
    print(f"file   {stack.path}")
    if stack.series_count > 1:
        print(f"series {stack.series} of 0-{stack.series_count - 1} (choose with --series)")
    print(f"shape  {tuple(stack.data.shape)}")
    print(f"dtype  {stack.data.dtype}")
    print(f"axes   {stack.axes}")
    scale = (
        ", ".join(f"{a}={v:g} {stack.units.get(a, '')}".rstrip() for a, v in stack.scale.items())
        or "unknown"
    )
    print(f"scale  {scale}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``napari-unet export``."""
    from napari_unet.core.bioimageio_export import ExportStep, iter_export
    from napari_unet.core.bioimageio_import import is_foreign_package
    from napari_unet.core.errors import InputError
    from napari_unet.core.generators import run_to_end
    from napari_unet.core.io import read_image
    from napari_unet.core.registry import load_bundle, resolve_model

    if is_foreign_package(model := resolve_model(args.model)):
        raise InputError(
            f"{model} is a bioimage.io package from other software, not a napari-unet model: "
            "it cannot be exported (share the package itself)"
        )
    if args.pixel_size is not None and not args.pixel_size > 0:
        raise InputError(f"--pixel-size must be positive, got {args.pixel_size}")
    if args.share_test_image and not args.test_image:
        raise InputError("--share-test-image applies to --test-image, which is missing")
    test_image = None
    if args.test_image:
        if not args.share_test_image:
            raise InputError(
                f"a 256 x 256 patch of {args.test_image} would be shipped in the package: add "
                "--share-test-image to agree, or leave --test-image out"
            )
        test_image = read_image(args.test_image)
    bundle = load_bundle(args.model)

    def show(step: ExportStep) -> None:
        print(f"[{step.done}/{step.total}] {step.stage}", file=sys.stderr)

    path = run_to_end(
        iter_export(
            bundle,
            args.output,
            authors=args.author,
            license_id=args.license,
            test_image=test_image,
            share_test_image=args.share_test_image,
            channel=args.channel,
            pixel_size_um=args.pixel_size,
            parent_id=args.parent_id,
            overwrite=args.overwrite,
        ),
        show,
    )
    print(f"{bundle.name} -> {path} (bioimage.io package; check it with: bioimageio test {path})")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """``napari-unet demo``: napari with a sample stack, the widgets and the bundled model.

    The terminal says what is opened, with which model on which device, how long the
    segmentation took and what to do next; the end of the segmentation is also a napari
    notification. Returns when the window is closed.
    """
    import napari

    from napari_unet.gui.demo import open_demo

    def say(text: str) -> None:
        print(f"napari-unet demo: {text}", flush=True)

    say("starting napari (the first start can take a while) ...")
    viewer = napari.Viewer(title="napari-unet demo")
    widget = open_demo(viewer, report=say)  # the segmentation has started
    widget.segment.segmented.connect(_segmentation_timer(say))
    napari.run()
    say("napari closed")
    return 0


def _segmentation_timer(say: Callable[[str], None]) -> Callable[[Any], None]:
    """A slot for the demo's ``segmented`` signal that says, in the terminal and as a napari
    notification, how long the segmentation took since the slot was made."""
    import time

    from napari.utils.notifications import show_info

    from napari_unet.gui.demo import NEXT_STEPS

    started = time.perf_counter()

    def segmented(layer: Any) -> None:
        took = f"the segmentation took {time.perf_counter() - started:.1f} s"
        say(took)
        show_info(f"napari-unet demo: {took}. {NEXT_STEPS.format(layer=layer.name)}")

    return segmented


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

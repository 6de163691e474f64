import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.cli import EXIT_BUG, EXIT_USER, main
from napari_unet.core.bundle import read_bundle_config, save_bundle
from napari_unet.core.devices import resolve_compute
from napari_unet.core.diameter import labels_diameter
from napari_unet.core.io import read_image
from tests.conftest import tiny_bundle
from tests.synthetic import disks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def model(tmp_path):
    return str(save_bundle(tiny_bundle(), tmp_path / "tiny.safetensors"))


def test_predict_writes_labels_with_scale(tmp_path, model, capsys):
    image, _ = disks((80, 90))
    stack = np.stack([image, image])
    tifffile.imwrite(
        tmp_path / "cells.tif",
        stack,
        imagej=True,
        resolution=(4.0, 4.0),
        metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"},
    )
    assert (
        main(
            [
                "predict",
                str(tmp_path / "cells.tif"),
                "--output",
                str(tmp_path / "out"),
                "--model",
                model,
                "--tile-size",
                "64",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    written = read_image(tmp_path / "out" / "cells_labels.tif")
    assert written.data.shape == (2, 80, 90) and written.axes == "ZYX"
    assert written.scale["Z"] == pytest.approx(2.0) and written.scale["X"] == pytest.approx(0.25)
    out = capsys.readouterr().out
    assert "cells_labels.tif" in out
    assert "14 px" in out.splitlines()[-1]  # the object size used is said (an untrained model
    # finds nothing to measure: "too few objects to estimate their size ... (14 px)")
    # existing output without --overwrite: an error before any work
    assert (
        main(
            ["predict", str(tmp_path / "cells.tif"), "-o", str(tmp_path / "out"), "--model", model]
        )
        == EXIT_USER
    )
    assert "--overwrite" in capsys.readouterr().err


def test_predict_refuses_duplicate_names(tmp_path, model, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "x.tif", np.zeros((16, 16), np.uint8))
    code = main(
        [
            "predict",
            str(tmp_path / "a" / "x.tif"),
            str(tmp_path / "b" / "x.tif"),
            "-o",
            str(tmp_path / "o"),
            "--model",
            model,
        ]
    )
    assert code == EXIT_USER and "two inputs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_train_evaluate_models_info(tmp_path, models_dir, capsys):
    paths = []
    for i in range(3):
        image, labels = disks((96, 96), seed=i)
        tifffile.imwrite(tmp_path / f"im{i}.tif", image)
        tifffile.imwrite(tmp_path / f"lab{i}.tif", labels)
        paths += [
            "--image",
            str(tmp_path / f"im{i}.tif"),
            "--labels",
            str(tmp_path / f"lab{i}.tif"),
        ]
    out = models_dir / "disks.safetensors"
    args = [
        "train",
        *paths,
        "--from-scratch",
        "--depth",
        "2",
        "--base-channels",
        "8",
        "--steps",
        "30",
        "--patch-size",
        "64",
        "--device",
        "cpu",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    assert "AP@0.5 the untrained start 0.00 -> disks" in capsys.readouterr().out
    assert main(args) == EXIT_USER  # exists
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert any(m["name"] == "disks" and m["mode"] == "instances" for m in listed)
    assert (
        main(
            [
                "train",
                *paths[:4],
                "--init",
                "disks",
                "--steps",
                "3",
                "--patch-size",
                "64",
                "--device",
                "cpu",
                "-o",
                str(models_dir / "disks-ft1.safetensors"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--prediction",
                str(tmp_path / "lab0.tif"),
                "--truth",
                str(tmp_path / "lab0.tif"),
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["ap@0.5"] == 1.0
    assert main(["info", str(tmp_path / "im0.tif")]) == 0
    assert "axes   YX" in capsys.readouterr().out


def test_train_argument_errors(tmp_path, capsys):
    assert main(["train", "--from-scratch", "-o", str(tmp_path / "m.safetensors")]) == EXIT_USER
    assert "nothing to train on" in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "im.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((16, 16), np.uint8))
    assert (
        main(
            [
                "train",
                "--image",
                str(tmp_path / "im.tif"),
                "--labels",
                str(tmp_path / "lab.tif"),
                "--from-scratch",
                "-o",
                str(tmp_path / "m.safetensors"),
            ]
        )
        == EXIT_USER
    )
    assert "does not match" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--labels", "x.tif", "-o", "m.safetensors"])


def test_errors_are_one_line_and_nonzero(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all" * 10)
    run = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", "info", str(bad)], capture_output=True, text=True
    )
    assert run.returncode == EXIT_USER
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1
    assert "not a readable TIFF" in run.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_unet.cli",
            "predict",
            str(bad),
            "-o",
            str(tmp_path),
            "--model",
            "no-such-model",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == EXIT_USER and "no model named" in run.stderr


def test_usage_errors_share_the_mistake_status_and_bugs_have_their_own(
    tmp_path, capsys, monkeypatch
):
    with pytest.raises(SystemExit) as usage:
        main(["predict", "--no-such-flag"])
    assert usage.value.code == EXIT_USER
    capsys.readouterr()

    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("napari_unet.cli.run_info", broken)
    assert main(["info", str(tmp_path)]) == EXIT_BUG != EXIT_USER
    [line] = capsys.readouterr().err.splitlines()
    assert "this is a bug" in line and "ZeroDivisionError: boom" in line


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "dsb2018_train").is_dir(), reason="needs ../shared/data")
def test_dsb_round_trip_from_scratch(tmp_path):
    """Train from scratch on a few real DSB images with the CLI, predict others, score them."""
    import csv

    with open(DATA / "dsb2018_train" / "image_index.tsv") as handle:
        rows = [
            r
            for r in csv.DictReader(handle, delimiter="\t")
            if r["gray_or_color"] == "gray" and r["height"] == "256" and r["width"] == "256"
        ]
    rows = sorted(rows, key=lambda r: r["id"])
    train, test = rows[:10], rows[10:16]
    args = ["train"]
    for r in train:
        grey = read_image(DATA / "dsb2018_train" / "images" / f"{r['id']}.png").data[..., 0]
        tifffile.imwrite(tmp_path / f"{r['id']}.tif", grey)
        args += [
            "--image",
            str(tmp_path / f"{r['id']}.tif"),
            "--labels",
            str(DATA / "dsb2018_train" / "labels" / f"{r['id']}.tif"),
        ]
    model = tmp_path / "dsb.safetensors"
    args += [
        "--from-scratch",
        "--depth",
        "3",
        "--base-channels",
        "8",
        "--steps",
        "200",
        "--learning-rate",
        "5e-3",
        "--patch-size",
        "128",
        "--device",
        "cpu",
        "-o",
        str(model),
    ]
    assert main(args) == 0
    from napari_unet.core.inference import PredictOptions, predict
    from napari_unet.core.metrics import instance_scores
    from napari_unet.core.registry import load_bundle

    bundle = load_bundle(model)
    aps = []
    for r in test:
        grey = read_image(DATA / "dsb2018_train" / "images" / f"{r['id']}.png").data[..., 0]
        truth = read_image(DATA / "dsb2018_train" / "labels" / f"{r['id']}.tif").data
        aps.append(
            instance_scores(predict(grey, bundle, PredictOptions(device="cpu")).labels, truth).at(
                0.5
            )
        )
    print(f"AP@0.5 on {len(aps)} held-out DSB images after 200 steps: {np.mean(aps):.3f}")
    assert np.mean(aps) >= 0.4


def test_an_output_is_never_one_of_the_inputs(tmp_path, models_dir, capsys):
    image, labels = disks((64, 64))
    a, b = tmp_path / "a.tif", tmp_path / "a_labels.tif"
    tifffile.imwrite(a, image.astype(np.float32))
    tifffile.imwrite(b, labels.astype(np.uint16))
    before = {p: p.read_bytes() for p in (a, b)}
    # predict writes a_labels.tif for a.tif: here that is the second input
    assert main(["predict", str(a), str(b), "-o", str(tmp_path), "--overwrite"]) == EXIT_USER
    assert "is one of the inputs" in capsys.readouterr().err
    link = tmp_path / "out"
    link.mkdir()
    (link / "a_labels.tif").symlink_to(b)  # through a symlink too
    assert main(["predict", str(a), str(b), "-o", str(link), "--overwrite"]) == EXIT_USER
    model = save_bundle(tiny_bundle(), tmp_path / "m.safetensors")
    before[model] = model.read_bytes()
    args = ["train", "--init", str(model), "--image", str(a), "--labels", str(b)]
    assert main([*args, "-o", str(model), "--overwrite", "--steps", "1"]) == EXIT_USER
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("case", ["folder", "parent is a file", "read-only folder"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, case, monkeypatch):
    from napari_unet.core.atomic import check_output
    from napari_unet.core.errors import InputError

    if case == "folder":
        target, match = tmp_path, "is a folder"
    elif case == "parent is a file":
        (tmp_path / "f").write_text("")
        target, match = tmp_path / "f" / "sub" / "m.safetensors", "is a file, not a folder"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        if os.geteuid() == 0:  # root may write anywhere: make access() answer as for a user
            monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "ro")
        target, match = tmp_path / "ro" / "m.safetensors", "read-only"
    with pytest.raises(InputError, match=match):
        check_output(target, overwrite=True)


def _run_measured(arguments):
    """Run ``napari-unet ARGUMENTS`` in a child; return it and the child's peak RSS in KiB
    (measured by an intermediate process, so no other child of the test run counts)."""
    probe = (
        "import resource, subprocess, sys; "
        "run = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(run.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(run.returncode)"
    )
    command = [sys.executable, "-c", probe, sys.executable, "-m", "napari_unet.cli", *arguments]
    run = subprocess.run(command, capture_output=True, text=True)
    return run, int(run.stdout.strip().splitlines()[-1])


def test_a_request_that_cannot_fit_in_memory_is_refused_up_front(tmp_path):
    # 10 GB of pixels declared, 8 kB on disk (sparse): the labels alone would need 40 GB
    huge = tmp_path / "huge.tif"
    tifffile.imwrite(huge, shape=(100_000, 100_000), dtype=np.uint8)
    run, peak_kib = _run_measured(["predict", str(huge), "-o", str(tmp_path / "o")])
    assert run.returncode == EXIT_USER, run.stderr
    [line] = [text for text in run.stderr.splitlines() if text.startswith("napari-unet")]
    assert "needs about" in line and "GiB of memory" in line and "crop it" in line
    assert not (tmp_path / "o").exists()
    assert peak_kib < 3 * 2**20  # torch's import, not the image: well under 3 GiB


def test_memory_estimate_follows_what_is_available(monkeypatch):
    from napari_unet.core import resources
    from napari_unet.core.errors import InputError
    from napari_unet.core.inference import predict
    from napari_unet.core.registry import load_bundle

    image = np.zeros((256, 256), np.uint8)
    monkeypatch.setattr(resources, "available_memory", lambda: 50 * 2**20)
    with pytest.raises(InputError, match="but 50.0 MiB is available"):
        predict(image, load_bundle("nuclei"))


def test_a_model_that_cannot_be_saved_is_kept_elsewhere(tmp_path, models_dir, monkeypatch, capsys):
    import errno

    from napari_unet.core import bundle as bundle_module

    image, labels = disks((64, 64))
    tifffile.imwrite(tmp_path / "a.tif", image.astype(np.float32))
    tifffile.imwrite(tmp_path / "b.tif", labels.astype(np.uint16))
    model = save_bundle(tiny_bundle(), tmp_path / "base.safetensors")
    output = tmp_path / "out" / "m.safetensors"
    real_save = bundle_module.save_bundle

    def disk_full_for_output(bundle, path, **kwargs):
        if Path(path) == output:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(bundle, path, **kwargs)

    monkeypatch.setattr(bundle_module, "save_bundle", disk_full_for_output)
    arguments = ["train", "--init", str(model), "--image", str(tmp_path / "a.tif")]
    arguments += ["--labels", str(tmp_path / "b.tif"), "-o", str(output), "--steps", "2"]
    arguments += ["--patch-size", "32", "--val-fraction", "0", "--device", "cpu"]
    assert main(arguments) == EXIT_USER
    [line] = [
        text for text in capsys.readouterr().err.splitlines() if text.startswith("napari-unet")
    ]
    assert "No space left on device" in line and "kept at" in line
    [kept] = models_dir.glob("m-kept-*.safetensors")
    assert str(kept) in line and not output.exists()


def test_a_full_disk_is_an_environment_fault_not_a_bug(tmp_path, monkeypatch, capsys):
    import errno

    image, _ = disks((64, 64))
    tifffile.imwrite(tmp_path / "a.tif", image.astype(np.float32))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x"))

    monkeypatch.setattr("napari_unet.core.io.write_labels", full)
    assert main(["predict", str(tmp_path / "a.tif"), "-o", str(tmp_path / "out")]) == EXIT_USER
    [line] = [t for t in capsys.readouterr().err.splitlines() if t.startswith("napari-unet")]
    assert "No space left on device" in line and "this is a bug" not in line
    assert not list((tmp_path / "out").glob("*.tif"))


@pytest.mark.parametrize(
    ("values", "mode", "match"),
    [
        (np.array([[0.0, 1.5], [2.0, 0.0]], np.float32), "instances", "fractional"),
        (np.array([[0.0, np.nan], [2.0, 0.0]], np.float32), "instances", "non-finite"),
        (np.array([[0, -1], [2, 0]], np.int32), "instances", "negative"),
        (np.array([[0, 70000], [2, 0]], np.int32), "semantic", "class indices"),
    ],
)
def test_evaluate_refuses_labels_that_cannot_be_scored(tmp_path, capsys, values, mode, match):
    tifffile.imwrite(tmp_path / "p.tif", values)
    tifffile.imwrite(tmp_path / "t.tif", np.array([[0, 1], [2, 0]], np.uint16))
    args = ["evaluate", "--prediction", str(tmp_path / "p.tif"), "--truth", str(tmp_path / "t.tif")]
    assert main([*args, "--mode", mode]) == EXIT_USER
    assert match in capsys.readouterr().err


def test_evaluate_scores_huge_ids_in_little_memory(tmp_path, capsys):
    import resource

    truth = np.zeros((64, 64), np.int32)
    truth[4:20, 4:20] = 2**31 - 5
    truth[30:50, 30:50] = 7
    prediction = truth.copy()
    prediction[30:50, 30:50] = 2**31 - 9
    tifffile.imwrite(tmp_path / "p.tif", prediction)
    tifffile.imwrite(tmp_path / "t.tif", truth)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    args = ["evaluate", "--prediction", str(tmp_path / "p.tif"), "--truth", str(tmp_path / "t.tif")]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ap@0.5"] == 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (["--from-scratch", "--mode", "semantic"], "needs at least two class names"),
        (["--from-scratch", "--class-names", "a,b"], "names the classes of a new semantic"),
        (["--class-names", "a,b"], "names the classes of a new semantic"),
        (["--object-diameter", "20"], "a fine-tuned model keeps its base's"),
        (
            ["--from-scratch", "--mode", "semantic", "--class-names", "a,b"]
            + ["--object-diameter", "20"],
            "working size of a new instance model",
        ),
        (["--from-scratch", "--object-diameter", "0"], "between 1 and 1000 pixels, got 0"),
    ],
)
def test_train_mistakes_about_classes_are_the_users_not_bugs(tmp_path, capsys, arguments, match):
    image, labels = disks((64, 64))
    tifffile.imwrite(tmp_path / "a.tif", image.astype(np.float32))
    tifffile.imwrite(tmp_path / "l.tif", (labels > 0).astype(np.uint8))
    pair = ["--image", str(tmp_path / "a.tif"), "--labels", str(tmp_path / "l.tif")]
    output = ["-o", str(tmp_path / "m.safetensors"), "--steps", "1"]
    assert main(["train", *pair, *arguments, *output]) == EXIT_USER
    assert match in capsys.readouterr().err


def test_a_new_model_works_at_the_object_diameter_given(tmp_path):
    image, labels = disks((64, 64))
    tifffile.imwrite(tmp_path / "a.tif", image.astype(np.float32))
    tifffile.imwrite(tmp_path / "l.tif", labels)
    out = tmp_path / "m.safetensors"
    pair = ["--image", str(tmp_path / "a.tif"), "--labels", str(tmp_path / "l.tif")]
    small = ["--depth", "2", "--base-channels", "4", "--patch-size", "32", "--steps", "1"]
    args = ["train", *pair, "--from-scratch", *small, "--device", "cpu", "-o", str(out)]
    assert main([*args, "--object-diameter", "12.5"]) == 0
    assert read_bundle_config(out)["object_diameter"] == 12.5
    assert main([*args, "--overwrite"]) == 0  # without it: the labels' own median
    assert read_bundle_config(out)["object_diameter"] == pytest.approx(
        labels_diameter([labels]).diameter
    )


def test_a_folder_given_as_an_image_says_so(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == EXIT_USER
    assert "is a folder; give an image file inside it" in capsys.readouterr().err


def test_a_compressed_bomb_is_refused_in_bounded_memory(tmp_path):
    """A small zlib TIFF that declares 1.7 GB of pixels: never decoded whole, refused with the
    estimate, the child's peak RSS bounded."""
    tile = np.zeros((1024, 1024), np.uint16)
    bomb = tmp_path / "bomb.tif"
    tifffile.imwrite(
        bomb,
        (tile for _ in range(29 * 29)),
        shape=(29 * 1024, 29 * 1024),
        dtype=np.uint16,
        tile=(1024, 1024),
        compression="zlib",
    )
    assert bomb.stat().st_size < 20 * 2**20
    run, peak_kib = _run_measured(["predict", str(bomb), "-o", str(tmp_path / "o")])
    assert run.returncode == EXIT_USER, run.stderr
    [line] = [text for text in run.stderr.splitlines() if text.startswith("napari-unet")]
    assert "needs about" in line and "of memory" in line
    assert peak_kib < 3 * 2**20


def test_z_stacks_are_linked_by_default_and_per_plane_on_request(tmp_path):
    image, _ = disks((96, 96), n=6, seed=2)
    stack = np.stack([image] * 3).astype(np.float32)  # the same nuclei in 3 planes
    tifffile.imwrite(tmp_path / "z.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    assert main(["predict", str(tmp_path / "z.tif"), "-o", str(tmp_path / "linked")]) == 0
    arguments = ["predict", str(tmp_path / "z.tif"), "-o", str(tmp_path / "planes")]
    assert main([*arguments, "--per-plane"]) == 0
    linked = tifffile.imread(tmp_path / "linked" / "z_labels.tif")
    planes = tifffile.imread(tmp_path / "planes" / "z_labels.tif")
    n = len(np.unique(linked)) - 1
    assert n >= 3 and len(np.unique(planes)) - 1 == 3 * n
    assert np.array_equal(np.unique(linked[0]), np.unique(linked[2]))  # one id through Z


def test_predict_follows_a_given_diameter_and_tta(tmp_path, model, capsys):
    image, _ = disks((120, 120), n=8, radius=(12, 14))
    tifffile.imwrite(tmp_path / "big.tif", image)
    args = ["predict", str(tmp_path / "big.tif"), "--model", model, "--device", "cpu"]
    assert main([*args, "-o", str(tmp_path / "a"), "--diameter", "28", "--tta"]) == 0
    out = capsys.readouterr().out
    assert (
        "objects about 28 px across (as given; the model expects 14 px): image scaled 0.50x" in out
    )
    assert read_image(tmp_path / "a" / "big_labels.tif").data.shape == (120, 120)


@pytest.mark.gui
def test_demo_says_what_it_opens_with_what_how_long_it_took_and_what_next(
    qtbot, make_napari_viewer, plugin_dirs, monkeypatch, capsys
):
    """``napari-unet demo`` as run from a terminal: the window is the test's viewer and the
    event loop runs until the segmentation has been reported; the real demo does the rest."""
    napari = pytest.importorskip("napari")
    from napari.utils import notifications

    printed: list[str] = []
    shown: list[str] = []

    def terminal() -> str:
        printed.append(capsys.readouterr().out)
        return "".join(printed)

    def event_loop() -> None:
        qtbot.waitUntil(lambda: "segmentation took" in terminal(), timeout=120_000)

    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))
    monkeypatch.setattr(napari, "run", event_loop)
    monkeypatch.setattr(notifications, "show_info", shown.append)
    assert main(["demo"]) == 0
    lines = [line.removeprefix("napari-unet demo: ") for line in terminal().splitlines()]
    assert lines[0].startswith("starting napari")
    assert lines[1].startswith("loaded the sample image 'nuclei' (")  # what it opens
    device = re.escape(resolve_compute("auto").label)
    assert re.fullmatch(
        rf"segmenting it with the bundled model 'nuclei' on {device} \.\.\.", lines[2]
    )
    assert re.match(r"found \d+ nuclei in 'nuclei labels'\. Next: fix a few mistakes", lines[3])
    assert "brush, eraser" in lines[3] and "press Fine-tune" in lines[3]
    seconds = float(re.fullmatch(r"the segmentation took (\d+\.\d) s", lines[4]).group(1))
    assert 0 < seconds < 120
    assert lines[5:] == ["napari closed"]
    (notice,) = shown  # the same, in the window
    assert notice.startswith(f"napari-unet demo: {lines[4]}. Next: fix a few mistakes")

"""Every setting's valid range is checked in one place, shared by the CLI and the GUI."""

import math

import pytest

from napari_unet.cli import EXIT_USER, main
from napari_unet.core.errors import InputError
from napari_unet.core.options import PredictOptions, TrainSettings


def test_the_defaults_are_valid():
    PredictOptions().check()
    TrainSettings().check()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"overlap": 0.99}, r"overlap must be in \[0, 0.5\]"),
        ({"overlap": -0.1}, "overlap"),
        ({"tile_size": -256}, "tile size"),
        ({"tile_size": 10**6}, "tile size"),
        ({"threshold": math.nan}, "threshold"),
        ({"threshold": 0.0}, r"threshold must be in \(0, 1\)"),
        ({"threshold": 1.0}, r"threshold must be in \(0, 1\)"),
        ({"diameter": 0.0}, "diameter"),
        ({"diameter": 1e9}, "diameter"),
        ({"batch_size": 0}, "batch size"),
        ({"min_size": -1}, "minimum object size"),
        ({"channel": -1}, "channel"),
        ({"mode": "panoptic"}, "mode 'panoptic' is not valid"),
        ({"device": "tpu"}, "device 'tpu' is not valid"),
        ({"tile_size": 256.5}, "whole number"),
        ({"rgb": "hsv"}, r"colour rule \(rgb\) 'hsv' is not valid; choose one of auto, mean"),
        ({"rgb": "channel:3"}, r"channel:0, channel:1, channel:2$"),
    ],
)
def test_impossible_prediction_settings_are_refused(change, match):
    with pytest.raises(InputError, match=match):
        PredictOptions(**change).check()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": -5}, "steps"),
        ({"val_every": 0}, "validation interval"),
        ({"val_fraction": 1.0}, "validation fraction"),
        ({"learning_rate": math.inf}, "learning rate"),
        ({"learning_rate": 0.0}, "learning rate"),
        ({"patch_size": 100_000}, "patch size"),
        ({"batch_size": 0}, "batch size"),
        ({"optimizer": "lion"}, "optimizer 'lion' is not valid"),
        ({"replay_fraction": 1.0}, "replay fraction"),
        ({"finetuned_share": 0.0}, "fine-tuned share"),
        ({"finetuned_share": 1.5}, "fine-tuned share"),
        ({"trained_levels": -1}, "trained levels"),
        ({"trained_levels": 1.5}, "trained levels"),
        ({"context_weight": -1.0}, "context weight"),
        ({"precision": "int4"}, "precision"),
    ],
)
def test_impossible_training_settings_are_refused(change, match):
    with pytest.raises(InputError, match=match):
        TrainSettings(**change).check()


TRAIN = ["train", "--image", "a.tif", "--labels", "b.tif", "-o", "m.safetensors"]


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (["predict", "missing.tif", "-o", "out", "--overlap", "0.99"], "overlap"),
        (["predict", "missing.tif", "-o", "out", "--threshold", "nan"], "threshold"),
        (["predict", "missing.tif", "-o", "out", "--tile-size", "-5"], "tile size"),
        (["predict", "missing.tif", "-o", "out", "--rgb", "red"], "colour rule (rgb)"),
        ([*TRAIN, "--steps", "0"], "steps"),
        ([*TRAIN, "--val-every", "0"], "validation interval"),
        ([*TRAIN, "--patch-size", "100000"], "patch size"),
    ],
)
def test_the_cli_refuses_them_before_reading_anything(
    tmp_path, monkeypatch, capsys, arguments, match
):
    monkeypatch.chdir(tmp_path)  # the files named do not exist: the settings fail first
    assert main(arguments) == EXIT_USER
    [line] = capsys.readouterr().err.strip().splitlines()
    assert match in line and "error:" in line
    assert list(tmp_path.iterdir()) == []


def test_the_threshold_is_a_number_or_auto(capsys):
    from napari_unet.cli import build_parser

    def parsed(value: str) -> float | None:
        return (
            build_parser()
            .parse_args(["predict", "a.tif", "-o", "out", "--threshold", value])
            .threshold
        )

    assert parsed("auto") is None and parsed("AUTO") is None and parsed("0.6") == 0.6
    with pytest.raises(SystemExit) as exit_:
        parsed("high")
    assert exit_.value.code == EXIT_USER
    assert "not a number or 'auto': 'high'" in capsys.readouterr().err


def test_a_channel_that_a_grey_image_lacks_is_refused_not_ignored():
    import numpy as np

    from napari_unet.core.preprocess import to_model_channels

    spec = {"channels": 1, "rgb": "luminance"}
    assert to_model_channels(np.ones((4, 4)), "YX", spec, 0).shape == (1, 4, 4)
    with pytest.raises(InputError, match="single channel"):
        to_model_channels(np.ones((4, 4)), "YX", spec, 2)

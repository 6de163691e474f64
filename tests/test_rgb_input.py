"""How a colour image feeds a one-channel model, and what the user is told about it."""

import numpy as np
import pytest

from napari_unet.core.bundle import DEFAULT_INPUT, new_config
from napari_unet.core.errors import InputError
from napari_unet.core.preprocess import (
    DEFAULT_RGB_RULE,
    check_channels,
    choose_colour_input,
    colour_input_of,
    describe_colour_input,
    normalize,
    prepare_plane,
    to_model_channels,
)
from tests.synthetic import disks


def _disks(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A float image (1 inside disks) and its mask."""
    _, labels = disks((128, 128), n=8, radius=(6, 9), seed=seed)
    return (labels > 0).astype(np.float32), labels > 0


def _noise(seed: int, scale: float) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, (128, 128)).astype(np.float32)


def fluorescence_in_blue() -> tuple[np.ndarray, np.ndarray]:
    """DAPI-like nuclei in blue on black, faint autofluorescence in green, noise in red."""
    objects, mask = _disks()
    rgb = np.stack(
        [
            10 + _noise(1, 3),
            10 + 15 * _noise(2, 1).clip(0) + 20 * objects,
            5 + 180 * objects + _noise(3, 5),
        ],
        axis=-1,
    )
    return np.clip(rgb, 0, 255).astype(np.uint8), mask


def histology() -> tuple[np.ndarray, np.ndarray]:
    """Dark stained nuclei (absorbing red and green) on a bright, faintly pink background."""
    objects, mask = _disks(seed=4)
    rgb = np.stack(
        [
            225 - 60 * objects + _noise(5, 4),
            200 - 150 * objects + _noise(6, 4),
            230 - 40 * objects + _noise(7, 4),
        ],
        axis=-1,
    )
    return np.clip(rgb, 0, 255).astype(np.uint8), mask


def _model_input(rgb: np.ndarray, spec: dict | None = None) -> np.ndarray:
    config = new_config(architecture={"depth": 2, "base_channels": 8}, input_spec=spec)
    return prepare_plane(rgb, "YXS", config)[0]


def test_auto_is_the_default_for_colour():
    assert DEFAULT_RGB_RULE == "auto"
    assert DEFAULT_INPUT["rgb"] == "auto"
    assert new_config(architecture={"depth": 2})["input"]["rgb"] == "auto"


def test_auto_uses_the_channel_with_the_nuclei_of_a_fluorescence_image():
    rgb, mask = fluorescence_in_blue()
    choice = choose_colour_input(rgb)
    assert (choice.channel, choice.invert, choice.grey) == (2, False, False)
    x = _model_input(rgb)
    assert x[mask].mean() > 0.9 and x[~mask].mean() < 0.1
    assert describe_colour_input(choice) == (
        "colour image: used channel 2 (blue, the one with the most contrast)"
    )


def test_auto_inverts_dark_objects_on_a_bright_background():
    rgb, mask = histology()
    choice = choose_colour_input(rgb)
    assert choice.channel == 1 and choice.invert  # green: where the stain absorbs most
    x = _model_input(rgb)
    assert x[mask].mean() > 0.8 and x[~mask].mean() < 0.2  # objects are bright for the model
    assert describe_colour_input(choice) == (
        "colour image: used channel 1 (green, the one with the most contrast), "
        "inverted (dark objects on a bright background)"
    )
    # luminance, the rule before, keeps the objects dark
    assert _model_input(rgb, {"rgb": "luminance"})[mask].mean() < 0.2


def test_crowded_fluorescence_is_not_inverted():
    """More than half of the image is nuclei: the background is still the most common value."""
    y, x = np.mgrid[:128, :128] % 14 - 6.5
    mask = y**2 + x**2 <= 7**2  # touching nuclei on a grid
    assert mask.mean() > 0.7
    rng = np.random.default_rng(0)
    nuclei = np.where(mask, rng.uniform(80, 250, mask.shape), 8 + rng.normal(0, 2, mask.shape))
    rgb = np.stack([nuclei * 0.3, nuclei, nuclei * 0.1], axis=-1).clip(0, 255).astype(np.uint8)
    choice = choose_colour_input(rgb)
    assert choice.channel == 1 and not choice.invert


def test_a_grey_image_stored_as_colour():
    grey, _ = _disks()
    rgba = np.stack([grey * 200] * 3 + [np.full_like(grey, 255)], axis=-1).astype(np.uint8)
    choice = colour_input_of(rgba, "YXS", DEFAULT_INPUT)
    assert choice.grey and not choice.invert
    assert describe_colour_input(choice) == "grey image stored as colour: used its grey"
    np.testing.assert_allclose(
        to_model_channels(rgba, "YXS", DEFAULT_INPUT)[0], rgba[..., 0].astype(np.float32)
    )


@pytest.mark.parametrize(
    "rule, expected, said",
    [
        ("luminance", lambda c: c @ np.float32([0.2126, 0.7152, 0.0722]), "luminance"),
        ("mean", lambda c: c.mean(-1), "mean of red, green and blue"),
        ("max", lambda c: c.max(-1), "brightest of red, green and blue"),
        ("channel:0", lambda c: c[..., 0], "used channel 0 (red, as the model says)"),
    ],
)
def test_explicit_bundle_rules_are_kept(rule, expected, said):
    rgb, _ = histology()
    spec = {"channels": 1, "rgb": rule}
    x = to_model_channels(rgb, "YXS", spec)[0]
    np.testing.assert_allclose(x, expected(rgb.astype(np.float32)), rtol=1e-5)
    choice = colour_input_of(rgb, "YXS", spec)
    assert choice.rule == rule and not choice.invert
    assert said in describe_colour_input(choice)
    norm = {"low": 1.0, "high": 99.8}
    np.testing.assert_allclose(
        normalize(x[None], norm), prepare_plane(rgb, "YXS", {"input": spec, "normalization": norm})
    )


@pytest.mark.parametrize("rule", ["hsv", "channel:3", "channel:x"])
def test_a_bad_rule_is_an_input_error(rule):
    with pytest.raises(InputError, match="rgb rule"):
        check_channels((8, 8, 3), "YXS", {"channels": 1, "rgb": rule}, None)


def test_nothing_to_describe_without_colours_to_combine():
    rgb, _ = histology()
    assert colour_input_of(rgb[..., 0], "YX", DEFAULT_INPUT) is None
    assert colour_input_of(rgb, "YXS", DEFAULT_INPUT, channel=2) is None  # the user's pick
    assert colour_input_of(rgb, "YXS", {"channels": 3, "rgb": "auto"}) is None
    assert colour_input_of(rgb, "YXC", DEFAULT_INPUT) is None  # channels, not colours
    # the colour axis may come first
    first = colour_input_of(np.moveaxis(rgb, -1, 0), "SYX", DEFAULT_INPUT)
    assert first == choose_colour_input(rgb)


def test_check_channels_accepts_auto_before_any_pixel_is_read():
    check_channels((4, 32, 32, 4), "ZYXS", DEFAULT_INPUT, None)


def test_a_choice_made_once_holds_for_every_plane_of_a_stack():
    """``auto`` decides on a plane's pixels: a stack's planes (or a large plane's blocks) can
    share one choice, made on one plane."""
    stack = np.stack([histology()[0], fluorescence_in_blue()[0]])  # ZYXS
    own = [colour_input_of(plane, "YXS", DEFAULT_INPUT) for plane in stack]
    assert own[0] != own[1]
    shared = own[0]
    for plane in stack:
        np.testing.assert_array_equal(
            to_model_channels(plane, "YXS", DEFAULT_INPUT, colour=shared)[0],
            -plane[..., 1].astype(np.float32),
        )
    config = new_config(architecture={"depth": 2})
    np.testing.assert_array_equal(
        prepare_plane(stack[1], "YXS", config, colour=shared),
        normalize(-stack[1][None, ..., 1].astype(np.float32), config["normalization"]),
    )


def _background(batch: np.ndarray) -> np.ndarray:
    """A predictor finding nothing: background everywhere (3 classes)."""
    out = np.zeros((batch.shape[0], 3, *batch.shape[2:]), np.float32)
    out[:, 0] = 1.0
    return out


def _segment(image: np.ndarray, axes: str, **options) -> tuple[list[str], object]:
    """Notices yielded and the Prediction of the engine on ``image`` (tiny model)."""
    from napari_unet.core.inference import iter_predict
    from napari_unet.core.options import PredictOptions
    from tests.conftest import tiny_bundle

    notices: list[str] = []
    generator = iter_predict(
        image,
        tiny_bundle(),
        PredictOptions(tile_size=64, diameter=14.0, device="cpu", **options),
        axes=axes,
        predictor=_background,
    )
    try:
        while True:
            progress = next(generator)
            if progress.notice:
                notices.append(progress.notice)
    except StopIteration as stop:
        return notices, stop.value


def test_the_engine_decides_once_for_a_colour_stack_and_says_which(monkeypatch):
    from napari_unet.core import inference

    stack = np.stack([histology()[0], fluorescence_in_blue()[0]])  # planes that differ
    used = []

    def spy(*args, **kwargs):
        used.append(args[5] if len(args) > 5 else kwargs.get("colour"))
        return prepare_plane(*args, **kwargs)

    monkeypatch.setattr(inference, "prepare_plane", spy)
    notices, result = _segment(stack, "ZYXS")
    first = colour_input_of(stack[0], "YXS", DEFAULT_INPUT)
    assert used == [first, first]  # the first plane's choice, for every plane
    said = describe_colour_input(first)
    assert "inverted" in said
    assert result.stats["colour_input"] == said
    assert notices == []  # said once, with the result (not also as a warning on the way)


def test_the_rgb_option_overrides_the_model_rule():
    rgb, _ = histology()
    notices, result = _segment(rgb, "YXS", rgb="luminance")
    assert result.stats["colour_input"] == "colour image: luminance (0.21 R + 0.72 G + 0.07 B)"
    _, result = _segment(rgb, "YXS", rgb="channel:2")
    assert "used channel 2 (blue, as the model says)" in result.stats["colour_input"]


def test_nothing_is_said_for_a_grey_image_or_a_picked_channel():
    rgb, _ = histology()
    notices, result = _segment(rgb[..., 0], "YX")
    assert notices == [] and result.stats["colour_input"] is None
    _, result = _segment(rgb, "YXS", channel=1)
    assert result.stats["colour_input"] is None


def _cli(tmp_path, *extra: str) -> list:
    import tifffile

    from napari_unet.cli import main
    from napari_unet.core.bundle import save_bundle
    from tests.conftest import tiny_bundle

    tifffile.imwrite(tmp_path / "stained.tif", histology()[0], photometric="rgb")
    model = save_bundle(tiny_bundle(), tmp_path / "tiny.safetensors", overwrite=True)
    args = ["predict", str(tmp_path / "stained.tif"), "--model", str(model), "--device", "cpu"]
    return main([*args, "--tile-size", "64", "--overwrite", "-o", str(tmp_path / "out"), *extra])


def test_the_cli_says_which_colour_input_it_used(tmp_path, capsys):
    assert _cli(tmp_path) == 0
    out, err = capsys.readouterr()
    assert "  colour image: used channel 1 (green, the one with the most contrast), inverted" in out
    assert (out + err).count("colour image:") == 1  # said once, not also on the way
    assert _cli(tmp_path, "--rgb", "luminance") == 0
    out = capsys.readouterr().out
    assert "  colour image: luminance (0.21 R + 0.72 G + 0.07 B)" in out
    assert "channel 1" not in out


def test_a_bad_rgb_on_the_command_line_is_one_line_and_the_mistake_status(tmp_path, capsys):
    from napari_unet.cli import EXIT_USER

    assert _cli(tmp_path, "--rgb", "hue") == EXIT_USER
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("napari-unet predict: error: colour rule (rgb) 'hue' is not valid")
    assert not (tmp_path / "out").exists()


def test_the_bundled_nuclei_model_uses_auto():
    from napari_unet.core.bundle import read_bundle_config
    from napari_unet.core.registry import BUNDLED_DIR

    assert read_bundle_config(BUNDLED_DIR / "nuclei.safetensors")["input"]["rgb"] == "auto"

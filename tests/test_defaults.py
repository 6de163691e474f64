"""One source for every default: core/options.py. ``--help`` and the widgets show its values."""

import re

import pytest

from napari_unet.cli import main
from napari_unet.core.options import (
    DEFAULT_MODE,
    DEFAULT_MODEL,
    LABEL_FORMATS,
    NewModelSettings,
    PredictOptions,
    TrainSettings,
)

PREDICT = PredictOptions()
TRAIN = TrainSettings()
NEW_MODEL = NewModelSettings()

# what each subcommand's --help must show as "(default: X)", option by option
SHOWN = {
    "predict": {
        "--model": DEFAULT_MODEL,
        "--device": PREDICT.device,
        "--tile-size": PREDICT.tile_size,
        "--overlap": PREDICT.overlap,
        "--batch-size": PREDICT.batch_size,
        "--threshold": PREDICT.threshold,
        "--format": LABEL_FORMATS[0],
    },
    "train": {
        "--init": DEFAULT_MODEL,
        "--mode": NEW_MODEL.mode,
        "--depth": NEW_MODEL.depth,
        "--base-channels": NEW_MODEL.base_channels,
        "--steps": TRAIN.steps,
        "--learning-rate": TRAIN.learning_rate,
        "--patch-size": TRAIN.patch_size,
        "--batch-size": TRAIN.batch_size,
        "--val-fraction": TRAIN.val_fraction,
        "--val-every": TRAIN.val_every,
        "--optimizer": TRAIN.optimizer,
        "--seed": TRAIN.seed,
        "--invert-chance": TRAIN.augment.invert,
        "--blur-chance": TRAIN.augment.blur,
        "--device": TRAIN.device,
    },
    "evaluate": {"--mode": DEFAULT_MODE},
}


def _help_by_option(command: str, capsys, monkeypatch) -> dict[str, str]:
    """``napari-unet COMMAND --help``, one text per option (its help lines joined)."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    blocks: dict[str, str] = {}
    option = None
    for line in capsys.readouterr().out.splitlines():
        start = re.match(r"\s{2}(--[\w-]+)", line)
        if start:
            option = start.group(1)
            blocks[option] = ""
        if option is not None and line.startswith("  "):
            blocks[option] += " " + line.strip()
        elif not line.strip():
            option = None
    return blocks


def _as_shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("command", sorted(SHOWN))
def test_help_shows_the_defaults_of_core_options(command, capsys, monkeypatch):
    blocks = _help_by_option(command, capsys, monkeypatch)
    for option, value in SHOWN[command].items():
        shown = re.search(r"\(default: ([^;,)\s]+)", blocks[option])
        assert shown, f"{command} {option} shows no default: {blocks[option]}"
        text = shown.group(1)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        assert (float(text) == value) if number else (text == _as_shown(value)), (
            f"{command} {option} shows {text}, core/options.py says {value}"
        )


def test_help_shows_the_learning_rate_from_scratch(capsys, monkeypatch):
    text = _help_by_option("train", capsys, monkeypatch)["--learning-rate"]
    shown = re.search(r"from scratch: ([^;,)\s]+)", text)
    assert shown and float(shown.group(1)) == NEW_MODEL.learning_rate, text


def test_every_option_with_a_default_shows_it(capsys, monkeypatch):
    """An option added later with a default of its own is held to the same rule."""
    from napari_unet.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for command, parser in commands.items():
        blocks = _help_by_option(command, capsys, monkeypatch)
        for action in parser._actions:
            flags = [f for f in action.option_strings if f.startswith("--")]
            plain = action.default is None or isinstance(action.default, bool)
            if not flags or plain or action.default == "==SUPPRESS==":
                continue
            assert "(default: " in blocks[flags[0]], f"{command} {flags[0]}"
            assert command in SHOWN and flags[0] in SHOWN[command], (
                f"{command} {flags[0]}: add it to SHOWN with its value in core/options.py"
            )


@pytest.fixture
def panels(make_napari_viewer, plugin_dirs):
    """A fresh dock widget (no saved settings): its Segment and Fine-tune panels."""
    pytest.importorskip("napari")
    from napari_unet.gui.main_widget import UnetWidget

    viewer = make_napari_viewer()
    widget = UnetWidget(viewer)
    # docked, so that closing the viewer deletes it: a widget left to the end of the process
    # is destroyed after its job runners are torn down, and its close handler then fails
    viewer.window.add_dock_widget(widget)
    yield widget.segment, widget.finetune
    widget.close_workers()


@pytest.mark.gui
def test_the_widgets_start_from_the_same_defaults(panels):
    """Fresh panels segment and fine-tune with core/options.py's settings: every value the
    panels read from their widgets equals the core default."""
    segment, finetune = panels
    assert segment.tile_spin.value() == PREDICT.tile_size
    assert segment.overlap_spin.value() == pytest.approx(PREDICT.overlap)
    assert segment.link_check.isChecked() is PREDICT.link_z
    assert segment.tta_check.isChecked() is PREDICT.tta
    assert segment.device_combo.currentData() == PREDICT.device
    assert segment.threshold_spin.value() == pytest.approx(PREDICT.threshold)
    # mode, min size, diameter, channel and colour rule are automatic (None) as in the core
    assert segment.options() == PREDICT
    assert finetune.steps_spin.value() == TRAIN.steps
    assert finetune.lr_spin.value() == pytest.approx(TRAIN.learning_rate)
    assert finetune.patch_spin.value() == TRAIN.patch_size
    assert finetune.val_spin.value() == pytest.approx(TRAIN.val_fraction)
    assert finetune.settings_from_widgets() == TRAIN


@pytest.mark.gui
def test_the_segment_panel_starts_with_the_automatic_channel(panels):
    segment, _ = panels
    assert segment.options().channel == PREDICT.channel

"""Settings of a prediction and of a training run, importable without torch.

The CLI's and the GUI's defaults, choices and valid ranges come from here (the CLI's
``--help`` shows them; ``tests/test_defaults.py`` checks that it and the widgets agree with
this module): ``check()`` on either settings class refuses a value that cannot work, with the
range, before any work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from napari_unet.core.augment import AugmentSettings
from napari_unet.core.errors import InputError
from napari_unet.core.preprocess import RGB_RULES

MODES = ("instances", "semantic")
DEFAULT_MODE = MODES[0]
DEFAULT_MODEL = "nuclei"  # the bundled model that predict, train and demo start from
LABEL_FORMATS = ("auto", "tif", "ome-zarr")  # auto: OME-Zarr for Zarr or huge inputs
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BLENDINGS = ("cosine", "none")
# how a colour image becomes a grey model's input: the rules, with channel:k spelled out for
# the red, green and blue samples
RGB_CHOICES = tuple(r for r in RGB_RULES if r != "channel:k") + tuple(
    f"channel:{k}" for k in range(3)
)
OPTIMIZERS = ("adamw", "sgd")


def _in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise InputError unless ``low <= value <= high`` (strict where ``low_open`` or
    ``high_open``)."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise InputError(f"{name} must be {kind}, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        opening, closing = "(" if low_open else "[", ")" if high_open else "]"
        raise InputError(f"{name} must be in {opening}{low:g}, {high:g}{closing}, got {value!r}")


def _one_of(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name} {value!r} is not valid; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class PredictOptions:
    """Settings of a prediction; the defaults suit most microscopy images.

    Attributes
    ----------
    mode : {"instances", "semantic"} or None
        None uses the bundle's mode. A semantic model cannot produce instances.
    tile_size : int
        Largest tile edge in pixels (rounded up to what the network accepts). The default
        1024 with a 0.0625 overlap (a 32-pixel context margin) processes about 1.2x the
        pixels of a 2048 x 2048 image; 512 tiles with the same margin process 1.37x
        (benchmarks/RESULTS.md).
    overlap : float
        Overlap between neighbouring tiles as a fraction of the tile (context margin is half).
    batch_size : int
        Tiles per forward pass.
    threshold : float or None
        Probability level of instance seeds and foreground; None ("auto") keeps the
        foreground at 0.5 and chooses the seeds' level for each plane from how sure the
        network is of what it found (:mod:`napari_unet.core.seed_level`: 0.7 where it is
        sure, 0.5 otherwise). Not the default: it gains on most images, but a version
        fine-tuned on corrections gained nothing from it where its base did, so
        fine-tuning then showed as a loss (benchmarks/RESULTS.md).
    min_size : int or None
        Smallest object kept, in pixels; None derives it from the object diameter.
    link_z : bool
        On an image with a Z axis, give an object one id through Z by linking overlapping
        objects of adjacent planes (the default: a nucleus in a z-stack is one object); False
        segments each plane on its own. T and other axes always stay independent.
    diameter : float or None
        Typical object diameter in the image, in pixels; the image is rescaled so objects
        match the size the model was trained on. None estimates it for each plane from a
        first look at a sample window (:mod:`napari_unet.core.diameter`).
    channel : int or None
        Channel to segment in a multichannel image.
    rgb : str or None
        How a colour (RGB/RGBA) image becomes a grey model's input, overriding the bundle's
        ``input.rgb`` rule: ``auto`` (the colour with the most object/background contrast,
        inverted when the background is bright), ``luminance``, ``mean``, ``max`` or
        ``channel:k`` (k = 0, 1, 2 for red, green, blue); None uses the bundle's rule
        (:func:`napari_unet.core.preprocess.choose_colour_input`).
    blending : {"cosine", "none"}
        How overlapping tiles are combined.
    tta : bool
        Test-time augmentation: average the network's output over the 8 flips and rotations
        of each tile (:mod:`napari_unet.core.tta`); 8x the network's time.
    post_workers : int or None
        Threads turning probabilities into labels while the network predicts the next planes;
        0 post-processes each plane before the next one starts; None chooses from the CPU
        cores and the plane size (:func:`napari_unet.core.label_pipeline.auto_workers`).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    precision : str
        ``auto``, ``fp32``, ``bf16`` or ``fp16``.
    """

    mode: str | None = None
    tile_size: int = 1024
    overlap: float = 0.0625
    batch_size: int = 1
    threshold: float | None = 0.5
    min_size: int | None = None
    link_z: bool = True
    diameter: float | None = None
    channel: int | None = None
    rgb: str | None = None
    blending: str = "cosine"
    tta: bool = False
    post_workers: int | None = None
    device: str = "auto"
    precision: str = "auto"

    def check(self) -> None:
        """Raise InputError naming the valid range of the first value that cannot work.

        The bounds keep a request from asking for hours or all the memory by mistake: at
        most 50% overlap (0.99 would mean thousands of tiles), tiles of 16-8192 px, objects
        of 1-2000 px.
        """
        if self.mode is not None:
            _one_of("mode", self.mode, MODES)
        _in_range("tile size", self.tile_size, 16, 8192, integer=True)
        _in_range("overlap", self.overlap, 0.0, 0.5)
        _in_range("batch size", self.batch_size, 1, 256, integer=True)
        if self.threshold is not None:
            _in_range("threshold", self.threshold, 0.0, 1.0, low_open=True, high_open=True)
        if self.min_size is not None:
            _in_range("minimum object size", self.min_size, 0, 10**8, integer=True)
        if self.diameter is not None:
            _in_range("object diameter", self.diameter, 1.0, 2000.0)
        if self.channel is not None:
            _in_range("channel", self.channel, 0, 4096, integer=True)
        if self.rgb is not None:
            _one_of("colour rule (rgb)", self.rgb, RGB_CHOICES)
        _one_of("blending", self.blending, BLENDINGS)
        if self.post_workers is not None:
            _in_range("post-processing workers", self.post_workers, 0, 256, integer=True)
        _one_of("device", self.device.split(":")[0], DEVICES)
        _one_of("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class TrainSettings:
    """Training schedule and options. The defaults are the GUI's one-click fine-tune.

    ``context_weight`` is the loss weight of the pixels outside a sample's known-mask: there
    the labels are what the base model predicted and the person left as it was. None (the
    default) decides by the base: 0 when it carries replay patches to rehearse, 0.3 when it
    does not (``em-membranes``, models trained by users), where the context is the network's
    only view of the untouched background and without it a network learns to find objects
    everywhere. 0 ignores the context: the known-mask already holds a margin of what was left
    around each edit, the replay set teaches the rest, and on the tuning scenarios of
    ``benchmarks/finetune_gain.py`` (five shifts, two seeds) training on the context at 0.3
    gained less (+0.054 against +0.075 AP@0.5 on the scenarios' other images) and made one
    scenario worse (half of the nuclei dimmed: -0.021 against +0.026), see
    benchmarks/RESULTS.md. ``anchor_weight`` pulls the weights towards the base model's (L2-SP:
    ``anchor_weight * sum((w - w_base) ** 2)``), so a few corrections cannot drag the network
    far from what it knew. ``replay_fraction`` is the share of training patches drawn from the
    base bundle's replay set (patches of its own training data), when it has one: rehearsing
    them keeps the network from forgetting what it did well. ``border_weights`` multiplies
    the loss by the U-Net paper's weight map between touching objects (semantic models: thin
    gaps between two regions of one class, such as cells on either side of a membrane,
    :func:`~napari_unet.core.targets.class_border_weights`); None (the default)
    trains with the loss the base model was trained with (its last training run's setting),
    since fine-tuning a model trained with the map without it lets touching objects merge.
    ``weigh_context`` multiplies the context weight of each untouched object (and of the
    background) by how sure the base model is of it, judged by three flipped predictions of
    the plane (:func:`napari_unet.core.review.certainty_map`): mistakes the person did not get
    to are mostly where the model is unsure, and are then not learnt as if right.
    ``context_outlines`` False leaves the outlines of the untouched objects out of the loss
    (a band of about 4 pixels): a person who leaves an object accepts that it is there, not
    every pixel of its outline, and a model's outlines can be off in the same way everywhere.
    ``finetuned_share`` is how far from the base's weights towards the trained ones the new
    version lies (a weight-space average, WiSE-FT, Wortsman et al. 2022): a few corrections
    on one plane pull a network too far, and part of the way keeps most of what they teach
    while losing less elsewhere. On the tuning scenarios of ``benchmarks/finetune_gain.py``
    (five shifts, four seeds) half of the way gained more than all of it (+0.027 against
    +0.021 AP@0.5 on the scenarios' other images), lost less in the worst scenario (-0.010
    against -0.023) and forgot less (-0.002 against -0.020 on the model's own held-out
    images; benchmarks/RESULTS.md). 1 keeps the trained weights. None (the default) is
    :data:`~napari_unet.core.training.FINETUNED_SHARE` for a base with a training run in its
    history and 1 for one without (random weights, trained from scratch: no base to stay
    near).
    ``trained_levels`` is how many levels of the network, counted from the input, a fine-tune
    changes (1: the first encoder block of two convolutions, 2: the first two); every other
    weight keeps the base's value, the batch-norm statistics of every layer still follow the
    batches. 0 trains every weight. A user's data differ from the base's training data mostly
    in how the image looks (noise, blur, illumination, stain), which the first layers read,
    while what a nucleus is and where two touching ones part is deeper in the network, and a
    few corrections on one plane change it for the worse ("surgical" fine-tuning, Lee et al.
    2023). On the tuning scenarios of ``benchmarks/finetune_gain.py`` (six shifts, three seeds)
    the first two levels at 5e-4 gained more than every weight at 1e-4 (+0.033 against +0.025
    AP@0.5 on the scenarios' other images) and no run lost (the worst +0.002 against -0.037);
    one level lost on enlarged nuclei (-0.026), three on noisy ones (-0.033;
    benchmarks/RESULTS.md). None (the default) is
    :data:`~napari_unet.core.training.TRAINED_LEVELS` for a base with a training run in its
    history and 0 for one without (random weights learn everywhere).
    ``retention_tolerance`` guards what the base knew: when the base bundle ships check patches
    of its own training data (:attr:`~napari_unet.core.bundle.ReplaySet.checks`), both versions
    segment them after training, and if the new weights lose more than this much AP@0.5 (mean
    IoU for semantic models) there, they are moved back towards the base's until they do not
    (:mod:`napari_unet.core.retention`); None turns the check off.
    ``freeze_norm`` keeps the base's
    batch-norm statistics (and uses them in training) instead of letting a few batches of one
    user's images update them; a layer that has never seen a batch (a model trained from
    scratch) learns its statistics either way. It is off by default: on the tuning scenarios
    of ``benchmarks/finetune_gain.py`` (noisy-dim, blurred; seed 0) freezing cut the mean
    gain from +0.119 to +0.026 AP@0.5, and neither setting forgot (benchmarks/RESULTS.md).
    """

    # 50 steps of 2 x 256^2 patches: on the tuning scenarios of benchmarks/finetune_gain.py
    # (five shifts, four seeds) as much gain as 100 (+0.025 against +0.027 AP@0.5) with half
    # the worst loss (-0.018 against -0.036) and half the time (about 15 s on 2 CPU cores)
    steps: int = 50
    # for the first TRAINED_LEVELS levels of a trained base, chosen on the tuning scenarios
    # (benchmarks/RESULTS.md, 2026-12-08); every level at this rate overshoots
    learning_rate: float = 5e-4
    patch_size: int = 256
    batch_size: int = 2
    val_fraction: float = 0.25
    val_every: int = 25
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    border_weights: bool | None = None
    dice: bool = False
    optimizer: str = "adamw"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channel: int | None = None
    annotated_fraction: float = 0.9  # share of patches centred on known pixels
    context_weight: float | None = None
    weigh_context: bool = True
    context_outlines: bool = False
    anchor_weight: float = 0.0
    replay_fraction: float = 0.25
    freeze_norm: bool = False
    finetuned_share: float | None = None
    trained_levels: int | None = None
    retention_tolerance: float | None = 0.02

    def check(self) -> None:
        """Raise InputError naming the valid range of the first value that cannot work."""
        _in_range("steps", self.steps, 1, 10**7, integer=True)
        _in_range("learning rate", self.learning_rate, 0.0, 1.0, low_open=True)
        _in_range("patch size", self.patch_size, 16, 2048, integer=True)
        _in_range("batch size", self.batch_size, 1, 256, integer=True)
        _in_range("validation fraction", self.val_fraction, 0.0, 0.9)
        _in_range("validation interval", self.val_every, 1, 10**7, integer=True)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _in_range("seed", self.seed, 0, 2**32 - 1, integer=True)
        _one_of("device", self.device.split(":")[0], DEVICES)
        _one_of("precision", self.precision, PRECISIONS)
        if self.channel is not None:
            _in_range("channel", self.channel, 0, 4096, integer=True)
        _in_range("annotated fraction", self.annotated_fraction, 0.0, 1.0)
        if self.context_weight is not None:
            _in_range("context weight", self.context_weight, 0.0, 100.0)
        _in_range("anchor weight", self.anchor_weight, 0.0, 1e6)
        _in_range("replay fraction", self.replay_fraction, 0.0, 0.95)
        if self.finetuned_share is not None:
            _in_range("fine-tuned share", self.finetuned_share, 0.0, 1.0, low_open=True)
        if self.trained_levels is not None:
            _in_range("trained levels", self.trained_levels, 0, 64, integer=True)
        if self.retention_tolerance is not None:
            _in_range("retention tolerance", self.retention_tolerance, 0.0, 1.0)
        low, high = self.augment.zoom
        _in_range("lowest zoom", low, 0.1, 1.0)
        _in_range("highest zoom", high, 1.0, 10.0)
        _in_range("inversion chance", self.augment.invert, 0.0, 1.0)
        _in_range("blur chance", self.augment.blur, 0.0, 1.0)


@dataclass(frozen=True)
class NewModelSettings:
    """A network trained from random weights instead of fine-tuned (``train --from-scratch``).

    Attributes
    ----------
    mode : {"instances", "semantic"}
        What the new network learns.
    depth : int
        U-Net depth (levels of down-sampling).
    base_channels : int
        Width of the first level; each level below doubles it.
    learning_rate : float
        Replaces :attr:`TrainSettings.learning_rate`: random weights take larger steps than a
        fine-tune, which must stay near its base.
    context_weight : float
        Replaces :attr:`TrainSettings.context_weight`: without a base model, labels outside a
        known-mask are nobody's prediction, so they are ignored.
    """

    mode: str = DEFAULT_MODE
    depth: int = 4
    base_channels: int = 16
    learning_rate: float = 2e-3
    context_weight: float = 0.0

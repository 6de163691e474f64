"""Settings of a prediction and of a training run, importable without torch.

The CLI's and the GUI's defaults come from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from napari_unet.core.augment import AugmentSettings


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
    threshold : float
        Probability threshold for instance seeds and foreground.
    min_size : int or None
        Smallest object kept, in pixels; None derives it from the object diameter.
    link_z : bool
        Give an object one id through Z by linking overlapping objects of adjacent planes.
    diameter : float or None
        Typical object diameter in the image, in pixels; the image is rescaled so objects
        match the size the model was trained on.
    channel : int or None
        Channel to segment in a multichannel image.
    blending : {"cosine", "none"}
        How overlapping tiles are combined.
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
    threshold: float = 0.5
    min_size: int | None = None
    link_z: bool = False
    diameter: float | None = None
    channel: int | None = None
    blending: str = "cosine"
    post_workers: int | None = None
    device: str = "auto"
    precision: str = "auto"


@dataclass(frozen=True)
class TrainSettings:
    """Training schedule and options. The defaults are the GUI's one-click fine-tune.

    ``context_weight`` is the loss weight of the pixels outside a sample's known-mask: there
    the labels are what the base model predicted and the person left as it was, so they teach
    the network what it should keep doing (0 ignores them, as when training from scratch on
    partial labels). ``anchor_weight`` pulls the weights towards the base model's (L2-SP:
    ``anchor_weight * sum((w - w_base) ** 2)``), so a few corrections cannot drag the network
    far from what it knew. ``replay_fraction`` is the share of training patches drawn from the
    base bundle's replay set (patches of its own training data), when it has one: rehearsing
    them keeps the network from forgetting what it did well.
    """

    # 100 steps of 2 x 256^2 patches: about 100 s on 2 CPU cores without native bf16
    # (benchmarks/RESULTS.md); a GPU runs them in seconds
    steps: int = 100
    learning_rate: float = 1e-4  # at most the base's final rate: fresh Adam moments overshoot
    patch_size: int = 256
    batch_size: int = 2
    val_fraction: float = 0.25
    val_every: int = 25
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    border_weights: bool = False
    dice: bool = False
    optimizer: str = "adamw"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channel: int | None = None
    annotated_fraction: float = 0.9  # share of patches centred on known pixels
    context_weight: float = 0.3
    anchor_weight: float = 0.0
    replay_fraction: float = 0.25

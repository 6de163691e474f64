"""The classic U-Net (Ronneberger et al. 2015) with typed options, and a factory from a config.

Encoder blocks are two 3x3 convolutions with ReLU followed by 2x2 max-pooling; a bridge of
two convolutions; decoder blocks of a 2x2 transposed convolution (or bilinear upsampling and
a 1x1 convolution) that halves the channels, concatenation with the skip connection, and two
3x3 convolutions; a final 1x1 convolution to the class logits.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import nn

from napari_unet.core.errors import BundleError

Padding = Literal["same", "valid"]
Norm = Literal["batch", "group", "none"]
Upsampling = Literal["transposed", "bilinear"]

CHOICES: dict[str, tuple[str, ...]] = {
    "padding": ("same", "valid"),
    "norm": ("batch", "group", "none"),
    "upsampling": ("transposed", "bilinear"),
}
# upper bounds: far above any useful U-Net, low enough that a config cannot ask for the moon
LIMITS = {"in_channels": 64, "n_classes": 256, "depth": 8, "base_channels": 512}
MAX_PARAMETERS = 200_000_000  # 0.8 GB of float32 weights (the paper's U-Net has 31 M)
ARCHITECTURE_KEYS = (
    "in_channels",
    "n_classes",
    "depth",
    "base_channels",
    "padding",
    "norm",
    "dropout",
    "upsampling",
)


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by optional normalisation and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, padding: str, norm: str) -> None:
        pad = 1 if padding == "same" else 0
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=pad, bias=bias),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=pad, bias=bias),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Upsample (halving the channels), concatenate the (cropped) skip, two 3x3 convolutions."""

    def __init__(self, in_channels: int, padding: str, norm: str, upsampling: str) -> None:
        super().__init__()
        out_channels = in_channels // 2
        if upsampling == "transposed":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, 1),
            )
        self.conv = DoubleConv(in_channels, out_channels, padding, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        if dy or dx:  # valid padding: crop the skip to the upsampled size, centred
            skip = skip[..., dy // 2 : dy // 2 + x.shape[-2], dx // 2 : dx // 2 + x.shape[-1]]
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net for 2D images.

    Parameters
    ----------
    in_channels : int
        Number of input channels.
    n_classes : int
        Number of output logits (classes).
    depth : int
        Number of encoder (and decoder) blocks; the image is pooled ``depth`` times.
    base_channels : int
        Channels of the first block, doubled at each level.
    padding : {"same", "valid"}
        "same" keeps the spatial size; "valid" uses unpadded convolutions as in the paper,
        so the output is smaller than the input and the skips are cropped.
    norm : {"batch", "group", "none"}
        Normalisation after each convolution.
    dropout : float
        Dropout probability at the end of the contracting path (before the bridge).
    upsampling : {"transposed", "bilinear"}
        2x2 transposed convolution, or bilinear upsampling followed by a 1x1 convolution.

    Notes
    -----
    The network can be compiled with ``torch.jit.script`` (the bioimage.io export's
    TorchScript weights); the properties below are Python-only.
    """

    __jit_unused_properties__ = ["config", "size_multiple"]

    def __init__(
        self,
        *,
        in_channels: int = 1,
        n_classes: int = 3,
        depth: int = 4,
        base_channels: int = 32,
        padding: Padding = "same",
        norm: Norm = "batch",
        dropout: float = 0.0,
        upsampling: Upsampling = "transposed",
    ) -> None:
        super().__init__()
        check_architecture(
            in_channels=in_channels,
            n_classes=n_classes,
            depth=depth,
            base_channels=base_channels,
            padding=padding,
            norm=norm,
            dropout=dropout,
            upsampling=upsampling,
        )
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.depth = depth
        self.base_channels = base_channels
        self.padding = padding
        self.norm = norm
        self.dropout_p = float(dropout)
        self.upsampling = upsampling

        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.encoders.append(DoubleConv(channels, width, padding, norm))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.bridge = DoubleConv(channels, widths[-1], padding, norm)
        self.decoders = nn.ModuleList(
            UpBlock(width, padding, norm, upsampling) for width in reversed(widths[1:])
        )
        self.head = nn.Conv2d(base_channels, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, n_classes, H', W') for input of shape (N, C, H, W)."""
        skips: list[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(self.dropout(x))
        for level, decoder in enumerate(self.decoders):  # indexed: TorchScript has no zip
            x = decoder(x, skips[-1 - level])
        return self.head(x)

    @property
    def config(self) -> dict[str, Any]:
        """The architecture as a JSON-serialisable dict accepted by :func:`build_unet`."""
        return {
            "in_channels": self.in_channels,
            "n_classes": self.n_classes,
            "depth": self.depth,
            "base_channels": self.base_channels,
            "padding": self.padding,
            "norm": self.norm,
            "dropout": self.dropout_p,
            "upsampling": self.upsampling,
        }

    @property
    def size_multiple(self) -> int:
        """Input sizes of a same-padding net must be multiples of this (2**depth)."""
        return 2**self.depth

    def output_size(self, size: int) -> int:
        """Spatial output size for an input of ``size`` pixels along one axis.

        Raises
        ------
        ValueError
            If the size cannot pass through the network (odd size before a pooling, or
            nothing left after the valid convolutions).
        """
        if self.padding == "same":
            if size % self.size_multiple:
                raise ValueError(f"size {size} is not a multiple of {self.size_multiple}")
            return size
        for _ in range(self.depth):
            size -= 4
            if size <= 0 or size % 2:
                raise ValueError("size does not fit the valid-padding network")
            size //= 2
        size -= 4
        if size <= 0:
            raise ValueError("size does not fit the valid-padding network")
        for _ in range(self.depth):
            size = size * 2 - 4
        return size

    def fit_input_size(self, wanted: int) -> int:
        """Smallest input size >= ``wanted`` that the network accepts."""
        size = max(int(wanted), 1)
        if self.padding == "same":
            return -(-size // self.size_multiple) * self.size_multiple
        while True:
            try:
                self.output_size(size)
                return size
            except ValueError:
                size += 1

    def input_side_parameters(self, levels: int) -> list[nn.Parameter]:
        """The parameters of the first ``levels`` encoder blocks, counted from the input
        (every parameter of the network when ``levels`` is 0 or exceeds the depth)."""
        if not 0 < levels <= self.depth:
            return list(self.parameters())
        return [p for encoder in self.encoders[:levels] for p in encoder.parameters()]

    def crop_per_side(self, size: int) -> int:
        """Pixels lost on each side for an input of ``size`` (0 for same padding)."""
        return (size - self.output_size(size)) // 2


def check_architecture(**options: Any) -> None:
    """Raise ValueError naming the valid choices when an architecture option is wrong."""
    for key, allowed in CHOICES.items():
        if key in options and options[key] not in allowed:
            raise ValueError(
                f"{key}={options[key]!r} is not valid; choose one of {', '.join(allowed)}"
            )
    for key, most in LIMITS.items():
        value = options.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if value is not None and value > most:
            raise ValueError(f"{key} must be at most {most}, got {value}")
    dropout = options.get("dropout", 0.0)
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def build_unet(config: dict[str, Any]) -> UNet:
    """Build a :class:`UNet` from an architecture dict.

    Parameters
    ----------
    config : dict
        Keys among ``in_channels, n_classes, depth, base_channels, padding, norm, dropout,
        upsampling``; missing keys take the defaults of :class:`UNet`.

    Raises
    ------
    BundleError
        On an unknown key or an invalid value; the message lists the valid choices.
    """
    unknown = sorted(set(config) - set(ARCHITECTURE_KEYS))
    if unknown:
        raise BundleError(
            f"unknown architecture option(s) {unknown}; valid options: {', '.join(ARCHITECTURE_KEYS)}"
        )
    try:
        return UNet(**config)
    except (ValueError, TypeError) as error:
        raise BundleError(f"invalid architecture: {error}") from error


def expected_state(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the weights :func:`build_unet` would create, without allocating them.

    The network is built on torch's ``meta`` device (shapes only), so a config that asks for
    an absurd network is refused before any memory is spent on it.

    Raises
    ------
    BundleError
        As :func:`build_unet`, or when the network would have more than
        :data:`MAX_PARAMETERS` parameters.
    """
    with torch.device("meta"):
        network = build_unet(config)
    count = sum(p.numel() for p in network.parameters())
    if count > MAX_PARAMETERS:
        raise BundleError(
            f"the architecture asks for {count / 1e6:.0f} M parameters "
            f"({4 * count / 2**30:.1f} GiB as float32); at most {MAX_PARAMETERS / 1e6:.0f} M are allowed"
        )
    return {key: tuple(value.shape) for key, value in network.state_dict().items()}


def fold_batch_norm(network: nn.Module) -> nn.Module:
    """An inference copy of ``network`` with each BatchNorm folded into the convolution before it.

    In eval mode a batch norm is a per-channel affine map, so it can be merged into the weights
    and bias of the preceding convolution: one memory pass less per layer, same output up to
    rounding. The original network is not modified.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(network).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[index] = fuse_conv_bn_eval(conv, norm)
                module[index + 1] = nn.Identity()
    return folded

"""Choose the compute device (cuda > mps > cpu) and the arithmetic precision per device."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_unet.core.errors import InputError
from napari_unet.core.options import DEVICES, PRECISIONS


@dataclass(frozen=True)
class Compute:
    """A resolved device and the autocast dtype to run the network in (None = fp32)."""

    device: torch.device
    autocast_dtype: torch.dtype | None

    @property
    def label(self) -> str:
        """Short description, e.g. ``"cpu (bf16)"``."""
        names = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}
        return f"{self.device.type} ({names[self.autocast_dtype]})"

    @property
    def channels_last(self) -> bool:
        """Whether to use channels-last memory layout (faster convolutions on CPU and CUDA)."""
        return self.device.type in ("cpu", "cuda")

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Context that runs the enclosed forward pass in the chosen precision."""
        if self.autocast_dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            yield


def mps_available() -> bool:
    """True when Apple's Metal backend can be used."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` (or ``cuda:1``) into a torch device that exists here."""
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise InputError(f"device {device!r} is not valid; choose one of {', '.join(DEVICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "device 'cuda' was asked for but no CUDA GPU is available; use auto or cpu"
        )
    if kind == "mps" and not mps_available():
        raise InputError(
            "device 'mps' was asked for but Apple MPS is not available; use auto or cpu"
        )
    return torch.device(name)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16 or AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_compute(device: str = "auto", precision: str = "auto") -> Compute:
    """Resolve a device and a precision.

    ``precision="auto"`` picks bf16 on CPUs with native bf16 support and on CUDA GPUs that
    support it (fp16 on older GPUs), and fp32 elsewhere (MPS included).
    """
    if precision not in PRECISIONS:
        raise InputError(
            f"precision {precision!r} is not valid; choose one of {', '.join(PRECISIONS)}"
        )
    torch_device = resolve_device(device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision != "auto":
        return Compute(torch_device, dtypes[precision])
    if torch_device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif torch_device.type == "cpu" and cpu_has_fast_bf16():
        dtype = torch.bfloat16
    else:
        dtype = None
    return Compute(torch_device, dtype)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

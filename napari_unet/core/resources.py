"""The machine's memory, and whether a request fits in it (torch-free).

Requests that cannot fit are refused before anything is allocated, with the estimate, what
is available and what to do instead: a refusal in a second beats a machine that swaps for an
hour and then dies.
"""

from __future__ import annotations

from napari_unet.core.errors import InputError

USABLE_SHARE = 0.8  # leave the rest to the viewer, the OS and estimation error


def available_memory() -> int:
    """Bytes of memory that can be allocated now without swapping (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def format_memory(n_bytes: int) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units, as memory is counted)."""
    power = 0
    while n_bytes >= 1024 ** (power + 1) and power < 3:
        power += 1
    if power == 0:
        return f"{n_bytes} bytes"
    return f"{n_bytes / 1024**power:.1f} {('KiB', 'MiB', 'GiB')[power - 1]}"


def check_fits(needed: int, what: str, remedy: str) -> None:
    """Raise InputError when ``needed`` bytes exceed the usable share of available memory.

    Parameters
    ----------
    needed : int
        The estimate, in bytes.
    what : str
        What needs it, e.g. ``"segmenting cells.tif"``.
    remedy : str
        What the user can do instead.
    """
    available = available_memory()
    if needed > USABLE_SHARE * available:
        raise InputError(
            f"{what} needs about {format_memory(needed)} of memory but {format_memory(available)} "
            f"is available; {remedy}"
        )

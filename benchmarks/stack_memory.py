"""Peak memory of `napari-unet predict` on large uint16 z-stacks, against its budget.

    python benchmarks/stack_memory.py [--size 2048] [--planes 16 64] [--device cpu]
        [--files uncompressed zlib]

For each plane count, writes a size x size x planes uint16 stack (the sample nuclei tiled,
shifted from plane to plane) twice: uncompressed (memory-mapped when read) and zlib-compressed
(decoded plane by plane), then runs the `napari-unet predict` command on it in a fresh process
and reads that process's peak resident memory. The budget (issue 15) is the resident memory of
a process that has only imported torch and the command, plus the input's bytes, plus 1 GiB: the
labels are made on disk (`core/disk_labels.py`), so they are not in it. Each file is also run
with the labels held in memory (the command with `labels_on_disk` swapped for an in-memory
array, as before issue 15), side by side. A straight line through the plane counts
extrapolates to larger stacks.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 2**30
IMPORT_ONLY = """
import resource
import torch
import napari_unet.cli
print("PEAK_RSS_BYTES", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""
IN_MEMORY = """
import contextlib
import napari_unet.core.disk_labels as disk_labels
disk_labels.labels_on_disk = lambda next_to: contextlib.nullcontext(disk_labels.labels_in_memory)
"""
CHILD = """
import resource, sys
from napari_unet.cli import main
status = main(sys.argv[1:])
print("PEAK_RSS_BYTES", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
sys.exit(status)
"""


def write_stack(path: Path, size: int, planes: int, compression: str | None) -> None:
    """A uint16 ZYX stack of real nuclei, written plane by plane (never whole in memory)."""
    import tifffile

    from napari_unet.gui.sample_data import nuclei_2d

    base = nuclei_2d()[0][0].astype(np.uint16) * 16  # 8-bit sample as 12-bit data
    reps = (-(-size // base.shape[0]) + 1, -(-size // base.shape[1]) + 1)
    tiled = np.tile(base, reps)

    def plane(z: int) -> np.ndarray:
        dy, dx = (37 * z) % base.shape[0], (53 * z) % base.shape[1]
        return np.ascontiguousarray(tiled[dy : dy + size, dx : dx + size])

    tifffile.imwrite(
        path,
        (plane(z) for z in range(planes)),
        shape=(planes, size, size),
        dtype=np.uint16,
        imagej=True,
        metadata={"axes": "ZYX"},
        compression=compression,
    )


def peak_rss(code: str, *args: str) -> tuple[int, float]:
    """Peak RSS in bytes and wall seconds of ``python -c code *args`` in a fresh process."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{args[:2]} failed: {result.stderr.strip()[-500:]}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("PEAK_RSS_BYTES"))
    return int(line.split()[1]), seconds


def measure(path: Path, out: Path, device: str, in_memory: bool) -> tuple[int, float]:
    """Peak RSS in bytes and wall seconds of one `napari-unet predict` run."""
    code = (IN_MEMORY if in_memory else "") + CHILD
    return peak_rss(code, "predict", str(path), "-o", str(out), "--device", device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--planes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--extrapolate", type=int, default=512, help="planes to extrapolate to")
    parser.add_argument(
        "--files",
        nargs="+",
        choices=("uncompressed", "zlib"),
        default=["uncompressed", "zlib"],
        help="kinds of TIFF to measure",
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="napari-unet-memory-"))
    print(f"{args.size}x{args.size} uint16 z-stacks, `napari-unet predict --device {args.device}`")
    base, _ = peak_rss(IMPORT_ONLY)
    print(f"torch and the command imported: {base / GIB:.2f} GiB resident (in every budget)")
    print(
        f"\n{'file':<14} {'planes':>6} {'labels':>6} {'input GiB':>9} {'budget GiB':>10} "
        f"{'peak RSS GiB':>12} {'headroom GiB':>12} {'MP/s':>6}"
    )
    rows: dict[str, list[tuple[int, int]]] = {}
    for kind in args.files:
        compression = None if kind == "uncompressed" else kind
        for planes in args.planes:
            path = folder / f"stack_{kind}_{planes}.tif"
            write_stack(path, args.size, planes, compression)
            voxels = planes * args.size * args.size
            budget = base + voxels * 2 + GIB
            for where in ("disk", "memory"):
                out = folder / f"out_{kind}_{planes}_{where}"
                peak, seconds = measure(path, out, args.device, in_memory=where == "memory")
                if where == "disk":
                    rows.setdefault(kind, []).append((planes, peak))
                print(
                    f"{kind:<14} {planes:6d} {where:>6} {voxels * 2 / GIB:9.2f} "
                    f"{budget / GIB:10.2f} {peak / GIB:12.2f} {(budget - peak) / GIB:12.2f} "
                    f"{voxels / 1e6 / seconds:6.2f}",
                    flush=True,
                )
            path.unlink()
    if len(args.planes) >= 2:
        print(
            f"\nextrapolated to {args.extrapolate} planes (straight line through the runs with "
            "labels on disk):"
        )
        for kind, points in rows.items():
            slope, intercept = np.polyfit(*zip(*points, strict=True), 1)
            voxels = args.extrapolate * args.size * args.size
            peak = slope * args.extrapolate + intercept
            budget = base + voxels * 2 + GIB
            print(
                f"  {kind:<14} {peak / GIB:6.2f} GiB peak vs budget {budget / GIB:.2f} GiB "
                f"({slope / 2**20:.1f} MiB per plane; the input is "
                f"{2 * args.size**2 / 2**20:.1f} MiB per plane)"
            )


if __name__ == "__main__":
    main()

"""Synthetic images with known objects for fast, exact tests."""

from __future__ import annotations

import numpy as np


def disks(
    shape: tuple[int, int] = (128, 128),
    n: int = 12,
    radius: tuple[int, int] = (5, 9),
    seed: int = 0,
    touching: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy fluorescence-like image of bright disks and its instance labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint16)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    placed = 0
    for _ in range(n * 20):
        if placed == n:
            break
        r = int(rng.integers(radius[0], radius[1] + 1))
        cy, cx = int(rng.integers(r, shape[0] - r)), int(rng.integers(r, shape[1] - r))
        disk = (rows - cy) ** 2 + (cols - cx) ** 2 <= r * r
        ring = (rows - cy) ** 2 + (cols - cx) ** 2 <= (r + (0 if touching else 2)) ** 2
        if labels[ring].any():
            continue
        placed += 1
        labels[disk] = placed
    image = (labels > 0) * 200.0 + rng.normal(30.0, 8.0, shape)
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def balls(shape: tuple[int, int, int] = (6, 64, 64), n: int = 5, seed: int = 0) -> np.ndarray:
    """Instance labels of non-touching balls in a (Z, Y, X) volume."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint16)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    placed = 0
    for _ in range(n * 50):
        if placed == n:
            break
        r = 8
        c = [
            int(rng.integers(2, shape[0] - 2)),
            int(rng.integers(r, shape[1] - r)),
            int(rng.integers(r, shape[2] - r)),
        ]
        ball = ((zz - c[0]) * 4) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
        if labels[ball].any() or labels[np.roll(ball, 2, 1)].any():
            continue
        placed += 1
        labels[ball] = placed
    return labels

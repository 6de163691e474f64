"""Issue 14: on a Z stack, objects are 3D by default, also when Z is sampled coarser than XY."""

from dataclasses import replace

import numpy as np
import pytest

from napari_unet.core.inference import PredictOptions, predict

RADIUS = 7.0  # in XY pixels: the tiny model's own diameter (14), so no rescaling


def _bright_is_interior(batch: np.ndarray) -> np.ndarray:
    """A scale-free stand-in for the network: bright pixels are object interiors."""
    interior = np.clip(batch[:, :1], 0.0, 1.0)
    return np.concatenate([1.0 - interior, interior, np.zeros_like(interior)], axis=1)


def anisotropic_spheres(
    n: int, z_step: float = 4.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` spheres of radius RADIUS (physical units = XY pixels) in a 56 x 160 x 160 volume
    sampled with a Z step of ``z_step`` XY pixels: ellipsoids in voxel space, RADIUS across in
    XY and RADIUS / z_step planes in Z (3 or 4 planes each at z_step 4, caps included).
    Centres are placed at sub-voxel positions, at least 3 radii apart, so that no two spheres
    touch. Returns the image (float32, 1 inside) and the truth labels."""
    shape = (int(56 / z_step), 160, 160)
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(s, dtype=np.float64) for s in shape), indexing="ij")
    z = z * z_step
    centres: list[np.ndarray] = []
    margin = RADIUS + 2
    while len(centres) < n:
        c = np.array(
            [
                rng.uniform(margin, shape[0] * z_step - margin),
                rng.uniform(margin, shape[1] - margin),
                rng.uniform(margin, shape[2] - margin),
            ]
        )
        if all(np.linalg.norm(c - other) > 3 * RADIUS for other in centres):
            centres.append(c)
    labels = np.zeros(shape, np.uint32)
    for i, (cz, cy, cx) in enumerate(centres, start=1):
        labels[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= RADIUS**2] = i
    return (labels > 0).astype(np.float32), labels


def _objects(labels: np.ndarray) -> int:
    return len(np.unique(labels[labels > 0]))


def test_truth_is_several_planes_thick():
    _, truth = anisotropic_spheres(12)
    planes = [len(np.unique(np.nonzero(truth == i)[0])) for i in range(1, 13)]
    assert min(planes) >= 3
    assert _objects(truth) == 12


@pytest.mark.parametrize("z_step, seed", [(1.0, 0), (4.0, 0), (4.0, 1)])
def test_spheres_are_3d_objects_by_default(instance_bundle, z_step, seed):
    n = 20
    image, truth = anisotropic_spheres(n, z_step, seed=seed)
    options = replace(PredictOptions(), diameter=instance_bundle.config["object_diameter"])
    assert options.link_z  # the default
    result = predict(image, instance_bundle, options, axes="ZYX", predictor=_bright_is_interior)
    found = _objects(result.labels)
    assert abs(found - n) <= 0.05 * n, f"{found} 3D objects for {n} spheres"
    # each sphere is one object through Z, and no object spans two spheres
    for i in range(1, n + 1):
        ids = np.unique(result.labels[truth == i])
        assert len(ids[ids > 0]) == 1, f"sphere {i} got ids {ids[ids > 0]}"
    if z_step == 1.0:
        return  # the per-plane count below is for the anisotropic stack
    per_plane = predict(
        image,
        instance_bundle,
        replace(options, link_z=False),
        axes="ZYX",
        predictor=_bright_is_interior,
    )
    assert _objects(per_plane.labels) > 2.5 * n  # one object per plane without linking


def test_the_files_z_step_decides_whether_planes_are_linked(instance_bundle):
    """The spheres' stack read with its physical pixel sizes: a Z step of 4 XY pixels is
    shorter than the 14 px objects (linked); one of 20 is longer (planes kept apart, said)."""
    from napari_unet.core.generators import run_to_end
    from napari_unet.core.inference import iter_predict
    from napari_unet.core.io import Stack

    image, _ = anisotropic_spheres(20, 4.0, seed=0)
    options = replace(PredictOptions(), diameter=instance_bundle.config["object_diameter"])
    notices = []

    def run(z_size: float) -> np.ndarray:
        stack = Stack(image, "ZYX", scale={"Z": z_size, "Y": 0.5, "X": 0.5})
        generator = iter_predict(stack, instance_bundle, options, predictor=_bright_is_interior)
        result = run_to_end(generator, lambda p: p.notice and notices.append(p.notice))
        return result.labels

    assert abs(_objects(run(2.0)) - 20) <= 1 and notices == []
    unlinked = run(10.0)
    assert _objects(unlinked) > 2.5 * 20  # one object per plane
    assert len(notices) == 1 and "not linked" in notices[0] and "20 px" in notices[0]

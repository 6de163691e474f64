"""Every bundled model loads offline by name and segments a sample image plausibly."""

from importlib.resources import as_file, files

import numpy as np

from napari_unet.core.inference import PredictOptions, predict
from napari_unet.core.io import read_image
from napari_unet.core.registry import BUNDLED_DIR, list_models, load_bundle

EXPECTED = {"nuclei": "instances", "em-membranes": "semantic"}


def sample(name):
    with as_file(files("napari_unet.sample_data") / name) as path:
        return read_image(path)


def test_bundled_models_are_listed_and_small():
    bundled = {e.name: e for e in list_models() if e.bundled}
    assert set(EXPECTED) <= set(bundled)
    for name, mode in EXPECTED.items():
        assert bundled[name].mode == mode
        assert (BUNDLED_DIR / f"{name}.safetensors").stat().st_size < 20 * 2**20


def test_nuclei_segments_the_sample_plausibly():
    bundle = load_bundle("nuclei")
    image = sample("nuclei_2d.tif")
    labels = predict(image, bundle, PredictOptions(device="cpu")).labels
    count = len(np.unique(labels)) - 1
    foreground = float((labels > 0).mean())
    assert 60 <= count <= 250, count  # the image holds about 130 nuclei
    assert 0.02 < foreground < 0.6, foreground


def test_em_membranes_segments_the_sample_plausibly():
    bundle = load_bundle("em-membranes")
    stack = sample("em_sections.tif")
    assert bundle.class_names == ["background", "membrane"]
    labels = predict(stack.data[:1], bundle, PredictOptions(device="cpu"), axes="ZYX").labels
    membrane = float((labels == 1).mean())
    assert 0.1 < membrane < 0.45, membrane  # membranes cover about a fifth of these sections


def _photon_starved(image: np.ndarray, photons: float, seed: int = 0) -> np.ndarray:
    """``image`` as a dim 16-bit camera records it: Poisson shot noise, read noise, offset."""
    rng = np.random.default_rng(seed)
    low, high = np.percentile(image, (1.0, 99.8))
    signal = np.clip((image.astype(np.float64) - low) / (high - low), 0.0, 1.0)
    counts = rng.poisson(signal * photons) + rng.normal(0.0, 2.0, signal.shape) + 100.0
    return np.clip(np.round(counts), 0, 65535).astype(np.uint16)


def test_noise_is_not_mistaken_for_small_nuclei():
    """Specks of noise look like small objects at first; the plane must not be enlarged."""
    bundle = load_bundle("nuclei")
    noisy = _photon_starved(np.asarray(sample("nuclei_2d.tif").data), photons=5.0)
    result = predict(noisy, bundle, PredictOptions(device="cpu"))
    (size,) = result.stats["sizes"]
    assert size.factor == 1.0 and size.source == "unconfirmed", size
    assert result.labels.shape == noisy.shape


def test_small_nuclei_are_enlarged_to_the_models_size():
    """The same nuclei at 0.35x their size: the enlargement is confirmed and helps."""
    from dataclasses import replace

    from skimage.transform import resize

    from napari_unet.core.metrics import instance_scores

    bundle = load_bundle("nuclei")
    image = np.asarray(sample("nuclei_2d.tif").data, dtype=np.float32)
    options = PredictOptions(device="cpu")
    at_model_size = replace(options, diameter=bundle.config["object_diameter"])
    reference = predict(image, bundle, at_model_size).labels
    shape = tuple(round(n * 0.35) for n in image.shape)
    small = resize(image, shape, order=1, preserve_range=True, anti_aliasing=True)
    truth = resize(reference, shape, order=0, preserve_range=True, anti_aliasing=False)
    auto = predict(small.astype(np.float32), bundle, options)
    (size,) = auto.stats["sizes"]
    assert size.source == "estimated" and size.factor > 1.5, size
    unscaled = predict(small.astype(np.float32), bundle, at_model_size).labels
    truth = truth.astype(np.uint32)
    assert instance_scores(auto.labels, truth).at(0.5) > instance_scores(unscaled, truth).at(0.5)

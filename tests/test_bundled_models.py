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

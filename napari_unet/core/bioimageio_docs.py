"""What a bioimage.io package says in words and pictures: lineage, README and cover.

The bundle config records how a model was trained (its ``training.history``) but not the
terms of the data its bundled ancestor learnt from: those are in the model cards
(``docs/models``) and are repeated here in :data:`BUNDLED_ORIGINS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet.core.postprocess import SEED_SMOOTHING, seed_smoothing_sigma
from napari_unet.core.preprocess import DEFAULT_RGB_RULE
from napari_unet.core.seed_level import DEFAULT_LEVEL, SURE_INTERIOR, SURE_LEVEL, SURE_SHARE

UNET_CITATION = {
    "text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015",
    "doi": "10.1007/978-3-319-24574-4_28",
}


@dataclass(frozen=True)
class Origin:
    """The data a bundled model was trained on, and how it scored on held-out data.

    Attributes
    ----------
    data : str
        The training data in a sentence.
    terms : str
        Its licence or terms of use.
    non_commercial : bool
        Whether the terms forbid commercial use (then so does a model trained on it).
    citations : tuple of dict
        ``{"text": ..., "doi": ...}`` entries for the data.
    validation : str
        The held-out scores from the model card.
    pixel_size_um : float or None
        Pixel size of the training images in micrometres, when it is one known value.
    modality_tags : tuple of str
    """

    data: str
    terms: str
    non_commercial: bool
    citations: tuple[dict[str, str], ...]
    validation: str
    pixel_size_um: float | None
    modality_tags: tuple[str, ...]


BUNDLED_ORIGINS = {
    "nuclei": Origin(
        data="2018 Data Science Bowl stage-1 training set (BBBC038v1), the 484 images "
        "(411 grey fluorescence, 73 colour as luminance) of the fixed split by image family",
        terms="CC0",
        non_commercial=False,
        citations=(
            {
                "text": "Caicedo et al. Nucleus segmentation across imaging experiments: the "
                "2018 Data Science Bowl. Nat Methods 16, 1247 (2019)",
                "doi": "10.1038/s41592-019-0612-7",
            },
        ),
        validation="On 180 held-out DSB 2018 images of 10 image families never trained on: "
        "AP@0.5 0.593 and AP@0.75 0.389 (grey fluorescence 0.714, colour histology 0.378, "
        "grey brightfield 0.065 at IoU 0.5), with AP = TP / (TP + FP + FN) averaged over "
        "images; CTC Fluo-N2DL-HeLa frames 0.840 (`python benchmarks/accuracy.py nuclei` in "
        "napari-unet).",
        pixel_size_um=None,
        modality_tags=("fluorescence-light-microscopy", "nuclei", "2d"),
    ),
    "em-membranes": Origin(
        data="ISBI 2012 EM segmentation challenge training stack (Drosophila first instar "
        "larva ventral nerve cord, serial-section TEM), 16 of its 20 sections",
        terms="free for non-commercial research use only",
        non_commercial=True,
        citations=(
            {
                "text": "Cardona et al. An integrated micro- and macroarchitectural analysis "
                "of the Drosophila brain by computer-assisted serial section electron "
                "microscopy. PLoS Biol 8, e1000502 (2010)",
                "doi": "10.1371/journal.pbio.1000502",
            },
            {
                "text": "Arganda-Carreras et al. Crowdsourcing the creation of image "
                "segmentation algorithms for connectomics. Front. Neuroanat. 9, 142 (2015)",
                "doi": "10.3389/fnana.2015.00142",
            },
        ),
        validation="On the held-out ISBI 2012 training sections 04, 09, 14 and 19: pixel "
        "error 0.0769, membrane IoU 0.715, foreground-restricted Rand error 0.105 (`python "
        "benchmarks/accuracy.py em` in napari-unet).",
        pixel_size_um=0.004,
        modality_tags=("electron-microscopy", "membranes", "2d"),
    ),
}


def lineage(config: dict[str, Any]) -> list[str]:
    """Names of the models this one descends from, oldest first (empty for a base model).

    Read from the parents recorded by each training run, then the config's ``parent``.
    """
    history = (config.get("training") or {}).get("history") or []
    names = [run.get("parent") for run in history if isinstance(run, dict)]
    names.append(config.get("parent"))
    chain: list[str] = []
    for name in names:
        if isinstance(name, str) and name and name not in chain and name != config.get("name"):
            chain.append(name)
    return chain


def origin_of(config: dict[str, Any]) -> tuple[str, Origin] | None:
    """The bundled ancestor of a model (or the model itself) and its data, if it has one."""
    for name in [*lineage(config), config.get("name")]:
        if name in BUNDLED_ORIGINS:
            return name, BUNDLED_ORIGINS[name]
    return None


def history_table(config: dict[str, Any]) -> str:
    """The training runs as a Markdown table (date, parent, steps, planes, time, comparison)."""
    rows = [
        "| # | date | from | steps | planes | time | held-out comparison with its parent |",
        "|---|---|---|---|---|---|---|",
    ]
    history = (config.get("training") or {}).get("history") or []
    for number, run in enumerate(history, 1):
        if not isinstance(run, dict):
            continue
        samples = run.get("samples")
        count = len(samples) if isinstance(samples, list) else samples
        comparison = run.get("comparison") or {}
        compared = "not compared"
        if comparison.get("verdict"):
            compared = (
                f"{comparison['verdict']}: {comparison.get('metric', 'score')} "
                f"{comparison.get('base_score', float('nan')):.3f} -> "
                f"{comparison.get('new_score', float('nan')):.3f} on "
                f"{comparison.get('n_items', '?')} held-out {comparison.get('unit', 'items')}"
            )
        seconds = run.get("seconds")
        rows.append(
            f"| {number} | {str(run.get('date', '?'))[:19]} | {run.get('parent') or 'scratch'} "
            f"| {run.get('steps_run', '?')} | {count} "
            f"| {'?' if seconds is None else f'{seconds:.0f} s'} | {compared} |"
        )
    return "\n".join(rows) if len(rows) > 2 else "No training run is recorded."


def readme(
    config: dict[str, Any],
    *,
    authors: list[str],
    license_id: str,
    halo: int,
    min_size: int,
    step: int,
    test_source: str,
    min_object_size: int,
) -> str:
    """The package's README.md: use, pre- and post-processing, provenance and validation.

    Parameters
    ----------
    config : dict
        The bundle config.
    authors : list of str
    license_id : str
        SPDX identifier of the package's licence.
    halo : int
        Pixels to discard at each tile border.
    min_size, step : int
        The input size rule: ``min + n * step``.
    test_source : str
        Where the test tensors come from.
    min_object_size : int
        Smallest object kept by napari-unet's post-processing, in pixels.
    """
    name = config.get("name") or "unnamed"
    sigma = seed_smoothing_sigma(config.get("object_diameter"))
    smoothing = (
        f" (after a Gaussian smoothing of the interior, sigma {sigma:g} px at the model's "
        f"scale: {SEED_SMOOTHING:g} of the objects' diameter, and only where the interior "
        "beats the boundary)"
        if sigma
        else ""
    )
    normalization = config["normalization"]
    low, high = float(normalization.get("low", 1.0)), float(normalization.get("high", 99.8))
    classes = ", ".join(config["class_names"])
    diameter = config.get("object_diameter")
    found = origin_of(config)
    chain = lineage(config)
    instances = config["mode"] == "instances"
    parts = [
        f"# napari-unet model `{name}`",
        f"A 2D U-Net exported from napari-unet {config.get('package_version', '')} as a "
        "bioimage.io model package. "
        + (
            "It segments objects (instances): it predicts background / interior / boundary "
            "probabilities, which napari-unet turns into labelled objects."
            if instances
            else f"It classifies every pixel into: {classes}."
        ),
        f"Authors: {', '.join(authors)}. Licence: {license_id}.",
    ]
    if found is not None and found[1].non_commercial:
        parts.append(
            f"**Non-commercial use only.** This model was trained "
            f"{'from' if chain else 'as'} `{found[0]}`, on data whose terms are: "
            f"{found[1].terms}. A model trained on it inherits that restriction."
        )
    parts += [
        "## Use",
        "- napari-unet: `napari-unet predict IMAGE.tif --model THIS.zip --output DIR`, or "
        "choose the package in the plugin's model picker. napari-unet reads the attached "
        f"`{name}.safetensors` bundle (no Python code from the package is run) and can "
        "fine-tune it further.",
        "- bioimage.io consumers (ilastik, deepImageJ, bioimageio.core...): TorchScript "
        "weights need no Python code; the `pytorch_state_dict` weights rebuild the network "
        "from `unet.py` (the architecture cut from napari-unet, importing only torch).",
        "## Input",
        f"One 2D plane with {config['input'].get('channels', 1)} channel(s), of any size "
        f"`{min_size} + n * {step}` pixels per axis (the network pools "
        f"{config['architecture']['depth']} times). "
        + (
            f"Objects should be about {diameter:.0f} pixels across (the median object "
            "diameter of the training labels); rescale images whose objects are much "
            "larger or smaller (napari-unet estimates the object size of each plane and "
            "rescales it, or uses the `--diameter` it is given)."
            if diameter
            else "The model was trained without a reference object size."
        )
        + " Colour images are made grey by napari-unet before the network "
        f"(`{config['input'].get('rgb', DEFAULT_RGB_RULE)}`); give the package a grey image.",
        "## Preprocessing",
        f"Each channel of each plane is scaled between its percentiles {low:g} and {high:g} "
        "(linear interpolation): `(x - p_low) / (p_high - p_low)`. The package "
        "expresses this as `scale_range` over the axes `y, x` (per sample and channel) with "
        f"`min_percentile: {low:g}`, `max_percentile: {high:g}`. Differences from "
        "napari-unet's own normalisation: the spec adds `eps = 1e-6` to the denominator "
        "(napari-unet adds nothing and maps a constant plane to 0); napari-unet ignores NaN "
        "and infinite pixels for the percentiles and sets them to 0; on planes over a "
        "million pixels it computes the percentiles on an even subsample of a million "
        "pixels, where the spec uses all pixels.",
        "## Output and post-processing",
        "The network outputs logits; the package's `softmax` over the channel axis gives "
        f"probabilities for: {classes}. Predict large images in tiles and discard "
        f"{halo} pixels at each inner tile border (the output `halo`): with that context a "
        "tile's probabilities match the whole image's.",
        (
            "napari-unet turns the probabilities into objects: interior pixels above "
            f"{DEFAULT_LEVEL:g}{smoothing} form one seed per connected component; seeds grow by "
            "watershed over `boundary - interior` into the foreground (interior + boundary above "
            f"{DEFAULT_LEVEL:g}); with the threshold `auto` the seeds' level is {SURE_LEVEL:g} "
            f"in a plane where at least {100 * SURE_SHARE:.0f}% of the foreground has an "
            f"interior above {SURE_INTERIOR:g}; objects "
            f"under {min_object_size} pixels (5% of a typical object's "
            "area) are removed; in z-stacks objects of neighbouring planes overlapping with "
            "IoU >= 0.25 share an id. This step is not part of the bioimage.io spec, so "
            "other software shows the probabilities."
            if instances
            else "The label of a pixel is the class of highest probability (argmax)."
        ),
        "## Provenance",
        (f"Lineage (oldest first): {' -> '.join([*chain, name])}. " if chain else "")
        + (
            f"Training data of `{found[0]}`: {found[1].data} (terms: {found[1].terms})."
            if found is not None
            else "The training data of this model is not recorded in the package."
        )
        + f" Test tensors: {test_source}.",
        history_table(config),
        "## Validation",
        (found[1].validation + " " if found is not None and not chain else "")
        + "A fine-tuned version is compared with its parent on labels held out of its "
        "training (the table above); to validate on your own data, predict held-out "
        "images and score them with `napari-unet evaluate PREDICTION TRUTH`.",
        "## Citations",
        "\n".join(
            f"- {entry['text']}. doi:{entry['doi']}"
            for entry in [UNET_CITATION, *(found[1].citations if found else ())]
        ),
    ]
    return "\n\n".join(part for part in parts if part) + "\n"


def cover(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A 2:1 RGB cover: the normalised input beside its segmentation drawn over it.

    Parameters
    ----------
    image : ndarray of shape (Y, X)
        The normalised input (about 0-1).
    labels : ndarray of shape (Y, X)
        Object ids or class indices (0 is background).

    Returns
    -------
    ndarray of shape (Y, 2 * X, 3), uint8
    """
    if labels.shape != image.shape:
        raise ValueError(f"labels {labels.shape} and image {image.shape} differ in shape")
    grey = np.clip(image, 0.0, 1.0)
    left = np.repeat(grey[..., None], 3, axis=2)
    palette = np.random.default_rng(0).uniform(0.3, 1.0, size=(int(labels.max()) + 1, 3))
    colour = palette[labels]
    right = np.where((labels > 0)[..., None], 0.45 * left + 0.55 * colour, 0.6 * left)
    return (np.concatenate([left, right], axis=1) * 255).round().astype(np.uint8)

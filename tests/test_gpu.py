"""CUDA paths: the same results as the CPU, fine-tuning in bf16 and fp16, bounded GPU memory.

Skipped where no CUDA device exists (CI never has one); run on a GPU machine with
``python -m pytest -m gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.generators import run_to_end
from napari_unet.core.inference import PredictOptions, predict
from napari_unet.core.metrics import instance_scores
from napari_unet.core.options import TrainSettings
from napari_unet.core.registry import load_bundle
from napari_unet.core.samples import TrainingSample
from napari_unet.core.training import iter_finetune
from tests.synthetic import disks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _foreground_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a > 0) & (b > 0)).sum() / max(((a > 0) | (b > 0)).sum(), 1))


def _sample_nuclei() -> np.ndarray:
    from napari_unet.gui.sample_data import nuclei_2d

    return nuclei_2d()[0][0]


@pytest.mark.parametrize("precision", ["fp32", "auto", "fp16"])
def test_cuda_prediction_matches_cpu_fp32(precision):
    image = _sample_nuclei()
    bundle = load_bundle("nuclei")
    reference = predict(image, bundle, PredictOptions(device="cpu", precision="fp32")).labels
    # batch 3: the last batch of a plane is partial (padded to the full batch on CUDA)
    options = PredictOptions(device="cuda", precision=precision, batch_size=3, tile_size=256)
    on_gpu = predict(image, bundle, options)
    assert on_gpu.compute.startswith("cuda")
    assert _foreground_iou(on_gpu.labels, reference) >= 0.99
    assert instance_scores(on_gpu.labels, reference).at(0.5) >= 0.97


def test_gpu_memory_is_bounded_by_tiles_not_image_size():
    bundle = load_bundle("nuclei")
    rng = np.random.default_rng(0)
    peaks = []
    for size in (1024, 4096):
        image = rng.normal(100, 10, (size, size)).astype(np.float32)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        predict(image, bundle, PredictOptions(device="cuda"))
        peaks.append(torch.cuda.max_memory_allocated())
    # 16x the pixels: the GPU peak may not grow with the image (tile x batch bound it)
    assert peaks[1] <= peaks[0] * 1.25 + 16 * 2**20, peaks


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_finetune_learns_and_returns_a_cpu_bundle(precision):
    image, labels = disks(shape=(256, 256), n=20, seed=3)
    settings = TrainSettings(
        steps=30, patch_size=128, val_every=10, device="cuda", precision=precision
    )
    generator = iter_finetune(load_bundle("nuclei"), [TrainingSample(image, labels)], settings)
    losses = []
    result = run_to_end(generator, lambda item: losses.append(getattr(item, "loss", 0.0)))
    assert all(np.isfinite(losses))
    assert next(result.bundle.network.parameters()).device.type == "cpu"
    assert result.comparison is not None and result.comparison.new_score >= 0.0

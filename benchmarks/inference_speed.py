"""Inference speed of the bundled `nuclei` network: ours vs MONAI vs a whole-image forward.

    python benchmarks/inference_speed.py [--size 2048] [--repeats 3] [--device cpu|cuda]

Every variant runs in its own subprocess (clean peak RSS), on the same network, tile size
and overlap (ours' defaults unless --tile/--overlap say otherwise), on a real image (the
sample nuclei tiled to size x size), and is repeated; medians are printed. Each process runs one untimed forward pass of a tile batch
first (CUDA context, cuDNN and oneDNN set-up), then the timed run. Needs MONAI for (b) and (b')
(`pip install -e ".[bench]"`).

(a)  ours, defaults: read TIFF -> tiles -> labels -> write TIFF (end to end) and network only;
     the object size is estimated from a first look at a sample window
(ag) ours with the object diameter given (the model's own): no look, the cost of the estimate
     is the difference between (a) and (ag)
(a32) ours in fp32 (the accuracy reference)
(b)  MONAI sliding_window_inference in fp32, as users run it by default
(b') MONAI under the same bf16 autocast and channels-last layout as ours
(c)  one fp32 forward pass over the whole (mirror-padded) image
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_unet.core.options import PredictOptions

DEFAULTS = PredictOptions()
VARIANTS = ("a", "ag", "a32", "b", "b'", "c")


def make_image(size: int, folder: Path) -> Path:
    import tifffile

    from napari_unet.gui.sample_data import nuclei_2d

    data = nuclei_2d()[0][0]
    reps = (-(-size // data.shape[0]), -(-size // data.shape[1]))
    image = np.tile(data, reps)[:size, :size]
    path = folder / f"nuclei_{size}.tif"
    tifffile.imwrite(path, image)
    return path


def conv_peak(device: str) -> dict[str, float]:
    """GFLOP/s of a large 128->128 3x3 convolution in fp32 and bf16 (channels last)."""
    import torch

    results = {}
    conv = (
        torch.nn.Conv2d(128, 128, 3, padding=1)
        .to(device)
        .to(memory_format=torch.channels_last)
        .eval()
    )
    batch, calls = (32, 20) if device == "cuda" else (4, 1)
    x = torch.rand(batch, 128, 256, 256, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    flops = 2 * 128 * 128 * 9 * batch * 256 * 256 * calls
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        times = []
        with (
            torch.inference_mode(),
            torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            for _ in range(4):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(calls):
                    conv(x)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        results[name] = flops / statistics.median(times[1:]) / 1e9
    return results


def network_flops_per_pixel(network) -> float:
    """Multiply-adds x 2 of all convolutions per input pixel (measured with hooks at 256^2)."""
    import torch

    total = [0]

    def hook(module, inputs, output):
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total[0] += 2 * kernel * output.numel() // output.shape[0]

    handles = [
        m.register_forward_hook(hook)
        for m in network.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    with torch.inference_mode():
        network(torch.zeros(1, 1, 256, 256))
    for h in handles:
        h.remove()
    return total[0] / (256 * 256)


class TimedPredictor:
    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __call__(self, batch):
        t0 = time.perf_counter()
        out = self.inner(batch)
        self.seconds += time.perf_counter() - t0
        return out


def run_variant(
    variant: str, image_path: Path, out: Path, device: str, batch: int, tile: int, overlap: float
) -> dict[str, float]:
    import resource

    import torch

    from napari_unet.core.devices import resolve_compute
    from napari_unet.core.generators import run_to_end
    from napari_unet.core.inference import NetworkPredictor, iter_predict
    from napari_unet.core.io import read_image, write_labels
    from napari_unet.core.postprocess import instance_labels
    from napari_unet.core.preprocess import prepare_plane
    from napari_unet.core.registry import load_bundle

    bundle = load_bundle("nuclei")
    channels = bundle.config["input"]["channels"]
    warm_tiles = np.zeros((batch, channels, tile, tile), dtype=np.float32)
    ours = variant in ("a", "ag", "a32")
    if ours:
        compute = resolve_compute(device, "fp32" if variant == "a32" else "auto")
        predictor = TimedPredictor(NetworkPredictor(bundle.network, compute))
        predictor(warm_tiles)  # untimed: CUDA context, cuDNN/oneDNN set-up
        predictor.seconds = 0.0
    else:
        network = bundle.network.to(device).eval()
        bf16 = variant == "b'"
        if bf16:
            network = network.to(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            network(torch.from_numpy(warm_tiles).to(device)).cpu()
    t0 = time.perf_counter()
    stack = read_image(image_path)
    net_seconds = 0.0
    if ours:
        generator = iter_predict(
            stack,
            bundle,
            PredictOptions(
                tile_size=tile,
                overlap=overlap,
                batch_size=batch,
                device=device,
                precision="fp32" if variant == "a32" else "auto",
                diameter=bundle.config["object_diameter"] if variant == "ag" else None,
            ),
            predictor=predictor,
        )
        prediction = run_to_end(generator)
        labels = prediction.labels
        net_seconds = predictor.seconds
        pixels_ratio = prediction.stats["processed_pixel_ratio"]
        look_ratio = prediction.stats["look_pixel_ratio"]
        scale_factor = prediction.stats["scale_factor"]
    else:
        x = torch.from_numpy(prepare_plane(stack.data, stack.axes, bundle.config)[None]).to(device)
        n0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            if variant == "c":
                pad = 64
                padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
                size = [-(-s // 16) * 16 for s in padded.shape[-2:]]
                padded = torch.nn.functional.pad(
                    padded,
                    (0, size[1] - padded.shape[-1], 0, size[0] - padded.shape[-2]),
                    mode="reflect",
                )
                logits = network(padded)[..., pad : pad + x.shape[-2], pad : pad + x.shape[-1]]
                pixels_ratio = padded.numel() / x.numel()
            else:
                from monai.inferers import sliding_window_inference

                logits = sliding_window_inference(x, (tile, tile), batch, network, overlap=overlap)
                pixels_ratio = float("nan")
            probabilities = torch.softmax(logits.float(), 1)[0].cpu().numpy()
        net_seconds = time.perf_counter() - n0
        labels = instance_labels(probabilities)
        look_ratio, scale_factor = 0.0, 1.0
    write_labels(out, labels, axes="YX", overwrite=True)
    total = time.perf_counter() - t0
    np.save(out.with_suffix(".npy"), labels)
    megapixels = stack.data.size / 1e6
    return {
        "end_to_end_mps": megapixels / total,
        "network_mps": megapixels / net_seconds,
        "seconds": total,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pixel_ratio": pixels_ratio,
        "look_ratio": look_ratio,
        "scale_factor": scale_factor,
    }


def profile_ours(size: int, device: str, batch: int, tile: int, overlap: float) -> None:
    """Run (a) once under cProfile and print where the time goes (top 20 by own time)."""
    import cProfile
    import pstats

    folder = Path(tempfile.mkdtemp(prefix="napari-unet-profile-"))
    image = make_image(size, folder)
    profiler = cProfile.Profile()
    profiler.enable()
    result = run_variant("a", image, folder / "labels.tif", device, batch, tile, overlap)
    profiler.disable()
    print(f"(a) on {device}, {size}x{size}: {result}")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


def foreground_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a > 0) & (b > 0)).sum() / max(((a > 0) | (b > 0)).sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--batch", type=int, default=DEFAULTS.batch_size, help="tiles per forward pass"
    )
    parser.add_argument("--tile", type=int, default=DEFAULTS.tile_size, help="tile edge (pixels)")
    parser.add_argument(
        "--overlap", type=float, default=DEFAULTS.overlap, help="tile overlap (fraction)"
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument(
        "--profile", action="store_true", help="profile (a) with cProfile instead of timing"
    )
    args = parser.parse_args()
    if args.profile:
        profile_ours(args.size, args.device, args.batch, args.tile, args.overlap)
        return
    if args.variant:
        print(
            json.dumps(
                run_variant(
                    args.variant,
                    args.image,
                    args.out,
                    args.device,
                    args.batch,
                    args.tile,
                    args.overlap,
                )
            )
        )
        return
    import platform

    import torch
    from machine import device_name

    from napari_unet.core.metrics import instance_scores
    from napari_unet.core.registry import load_bundle

    folder = Path(tempfile.mkdtemp(prefix="napari-unet-speed-"))
    image = make_image(args.size, folder)
    flops = network_flops_per_pixel(load_bundle("nuclei").network)
    peak = conv_peak(args.device)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, device {args.device} ({device_name(args.device)})"
    )
    print(
        f"image {args.size}x{args.size} (sample nuclei tiled), tile {args.tile}, overlap {args.overlap}, batch {args.batch}; network {flops / 1e6:.3f} MFLOP/pixel"
    )
    print(f"conv peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    rows = {}
    for variant in args.variants:
        runs = []
        for _ in range(args.repeats):
            out = folder / f"labels_{variant.replace(chr(39), 'p')}.tif"
            result = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--variant",
                    variant,
                    "--image",
                    str(image),
                    "--out",
                    str(out),
                    "--device",
                    args.device,
                    "--batch",
                    str(args.batch),
                    "--tile",
                    str(args.tile),
                    "--overlap",
                    str(args.overlap),
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode:
                print(f"{variant}: failed: {result.stderr.strip().splitlines()[-1:]}")
                break
            runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
        if runs:
            rows[variant] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            rows[variant]["labels"] = np.load(out.with_suffix(".npy"))
    reference = rows.get("a32", {}).get("labels")
    print(
        f"\n{'variant':<6} {'e2e MP/s':>9} {'net MP/s':>9} {'net GFLOP/s':>12} {'% bf16 peak':>11} {'peak RSS MiB':>13} {'px ratio':>9} {'fg IoU vs a32':>14} {'AP50 vs a32':>12}"
    )
    for variant, r in rows.items():
        gflops = r["network_mps"] * flops / 1e3
        iou = foreground_iou(r["labels"], reference) if reference is not None else float("nan")
        ap = (
            instance_scores(r["labels"], reference).at(0.5)
            if reference is not None
            else float("nan")
        )
        print(
            f"{variant:<6} {r['end_to_end_mps']:9.2f} {r['network_mps']:9.2f} {gflops:12.0f} {100 * gflops / peak['bf16']:10.0f}% {r['peak_rss_mib']:13.0f} {r['pixel_ratio']:9.2f} {iou:14.4f} {ap:12.4f}"
        )
    if "a" in rows and "ag" in rows:
        a, ag = rows["a"], rows["ag"]
        print(
            f"\nsize estimate: (a)/(ag) end-to-end time {ag['end_to_end_mps'] / a['end_to_end_mps']:.3f}x "
            f"(looked at {a['look_ratio']:.3f} of the pixels; scale used {a['scale_factor']:.2f}x)"
        )
    if "a" in rows and "b" in rows:
        print(
            f"\n(a)/(b) end to end: {rows['a']['end_to_end_mps'] / rows['b']['end_to_end_mps']:.2f}x",
            end="",
        )
    if "a" in rows and "b'" in rows:
        print(
            f", (a)/(b') {rows['a']['end_to_end_mps'] / rows[chr(98) + chr(39)]['end_to_end_mps']:.2f}x",
            end="",
        )
    if "a" in rows:
        print(
            f"; (a) end to end / network only: {rows['a']['end_to_end_mps'] / rows['a']['network_mps']:.0%}"
        )


if __name__ == "__main__":
    main()

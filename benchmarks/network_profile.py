import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from napari_unet.core.bundle import load_bundle
from napari_unet.core.devices import resolve_compute
from napari_unet.core.inference import NetworkPredictor

network = load_bundle("nuclei").network
predictor = NetworkPredictor(network, resolve_compute("cuda"))
for batch in (4, 16, 64):
    x = np.random.rand(batch, 1, 512, 512).astype(np.float32)
    for _ in range(3):
        predictor(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        predictor(x)
    seconds = (time.perf_counter() - t0) / 10
    gpu = torch.from_numpy(x).cuda().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            network(gpu)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            network(gpu)
        torch.cuda.synchronize()
    only = (time.perf_counter() - t0) / 10
    mp = batch * 512 * 512 / 1e6
    print(f"batch {batch}: predictor {mp / seconds:.0f} MP/s (with transfers, softmax), forward only {mp / only:.0f} MP/s = {mp / only * 0.104:.1f} TFLOP/s")
x = np.random.rand(16, 1, 512, 512).astype(np.float32)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        predictor(x)
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))

"""Multi-level RoIAlign: the TensorRT plugin's fused kernel against the portable per-level path, on a CUDA GPU.

    .venv/bin/python bench/bench_roi_align_kernel.py [--rois 1000] [--channels 256] [--size 800x1344]

The kernel is the plugin's own .cu file, run through the PyTorch harness (streamseg.export.trt_kernel), so no
TensorRT is needed. The portable path is what the portable ONNX export computes (per level: level choice,
nonzero, gather, torchvision roi_align; then one inverse permutation), run eagerly on the same GPU. Both pool the
box head's 7x7 (sampling ratio 2) from a P2-P5 pyramid of an 800x1344 input; times are CUDA-event medians.
Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STRIDES = (4.0, 8.0, 16.0, 32.0)


@dataclass
class Figures:
    rois: int
    channels: int
    size: tuple[int, int]
    kernel_ms: float
    kernel_fp16_ms: float
    portable_ms: float
    max_abs_diff: float
    device: str

    def line(self) -> str:
        return (f"multi-level RoIAlign, {self.rois} RoIs, C={self.channels}, input {self.size[0]}x{self.size[1]}, "
                f"7x7, sampling 2 on {self.device}: fused kernel {self.kernel_ms:.3f} ms (fp16 "
                f"{self.kernel_fp16_ms:.3f} ms), portable per-level path {self.portable_ms:.3f} ms, "
                f"speed-up x{self.portable_ms / self.kernel_ms:.1f}; max |kernel - portable| {self.max_abs_diff:.2e}")


def _median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _inputs(rois: int, channels: int, size: tuple[int, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    features = [torch.randn(1, channels, h // int(s), w // int(s), generator=g).cuda() for s in STRIDES]
    side = torch.exp(torch.empty(rois, 2).uniform_(math.log(8), math.log(max(h, w)), generator=g))
    x1 = torch.empty(rois).uniform_(0, w, generator=g)
    y1 = torch.empty(rois).uniform_(0, h, generator=g)
    boxes = torch.stack([torch.zeros(rois), x1, y1, x1 + side[:, 0], y1 + side[:, 1]], dim=1).cuda()
    return boxes, features


def time_kernel_and_portable(kernel, rois: int = 1000, channels: int = 256, size: tuple[int, int] = (800, 1344),
                             repeats: int = 50) -> Figures:
    from streamseg.export.onnx_export import RoIAlignSpec, portable_multi_level_roi_align

    boxes, features = _inputs(rois, channels, size)
    spec = RoIAlignSpec(7, 2)

    def fused(b=boxes, f=features):
        return kernel.multi_level_roi_align(b, f, 7, 7, 2, 1, 0, list(STRIDES), 56, 1.0)

    half = [f.half() for f in features]
    with torch.inference_mode():
        diff = (fused() - portable_multi_level_roi_align(boxes, features, spec)).abs().max().item()
        return Figures(
            rois, channels, size,
            kernel_ms=_median_ms(fused, repeats),
            kernel_fp16_ms=_median_ms(lambda: fused(boxes, half), repeats),
            portable_ms=_median_ms(lambda: portable_multi_level_roi_align(boxes, features, spec), repeats),
            max_abs_diff=diff, device=torch.cuda.get_device_name(),
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", default="800x1344", help="network input HxW")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU visible (torch.cuda.is_available() is False); the kernel runs only on NVIDIA GPUs")
        return 0
    from streamseg.export.trt_kernel import load_kernel_extension

    h, w = (int(v) for v in args.size.lower().split("x"))
    print(time_kernel_and_portable(load_kernel_extension(), args.rois, args.channels, (h, w), args.repeats).line())
    return 0


if __name__ == "__main__":
    sys.exit(main())

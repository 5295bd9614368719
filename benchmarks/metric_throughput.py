#!/usr/bin/env python
"""Does scoring dominate evaluation? Metric time per image against the forward pass that made it.

On CPU, at 480 × 640 (NYUv2 / ScanNet size), per image (batch 1, as the eval configs run):

* forward: ``LotusModel.predict_image`` of the quickstart-size model (SmallUNet (32, 64, 128),
  space-to-depth codec, factor 4): encode, one UNet call, decode, resize;
* depth metrics: ``DepthMetrics`` with ``DisparityAlignment`` (per-image least squares in float64,
  ten metrics), valid range and Eigen crop mask applied, on predictions of that model;
* normal metrics: ``NormalMetrics`` (angular error in float64, pooled sums, 0.01° histogram).

Each metric is timed over ``--images`` images (100 by default; ``update`` per image, one
``compute`` at the end), the forward over ``--forwards`` images; medians are printed with the
ratio metric / forward. Everything runs on the same CPU threads, so the ratio is the share of an
all-CPU evaluation that goes to scoring (docs/evaluation.md has the measured numbers).

    python benchmarks/metric_throughput.py [--images 100] [--forwards 10] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from lotus_pl.alignment import DisparityAlignment
from lotus_pl.codecs import SpaceToDepth
from lotus_pl.denoisers import SmallUNet
from lotus_pl.evaluation.crops import nyu_eigen_mask
from lotus_pl.metrics import DepthMetrics, NormalMetrics
from lotus_pl.model import LotusModel
from lotus_pl.tasks import Depth, NormalizedDisparity

HEIGHT, WIDTH = 480, 640


def quickstart_model() -> LotusModel:
    """The quickstart's architecture (weights do not change the timing)."""
    model = LotusModel(task=Depth(encoding=NormalizedDisparity(), min_depth=1e-3, max_depth=10.0),
                       denoiser=SmallUNet(block_out_channels=(32, 64, 128), cross_attention=(False, False, True)),
                       codec=SpaceToDepth(factor=4))
    return model.eval()


def images(count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Smooth random images in [-1, 1], ``[1, 3, H, W]``."""
    low = torch.rand(count, 3, HEIGHT // 16, WIDTH // 16, generator=generator) * 2 - 1
    return list(F.interpolate(low, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False).split(1))


def ground_truth(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Depth 0.5..9 m with 5 % missing pixels, the Eigen crop, and unit normals (10 % invalid)."""
    depth = 0.5 + 8.5 * torch.rand(1, 1, HEIGHT, WIDTH, generator=generator)
    depth[torch.rand(depth.shape, generator=generator) < 0.05] = 0.0
    crop = torch.from_numpy(nyu_eigen_mask((HEIGHT, WIDTH)))[None, None]
    normal = F.normalize(torch.randn(1, 3, HEIGHT, WIDTH, generator=generator), dim=1)
    normal = normal * (torch.rand(1, 1, HEIGHT, WIDTH, generator=generator) > 0.1)
    return depth, crop, normal


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100, help="images scored by each metric")
    parser.add_argument("--forwards", type=int, default=10, help="images run through the model")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)

    model = quickstart_model()
    inputs = images(args.forwards + 1, generator)
    with torch.no_grad():
        model.predict_image(inputs[0])  # warm-up
        forward = [timed(model.predict_image, x) for x in inputs[1:]]
    forward_times = [t for t, _ in forward]
    predictions = [p for _, p in forward]

    depth, crop, normal = ground_truth(generator)
    depth_metric = DepthMetrics(alignment=DisparityAlignment(), min_depth=1e-3, max_depth=10.0)
    depth_times = [timed(depth_metric.update, predictions[i % len(predictions)], depth, crop)[0] for i in range(args.images)]
    depth_compute, depth_results = timed(depth_metric.compute)

    normal_metric = NormalMetrics()
    pred_normals = [F.normalize(normal + 0.3 * torch.randn(normal.shape, generator=generator), dim=1) for _ in range(4)]
    normal_times = [timed(normal_metric.update, pred_normals[i % 4], normal, crop)[0] for i in range(args.images)]
    normal_compute, normal_results = timed(normal_metric.compute)

    forward_median = statistics.median(forward_times)
    result = {
        "device": f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads",
        "size": [HEIGHT, WIDTH],
        "forward_images": args.forwards,
        "metric_images": args.images,
        "forward_median_s": forward_median,
        "depth_update_median_s": statistics.median(depth_times),
        "depth_total_s": sum(depth_times) + depth_compute,
        "normal_update_median_s": statistics.median(normal_times),
        "normal_total_s": sum(normal_times) + normal_compute,
        "depth_over_forward": statistics.median(depth_times) / forward_median,
        "normal_over_forward": statistics.median(normal_times) / forward_median,
        "depth_images_counted": depth_metric.num_images,
        "normal_pixels_pooled": normal_metric.num_pixels,
        "depth_abs_rel_check": float(depth_results["abs_rel"]),
        "normal_mean_check": float(normal_results["mean"]),
    }
    print(f"{result['device']}, images {HEIGHT}x{WIDTH}")
    print(f"  forward (quickstart SmallUNet, predict_image) median {1000 * forward_median:8.1f} ms/image  "
          f"({args.forwards} images)")
    for name in ("depth", "normal"):
        print(f"  {name:6s} metrics median {1000 * result[f'{name}_update_median_s']:8.1f} ms/image  "
              f"= {result[f'{name}_over_forward']:.3f} x forward   ({args.images} images, total with compute "
              f"{result[f'{name}_total_s']:.2f} s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""lotus_pl's ONNX Runtime path against eager PyTorch, and against diffusers' ``MarigoldDepthPipeline``.

The components are those of ``predict_vs_marigold.py`` (a small SD-shaped VAE and an 8-channel UNet
of 16.3M parameters, built offline; not the SD2 sizes, said so in the results), Lotus-G, x0, one step.
Per image at 576×768 (processing resolution 768, latent 72×96), batch 1, fp32, medians over rounds in
which the cases alternate:

* eager: ``PredictionGraph`` (encode -> UNet -> decode -> depth decoding) in PyTorch, ``inference_mode``;
* onnxruntime: the same graph exported by ``lotus_pl.onnx_export.export_onnx`` (CPU provider, all
  graph optimisations), fed the same image and noise; parity checked (max |difference|);
* Marigold 1 step × 1 member (equal work; its own resize/normalisation included) fed the same noise
  (``latents=``); its output is compared with onnxruntime's at the input size.

    python benchmarks/onnx_vs_eager.py [--quick] [--threads 1] [--rounds 5] [--out result.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def _marigold_bench():
    spec = importlib.util.spec_from_file_location("predict_vs_marigold", HERE / "predict_vs_marigold.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny components at 64 px: a smoke test")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5; quick 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    from lotus_pl.onnx_export import ONNX_FILE, PredictionGraph, export_onnx

    bench = _marigold_bench()
    bench.quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = bench.SIZES["quick" if args.quick else "full"]
    rounds = args.rounds or (2 if args.quick else 5)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        components = bench.write_components(folder, size)
        model = bench.lotus_model(folder, size["resolution"], device)
        graph = PredictionGraph(model).eval()
        bench.progress("exporting the ONNX graph")
        export_onnx(model, folder)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if args.threads:
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        pipe = bench.marigold_pipeline(folder, size["resolution"], device)

        height, width = size["input_hw"]
        image = bench.sample_image(height, width, device)  # [-1, 1], already at the processing size
        noise = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(0))
        feed = {"image": image.numpy(), "noise": noise.numpy()}

        def eager() -> torch.Tensor:
            with torch.inference_mode():
                return graph(image, noise)

        def onnxruntime() -> np.ndarray:
            return session.run(None, feed)[0]

        def marigold() -> torch.Tensor:
            with torch.inference_mode():
                return bench.marigold_call(pipe, image, 1, 1, size["resolution"], latents=noise)

        reference, fast, theirs = eager().numpy(), onnxruntime(), marigold().cpu().numpy()
        times = bench.interleaved({"eager": eager, "onnxruntime": onnxruntime, "marigold_1x1": marigold}, rounds, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "onnxruntime": ort.__version__, "threads": torch.get_num_threads()},
        "components": components, "input_hw": [height, width], "processing_resolution": size["resolution"], "rounds": rounds,
        "times_s": times, "median_s": med,
        "onnxruntime_speedup_over_eager": med["eager"] / med["onnxruntime"],
        "onnxruntime_speedup_over_marigold_1x1": med["marigold_1x1"] / med["onnxruntime"],
        "max_abs_diff_onnx_vs_eager": float(np.abs(fast - reference).max()),
        "max_abs_diff_onnx_vs_marigold": float(np.abs(fast - theirs).max()),
    }
    print(f"eager {med['eager'] * 1e3:.1f} ms, onnxruntime {med['onnxruntime'] * 1e3:.1f} ms "
          f"({result['onnxruntime_speedup_over_eager']:.2f}x), Marigold 1x1 {med['marigold_1x1'] * 1e3:.1f} ms "
          f"({result['onnxruntime_speedup_over_marigold_1x1']:.2f}x of onnxruntime); max |onnx - eager| "
          f"{result['max_abs_diff_onnx_vs_eager']:.2e}, max |onnx - Marigold| {result['max_abs_diff_onnx_vs_marigold']:.2e}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

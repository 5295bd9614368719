"""Temporal consistency of depth on a video, with and without Lotus-G's ``video_init``.

Renders a procedural room seen by a camera that pans and dollies (exact depth for every frame),
writes it as a lossless video, runs ``lotus_pl predict`` on it with a trained checkpoint, and
prints, per setting, the temporal-consistency figure of :mod:`lotus_pl.temporal` (mean
frame-to-frame change of aligned relative disparity, as a fraction of its range) next to the same
figure of the ground truth, which is the floor: the true motion of the scene. Accuracy (AbsRel after
per-frame alignment) is printed too, so that a steadier prediction is not bought with a worse one.

    python benchmarks/video_consistency.py --config experiments/quickstart.yaml \\
        --config experiments/variants/quickstart_lotus_g.yaml \\
        --ckpt_path runs/quickstart_lotus_g/checkpoints/last.ckpt --out docs/benchmarks/video_consistency.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import av
import numpy as np
import torch

from lotus_pl.alignment import DisparityAlignment
from lotus_pl.cli import main as lotus_pl
from lotus_pl.data.renderer import random_scene, render
from lotus_pl.metrics import DepthMetrics
from lotus_pl.temporal import temporal_consistency


def render_sequence(frames: int, size: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """RGB frames and exact planar depth of one room under a smooth camera path."""
    scene, camera = random_scene(np.random.default_rng(seed))
    rgbs, depths = [], []
    for k in range(frames):
        x, y, z = camera.position
        moved = dataclasses.replace(camera, yaw_deg=camera.yaw_deg + 0.6 * k, position=(x + 0.02 * k, y, z - 0.03 * k))
        view = render(scene, moved, size, size)
        rgbs.append(view.rgb)
        depths.append(view.depth)
    return rgbs, depths


def write_video(rgbs: list[np.ndarray], path: Path, fps: int = 12) -> None:
    """Lossless FFV1 in Matroska, so the model sees exactly the rendered pixels."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = rgbs[0].shape[1], rgbs[0].shape[0], "bgr0"
        for rgb in rgbs:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        container.mux(stream.encode())


def predict(configs: list[str], ckpt_path: str | None, video: Path, out: Path, video_init: bool) -> list[np.ndarray]:
    args = ["predict", *[a for c in configs for a in ("--config", c)], f"--data.predict_input={video}",
            "--data.predict_batch_size=1", "--data.num_workers=0", f"--model.video_init={str(video_init).lower()}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            "--trainer.callbacks=lotus_pl.callbacks.PredictionWriter", f"--trainer.callbacks.output_dir={out}"]
    if ckpt_path:
        args.append(f"--ckpt_path={ckpt_path}")
    lotus_pl(args)
    return [np.load(p) for p in sorted(out.glob(f"{video.stem}_*_depth.npy"))]


def accuracy(preds: list[np.ndarray], depths: list[np.ndarray]) -> float:
    metric = DepthMetrics(alignment=DisparityAlignment())
    for pred, depth in zip(preds, depths):
        metric.update(torch.from_numpy(pred)[None, None], torch.from_numpy(depth)[None, None])
    return float(metric.compute()["abs_rel"])


def run(configs: list[str], ckpt_path: str | None, frames: int, size: int, seed: int, video_init: list[bool]) -> dict:
    rgbs, depths = render_sequence(frames, size, seed)
    truth = [torch.from_numpy(np.where(d > 0, 1.0 / np.maximum(d, 1e-6), np.nan)) for d in depths]
    results = {"frames": frames, "size": size, "seed": seed, "ckpt_path": ckpt_path,
               "ground_truth": {"temporal_change": temporal_consistency(truth, "disparity")}}
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "pan.mkv"
        write_video(rgbs, video)
        for init in video_init:
            preds = predict(configs, ckpt_path, video, Path(tmp) / f"out_{init}", init)
            if len(preds) != frames:
                raise RuntimeError(f"expected {frames} predicted frames, found {len(preds)}")
            results[f"video_init={init}"] = {
                "temporal_change": temporal_consistency([torch.from_numpy(p) for p in preds], "disparity"),
                "abs_rel": accuracy(preds, depths),
            }
    floor = results["ground_truth"]["temporal_change"]
    print(f"temporal change of aligned disparity, {frames} frames at {size} px (fraction of the range per frame):")
    print(f"  ground truth (the scene's own motion): {floor:.4f}")
    for key, value in results.items():
        if key.startswith("video_init"):
            print(f"  {key:<17} {value['temporal_change']:.4f} ({value['temporal_change'] / max(floor, 1e-12):.2f}× ground truth)"
                  f"   AbsRel {value['abs_rel']:.4f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="model config(s), composed left to right")
    parser.add_argument("--ckpt_path", default=None)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--deterministic", action="store_true", help="Lotus-D: no video_init to compare")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()
    results = run(args.config, args.ckpt_path, args.frames, args.size, args.seed,
                  [False] if args.deterministic else [False, True])
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""TSDF fusion time per view at 576x768: ``TSDFFusion.fuse`` against bare Open3D integration of the
same depth maps into the same volume, and the peak memory of each.

    python benchmarks/fusion.py --views 6 --repeats 3 --out docs/benchmarks/fusion.json

The depth maps are the renderer's exact depth of one random scene along a walk-through
(``render_sequence``-style cameras, rendered at 576x768). Both sides build an Open3D
``UniformTSDFVolume`` with the same origin, size, voxel and truncation, integrate every view and
extract the triangle mesh; lotus_pl's side adds what it does around Open3D (bounds from the
depth, size and validity checks naming the view, the incidence test with the normals, the
pixel-centre and pose conversions, vertex normals). Time: the median over ``--repeats`` of the
whole fusion divided by the number of views. Peak memory: the process's resident set size
sampled every 5 ms during the fusion, above the resident size just before it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from lotus_pl.data.multiview import WalkThrough, posed_camera
from lotus_pl.data.renderer import random_scene, render
from lotus_pl.geometry.fusion import TSDFFusion, import_open3d, open3d_intrinsic


class PeakRSS:
    """Peak resident set size above the start, sampled by a thread."""

    def __enter__(self):
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def bare_open3d(depths, cameras, lo, cells, voxel, trunc):
    o3d = import_open3d()
    volume = o3d.pipelines.integration.UniformTSDFVolume(
        length=cells * voxel, resolution=cells, sdf_trunc=trunc,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8, origin=lo.reshape(3, 1))
    for depth, cam in zip(depths, cameras):
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.zeros((*depth.shape, 3), np.uint8)), o3d.geometry.Image(depth),
            depth_scale=1.0, depth_trunc=1000.0, convert_rgb_to_intensity=False)
        volume.integrate(rgbd, open3d_intrinsic(cam), np.linalg.inv(cam.cam_to_world))
    return volume.extract_triangle_mesh()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="docs/benchmarks/fusion.json")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    scene, base = random_scene(rng)
    cams = WalkThrough(num_views=args.views).cameras(base, rng)
    start = time.perf_counter()
    rendered = [render(scene, c, args.height, args.width) for c in cams]
    print(f"rendered {args.views} views at {args.height}x{args.width} in {time.perf_counter() - start:.1f} s", flush=True)
    cameras = [posed_camera(f"view_{i:02d}.png", c, v) for i, (c, v) in enumerate(zip(cams, rendered))]
    depths = [np.where(v.depth > 0, v.depth, np.nan).astype(np.float32) for v in rendered]
    normals = [-v.normal.astype(np.float64) for v in rendered]
    bare_depths = [np.ascontiguousarray(v.depth, dtype=np.float32) for v in rendered]  # 0 = invalid for Open3D

    fusion = TSDFFusion(resolution=args.resolution)
    lo, hi = fusion.bounds(depths, cameras)
    voxel = float(np.linalg.norm(hi - lo)) / args.resolution
    cells = int(np.ceil(float((hi - lo).max()) / voxel))
    fusion = TSDFFusion(voxel_size=voxel)
    ours, bare, ours_mem, bare_mem = [], [], [], []
    for _ in range(args.repeats):  # alternate, so drifts in machine load hit both
        with PeakRSS() as mem:
            t = time.perf_counter()
            result = fusion.fuse(depths, cameras, normals=normals)
            ours.append((time.perf_counter() - t) / args.views)
        ours_mem.append(mem.mib)
        with PeakRSS() as mem:
            t = time.perf_counter()
            mesh = bare_open3d(bare_depths, cameras, lo, cells, voxel, fusion.trunc_voxels * voxel)
            bare.append((time.perf_counter() - t) / args.views)
        bare_mem.append(mem.mib)
    med_ours, med_bare = float(np.median(ours)), float(np.median(bare))
    out = {"views": args.views, "size": [args.height, args.width], "voxel": voxel, "cells_per_side": cells,
           "lotus_pl_s_per_view": med_ours, "open3d_s_per_view": med_bare, "overhead_ratio": med_ours / med_bare,
           "lotus_pl_peak_mib": float(np.max(ours_mem)), "open3d_peak_mib": float(np.max(bare_mem)),
           "lotus_pl_triangles": len(result.mesh.triangles), "open3d_triangles": len(mesh.triangles),
           "repeats": args.repeats}
    print(f"{args.views} views at {args.height}x{args.width}, voxel {voxel:.4f} m ({cells}^3 voxels)")
    print(f"  lotus_pl TSDFFusion: {med_ours * 1000:.1f} ms/view, peak +{out['lotus_pl_peak_mib']:.0f} MiB, "
          f"{out['lotus_pl_triangles']} triangles")
    print(f"  bare Open3D:         {med_bare * 1000:.1f} ms/view, peak +{out['open3d_peak_mib']:.0f} MiB, "
          f"{out['open3d_triangles']} triangles")
    print(f"  overhead ratio: {out['overhead_ratio']:.3f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Multi-view ground truth: one procedural scene seen by K cameras along a trajectory.

Each sequence has exact poses (camera-to-world, OpenCV frame) and intrinsics, per-view depth and
normals from :func:`lotus_pl.data.renderer.render`, a dense sample of the true surface that the
cameras see (every valid pixel of each view rendered at ``surface_scale`` times the resolution,
lifted to the world and thinned to one point per ``surface_spacing`` cell), and simulated SfM
points (surface points that at least two views see unoccluded, with those views as observations).

``lotus_pl data synthetic-multiview --out DIR --num_scenes 5 --num_views 8`` writes, per scene,
a plain folder that the usual tools read (``lotus_pl predict`` on ``images/``, ``lotus_pl fuse``
with ``--poses`` any of the three pose files)::

    scene_000/images/view_00.png          input images
    scene_000/depth/view_00_depth.npy     exact planar depth in metres (0 = nothing), with
    scene_000/depth/view_00_depth.json    {"space": "metric"}, so it fuses like a prediction
    scene_000/normal/view_00_normal.npy   exact normals [3, H, W], project frame
    scene_000/cameras.json                lotus_pl's poses; transforms.json (Nerfstudio), colmap/ (text model)
    scene_000/surface.npz                 points [N, 3], normals [N, 3] (world), extent
    manifest.json                         scenes, views, seeds, sizes and the command
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from lotus_pl.data.renderer import Box, Camera, Plane, RenderedView, Scene, Sphere, _intersect, random_scene, render
from lotus_pl.geometry.cameras import CameraSet, PosedCamera, SparsePoints, write_cameras_json, write_colmap_text, write_transforms
from lotus_pl.geometry.single_view import Intrinsics

__all__ = ["MultiViewSequence", "Orbit", "Trajectory", "WalkThrough", "make_synthetic_multiview", "render_sequence", "surface_distance",
           "write_sequence"]


class Trajectory(Protocol):
    def cameras(self, base: Camera, rng: np.random.Generator) -> list[Camera]: ...


def _look_at(position: np.ndarray, target: np.ndarray, hfov: float) -> Camera:
    """A renderer camera at ``position`` looking at ``target`` (no roll)."""
    f = target - position
    f = f / np.linalg.norm(f)
    pitch = math.degrees(math.asin(float(np.clip(f[1], -1, 1))))
    yaw = math.degrees(math.atan2(-f[0], -f[2]))
    return Camera(tuple(float(x) for x in position), yaw, pitch, hfov)


def _target(base: Camera, distance: float) -> np.ndarray:
    """The point ``distance`` metres ahead of ``base`` along its optical axis, kept above the floor."""
    forward = base.rotation()[:, 2]
    target = np.asarray(base.position) + distance * forward
    target[1] = max(target[1], 0.3)
    return target


@dataclass
class WalkThrough:
    """Walk sideways (``sidestep`` metres in all, across the view) and ``forward`` metres ahead,
    looking at a point ``look_distance`` ahead of the start: a handheld scan of the room."""

    num_views: int = 8
    sidestep: float = 1.6
    forward: float = 0.6
    look_distance: float = 4.0

    def cameras(self, base: Camera, rng: np.random.Generator) -> list[Camera]:
        target = _target(base, self.look_distance)
        rot = base.rotation()
        right, forward = rot[:, 0], rot[:, 2] * np.array([1, 0, 1])
        forward = forward / max(np.linalg.norm(forward), 1e-9)
        out = []
        for s in np.linspace(-0.5, 0.5, self.num_views):
            position = np.asarray(base.position) + s * self.sidestep * right + (s + 0.5) * self.forward * forward
            position[1] += float(rng.uniform(-0.05, 0.05))
            out.append(_look_at(position, target, base.hfov_deg))
        return out


@dataclass
class Orbit:
    """An arc of ``arc_deg`` degrees around a point ``look_distance`` ahead of the base camera, at its
    height, every camera looking at that point."""

    num_views: int = 8
    arc_deg: float = 50.0
    look_distance: float = 3.5

    def cameras(self, base: Camera, rng: np.random.Generator) -> list[Camera]:
        target = _target(base, self.look_distance)
        offset = np.asarray(base.position) - target
        radius, height = math.hypot(offset[0], offset[2]), offset[1]
        start = math.atan2(offset[0], offset[2])
        out = []
        for a in np.linspace(-0.5, 0.5, self.num_views) * math.radians(self.arc_deg):
            position = target + np.array([radius * math.sin(start + a), height, radius * math.cos(start + a)])
            out.append(_look_at(position, target, base.hfov_deg))
        return out


@dataclass
class MultiViewSequence:
    """One scene's views: renderer cameras, rendered views (exact depth/normals), the posed cameras,
    the true surface sample and simulated SfM points."""

    scene: Scene
    cameras: list[Camera]
    views: list[RenderedView]
    posed: CameraSet
    surface_points: np.ndarray  # [N, 3] world
    surface_normals: np.ndarray  # [N, 3] world, unit
    extent: float  # diagonal of the surface sample's bounding box, metres


def surface_distance(scene: Scene, points: np.ndarray) -> np.ndarray:
    """``[N]`` exact distance from world points to the nearest primitive surface of ``scene``
    (analytic: planes, spheres, box faces), to score a reconstruction against the true geometry."""
    p = np.asarray(points, dtype=np.float64)
    best = np.full(len(p), np.inf)
    for prim in scene.primitives:
        if isinstance(prim, Plane):
            n = np.asarray(prim.normal, dtype=np.float64)
            d = np.abs((p - np.asarray(prim.point)) @ (n / np.linalg.norm(n)))
        elif isinstance(prim, Sphere):
            d = np.abs(np.linalg.norm(p - np.asarray(prim.center), axis=1) - prim.radius)
        elif isinstance(prim, Box):
            lo, hi = np.asarray(prim.lo), np.asarray(prim.hi)
            q = np.abs(p - (lo + hi) / 2) - (hi - lo) / 2
            d = np.linalg.norm(np.maximum(q, 0), axis=1) + np.abs(np.minimum(q.max(axis=1), 0))
        else:
            raise TypeError(f"no distance for primitive {type(prim).__name__}")
        best = np.minimum(best, d)
    return best


def posed_camera(name: str, camera: Camera, view: RenderedView) -> PosedCamera:
    """The renderer camera as a :class:`PosedCamera` (OpenCV camera-to-world)."""
    pose = np.eye(4)
    pose[:3, :3] = camera.rotation()
    pose[:3, 3] = camera.position
    h, w = view.depth.shape
    return PosedCamera(name, w, h, Intrinsics(view.fx, view.fy, view.cx, view.cy), pose)


def world_points(view: RenderedView, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points and unit world normals of a view's valid pixels (row-major)."""
    valid = view.depth > 0
    k = Intrinsics(view.fx, view.fy, view.cx, view.cy)
    cam = k.rays(*view.depth.shape)[valid] * view.depth[valid, None]
    normals = -view.normal[valid].astype(np.float64)  # project frame -> OpenCV camera frame
    return cam @ pose[:3, :3].T + pose[:3, 3], normals @ pose[:3, :3].T


def thin(points: np.ndarray, spacing: float, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """One point per ``spacing``-sized cell (the first), and the matching rows of ``others``."""
    cells = np.floor(points / spacing).astype(np.int64)
    _, keep = np.unique(cells, axis=0, return_index=True)
    keep.sort()
    return (points[keep], *(o[keep] for o in others))


def _sparse_points(posed: CameraSet, views: list[RenderedView], candidates: np.ndarray, num: int,
                   rng: np.random.Generator) -> SparsePoints:
    """Surface points seen unoccluded (depth agrees to 0.1 %) in at least two views."""
    pick = candidates[rng.permutation(len(candidates))[: 20 * num]]
    seen = np.zeros((len(posed.cameras), len(pick)), dtype=bool)
    for i, (cam, view) in enumerate(zip(posed.cameras, views)):
        uv, z = cam.project(pick)
        h, w = view.depth.shape
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        u = np.clip(np.floor(uv[:, 0]).astype(int), 0, w - 1)
        v = np.clip(np.floor(uv[:, 1]).astype(int), 0, h - 1)
        truth = view.depth[v, u]
        # the pixel's own surface point: compare along the ray through the pixel centre is not
        # exact for off-centre points, so accept the nearer of a 1 % band around the rendered depth
        seen[i] = inside & (truth > 0) & (np.abs(z - truth) < 0.01 * truth)
    multi = np.nonzero(seen.sum(0) >= 2)[0][:num]
    xyz = pick[multi]
    observed = {cam.name: np.nonzero(seen[i, multi])[0] for i, cam in enumerate(posed.cameras)}
    return SparsePoints(xyz, observed)


def _reachable(scene: Scene, start: Camera, cameras: list[Camera], clearance: float = 0.3) -> bool:
    """Whether every camera can be walked to from ``start`` without passing through a surface (and
    keeps ``clearance`` metres from it): the renderer's planes are infinite and two-sided, so a
    camera that stepped through a wall would see its back, and other views would look occluded."""
    origin = np.asarray(start.position, dtype=np.float64)
    for cam in cameras:
        step = np.asarray(cam.position, dtype=np.float64) - origin
        length = float(np.linalg.norm(step))
        if length < 1e-9:
            continue
        direction = (step / length)[None]
        if any(float(_intersect(prim, origin, direction)[0]) < length + clearance for prim in scene.primitives):
            return False
    return True


def render_sequence(seed: int, trajectory: Trajectory | None = None, height: int = 128, width: int = 128,
                    surface_scale: int = 2, surface_spacing: float | None = None, num_sparse: int = 400,
                    min_valid: float = 0.6, attempts: int = 20) -> MultiViewSequence:
    """Render one random scene along ``trajectory`` (default :class:`WalkThrough`). Scenes whose views
    see too little surface (``min_valid`` of the pixels), or whose trajectory passes through a
    surface, are redrawn from the next sub-seed."""
    trajectory = trajectory if trajectory is not None else WalkThrough()
    for attempt in range(attempts):
        rng = np.random.default_rng([seed, attempt])
        scene, base = random_scene(rng)
        cameras = trajectory.cameras(base, rng)
        if not _reachable(scene, base, cameras):
            continue
        views = [render(scene, cam, height, width) for cam in cameras]
        if min(float(v.valid.mean()) for v in views) >= min_valid:
            break
    else:
        raise RuntimeError(f"seed {seed}: no scene in {attempts} attempts has a trajectory inside the room with every "
                           f"view at least {min_valid:.0%} covered")
    posed = CameraSet([posed_camera(f"view_{i:02d}.png", c, v) for i, (c, v) in enumerate(zip(cameras, views))],
                      source=f"synthetic seed {seed}")
    dense_pts, dense_nrm = [], []
    for cam, pc in zip(cameras, posed.cameras):
        dense = render(scene, cam, height * surface_scale, width * surface_scale)
        p, n = world_points(dense, pc.cam_to_world)
        dense_pts.append(p)
        dense_nrm.append(n)
    points, normals = np.concatenate(dense_pts), np.concatenate(dense_nrm)
    extent = float(np.linalg.norm(points.max(0) - points.min(0)))
    spacing = surface_spacing if surface_spacing is not None else extent / 1000.0
    points, normals = thin(points, spacing, normals)
    posed.sparse = _sparse_points(posed, views, points, num_sparse, rng)
    return MultiViewSequence(scene, cameras, views, posed, points.astype(np.float32), normals.astype(np.float32), extent)


def write_sequence(seq: MultiViewSequence, folder: Path, seed: int) -> dict:
    """Write one sequence in the folder layout of the module docstring; return its manifest entry."""
    for sub in ("images", "depth", "normal"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for cam, view in zip(seq.posed.cameras, seq.views):
        stem = cam.stem
        Image.fromarray(view.rgb).save(folder / "images" / cam.name)
        np.save(folder / "depth" / f"{stem}_depth.npy", view.depth)
        (folder / "depth" / f"{stem}_depth.json").write_text(json.dumps({"space": "metric", "unit": "metres",
                                                                          "note": "exact planar depth, 0 = no surface"}))
        np.save(folder / "normal" / f"{stem}_normal.npy", view.normal.transpose(2, 0, 1))
    write_cameras_json(folder / "cameras.json", seq.posed)
    write_transforms(folder / "transforms.json", seq.posed)
    write_colmap_text(folder / "colmap", seq.posed)
    np.savez_compressed(folder / "surface.npz", points=seq.surface_points, normals=seq.surface_normals,
                        extent=np.float64(seq.extent))
    return {"folder": folder.name, "seed": seed, "views": len(seq.views), "size": list(seq.views[0].depth.shape),
            "surface_points": len(seq.surface_points), "sparse_points": len(seq.posed.sparse.xyz), "extent": seq.extent}


def make_synthetic_multiview(out: str = "data/multiview", num_scenes: int = 5, num_views: int = 8, height: int = 128,
                             width: int = 128, seed: int = 0, trajectory: str = "walk", num_sparse: int = 400) -> Path:
    """Render ``num_scenes`` sequences of ``num_views`` views each (``trajectory``: "walk" for
    :class:`WalkThrough`, "orbit" for :class:`Orbit`) into ``out``, with ``out/manifest.json``.

    Args:
        out: output folder.
        num_scenes: how many scenes (seeds ``seed``, ``seed + 1``, ...).
        num_views: views per scene.
        height: image height in pixels.
        width: image width in pixels.
        seed: first scene's seed.
        trajectory: "walk" (sideways walk-through) or "orbit" (arc around a point).
        num_sparse: simulated SfM points per scene.
    """
    kinds = {"walk": WalkThrough, "orbit": Orbit}
    if trajectory not in kinds:
        raise ValueError(f"trajectory must be one of {sorted(kinds)}, got {trajectory!r}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    scenes = []
    for i in range(num_scenes):
        seq = render_sequence(seed + i, kinds[trajectory](num_views=num_views), height, width, num_sparse=num_sparse)
        scenes.append(write_sequence(seq, root / f"scene_{i:03d}", seed + i))
        print(f"scene_{i:03d}: {num_views} views, {scenes[-1]['surface_points']} surface points, "
              f"{scenes[-1]['sparse_points']} sparse points, extent {seq.extent:.2f} m", flush=True)
    manifest = {"kind": "lotus_pl synthetic-multiview", "trajectory": trajectory, "num_views": num_views,
                "size": [height, width], "scenes": scenes,
                "command": f"lotus_pl data synthetic-multiview --out {out} --num_scenes {num_scenes} --num_views {num_views} "
                           f"--height {height} --width {width} --seed {seed} --trajectory {trajectory}"}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root / "manifest.json"

"""TSDF fusion of posed metric depth maps into one mesh and point cloud, with Open3D.

Open3D (the ``.[3d]`` extra) is the field's standard TSDF (e.g. 2DGS's mesh extraction uses it):
its ``ScalableTSDFVolume`` integrates each view and marching cubes extracts the surface. What this
module adds around it: the conversion of lotus_pl's conventions (pixel centres at ``u + 0.5``, so
Open3D's ``cx`` is ours minus 0.5; OpenCV camera-to-world inverted to Open3D's extrinsic), checks
that name the view (size against the camera, no valid depth), a voxel size from the scene's extent
when none is given, and the use of normals (predicted or exact, when given) to drop pixels seen at
grazing incidence, where a depth error moves the surface most (``min_incidence_cos``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lotus_pl.geometry.cameras import PosedCamera

__all__ = ["FusionResult", "TSDFFusion", "import_open3d", "open3d_intrinsic"]


def import_open3d() -> Any:
    """Open3D, or an error saying how to install it."""
    try:
        import open3d
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("multi-view fusion needs Open3D: pip install -e '.[3d]' (or pip install open3d)") from exc
    return open3d


def open3d_intrinsic(camera: PosedCamera) -> Any:
    """Open3D's pinhole intrinsic for ``camera``: Open3D puts pixel centres at integers."""
    o3d = import_open3d()
    k = camera.intrinsics
    return o3d.camera.PinholeCameraIntrinsic(camera.width, camera.height, k.fx, k.fy, k.cx - 0.5, k.cy - 0.5)


@dataclass
class FusionResult:
    """The fused ``mesh`` (Open3D TriangleMesh, vertex normals computed), the Open3D ``volume``,
    the voxel size used and how many pixels each view contributed; :attr:`cloud` is the TSDF's
    point cloud, extracted when first asked for (it costs another pass over the volume)."""

    mesh: Any
    volume: Any
    voxel_size: float
    pixels_per_view: dict[str, int]

    @property
    def cloud(self) -> Any:
        if not hasattr(self, "_cloud"):
            self._cloud = self.volume.extract_point_cloud()
        return self._cloud


@dataclass
class TSDFFusion:
    """Truncated signed distance fusion (Curless & Levoy) and marching cubes.

    Args:
        voxel_size: metres; None: ``extent / resolution``, the extent being the diagonal of the
            bounding box of the back-projected depth (:meth:`bounds`).
        resolution: voxels along the extent's diagonal when ``voxel_size`` is None.
        trunc_voxels: the truncation distance in voxels.
        max_depth: ignore depth beyond this (metres); None keeps all.
        min_incidence_cos: with normals, drop pixels whose |cos| between the normal and the viewing
            ray is below this (grazing incidence); 0 keeps all.
        max_cells: most voxels along the volume's longest side (memory grows with its cube).
    """

    voxel_size: float | None = None
    resolution: int = 256
    trunc_voxels: float = 4.0
    max_depth: float | None = None
    min_incidence_cos: float = 0.1
    max_cells: int = 400

    def bounds(self, depths: list[np.ndarray], cameras: list[PosedCamera]) -> tuple[np.ndarray, np.ndarray]:
        """The box (1st to 99th percentile per axis, padded by 5 %) of the back-projected depth."""
        points = []
        for depth, cam in zip(depths, cameras):
            k, stride = cam.intrinsics, max(1, int(np.sqrt(depth.size / 20000)))  # ~20k pixels a view
            z = np.asarray(depth[stride // 2::stride, stride // 2::stride], dtype=np.float64)
            vv, uu = np.mgrid[stride // 2:depth.shape[0]:stride, stride // 2:depth.shape[1]:stride]
            with np.errstate(invalid="ignore"):
                valid = np.isfinite(z) & (z > 0)
                if self.max_depth is not None:
                    valid &= z <= self.max_depth
            z, u, v = z[valid], uu[valid] + 0.5, vv[valid] + 0.5
            cam_points = np.stack([(u - k.cx) / k.fx * z, (v - k.cy) / k.fy * z, z], axis=-1)
            points.append(cam_points @ cam.rotation.T + cam.center)
        points = np.concatenate(points) if points else np.zeros((0, 3))
        if len(points) < 2:
            raise ValueError(f"no valid depth in any of the {len(cameras)} views: nothing to fuse")
        lo, hi = np.percentile(points, [1, 99], axis=0)
        pad = 0.05 * (hi - lo) + 1e-6
        return lo - pad, hi + pad

    def usable(self, depth: np.ndarray, camera: PosedCamera, normal: np.ndarray | None) -> np.ndarray:
        """``[H, W]`` bool: finite, positive, within ``max_depth`` and not at grazing incidence."""
        with np.errstate(invalid="ignore"):
            keep = np.isfinite(depth) & (depth > 0)
            if self.max_depth is not None:
                keep &= depth <= self.max_depth
        if normal is not None and self.min_incidence_cos > 0:
            k = camera.intrinsics
            rx = ((np.arange(depth.shape[1]) + 0.5 - k.cx) / k.fx)[None, :]
            ry = ((np.arange(depth.shape[0]) + 0.5 - k.cy) / k.fy)[:, None]
            dot = normal[..., 0] * rx + normal[..., 1] * ry + normal[..., 2]
            keep &= np.abs(dot) >= self.min_incidence_cos * np.sqrt(rx**2 + ry**2 + 1.0)
        return keep

    def fuse(self, depths: list[np.ndarray], cameras: list[PosedCamera], colors: list[np.ndarray] | None = None,
             normals: list[np.ndarray] | None = None, progress: Any = None) -> FusionResult:
        """Fuse metric ``depths`` (``[H, W]`` metres, NaN/0 invalid) seen by ``cameras``.

        ``colors``: ``[H, W, 3]`` uint8 per view; ``normals``: ``[H, W, 3]`` unit vectors in the OpenCV
        camera frame per view (:func:`normals_to_opencv` of a prediction). ``progress`` wraps the
        view loop (e.g. ``tqdm``).
        """
        o3d = import_open3d()
        if len(depths) != len(cameras):
            raise ValueError(f"{len(depths)} depth maps for {len(cameras)} cameras")
        lo, hi = self.bounds(depths, cameras)
        voxel = self.voxel_size if self.voxel_size is not None else float(np.linalg.norm(hi - lo)) / self.resolution
        if not voxel > 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel}")
        length = float((hi - lo).max())
        cells = int(np.ceil(length / voxel))
        if cells > self.max_cells:
            raise ValueError(f"a {length:.3g} m volume at voxel_size {voxel:.3g} m needs {cells}^3 voxels, over "
                             f"max_cells={self.max_cells} per side: pass a larger voxel_size or max_depth")
        # Open3D's UniformTSDFVolume: a cube of `cells` voxels from `lo`. (Its hash-based
        # ScalableTSDFVolume and VoxelBlockGrid integrate nothing in the open3d 0.20 wheel here.)
        volume = o3d.pipelines.integration.UniformTSDFVolume(
            length=cells * voxel, resolution=cells, sdf_trunc=self.trunc_voxels * voxel,
            color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8, origin=lo.reshape(3, 1))
        used = {}
        order = range(len(cameras)) if progress is None else progress(range(len(cameras)))
        for k in order:
            cam, depth = cameras[k], np.asarray(depths[k], dtype=np.float32)
            if depth.shape != (cam.height, cam.width):
                raise ValueError(f"view {cam.name!r}: depth is {depth.shape[0]}x{depth.shape[1]} (HxW) but its camera "
                                 f"is {cam.height}x{cam.width}")
            normal = None if normals is None or normals[k] is None else np.asarray(normals[k], dtype=np.float64)
            keep = self.usable(depth, cam, normal)
            if not keep.any():
                raise ValueError(f"view {cam.name!r}: no usable depth (finite, > 0, within max_depth, not grazing)")
            used[cam.name] = int(keep.sum())
            color = np.zeros((*depth.shape, 3), np.uint8) if colors is None or colors[k] is None else colors[k]
            rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
                o3d.geometry.Image(np.ascontiguousarray(color, dtype=np.uint8)),
                o3d.geometry.Image(np.ascontiguousarray(np.where(keep, depth, 0.0), dtype=np.float32)),
                depth_scale=1.0, depth_trunc=float(np.nanmax(np.where(keep, depth, 0.0))) + 1.0,
                convert_rgb_to_intensity=False)
            volume.integrate(rgbd, open3d_intrinsic(cam), np.linalg.inv(cam.cam_to_world))
        mesh = volume.extract_triangle_mesh()
        if len(mesh.vertices) == 0:
            raise ValueError(f"the TSDF volume of {len(cameras)} views ({[c.name for c in cameras][:4]}...) is empty: "
                             f"no surface where the views agree (voxel {voxel:.4g} m); are depth and poses consistent?")
        mesh.compute_vertex_normals()
        return FusionResult(mesh, volume, voxel, used)

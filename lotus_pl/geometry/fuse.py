"""``lotus_pl fuse``: one mesh from the depth predictions of several posed views of a scene.

Reads ``<stem>_depth.npy`` + ``<stem>_depth.json`` (``lotus_pl predict``'s output; ``space``
disparity or depth, or "metric" for metric depth such as the synthetic ground truth) and, when
present, ``<stem>_normal.npy``; matches every stem to a pose in ``--poses`` (a COLMAP model folder,
a ``transforms.json`` or a lotus_pl ``cameras.json``); aligns the relative predictions (an
:class:`~lotus_pl.geometry.multiview_align.Aligner`: sparse SfM points when the poses carry them,
else the joint solve); fuses them with a TSDF; and writes ``mesh.ply|obj``, ``points.ply`` and
``report.json`` (per-view scale, shift, points, inliers and residual; fusion settings; multi-view
depth consistency) into ``--out``. See docs/reconstruction.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from lotus_pl.geometry.cameras import CameraSet, read_poses
from lotus_pl.geometry.fusion import TSDFFusion, import_open3d
from lotus_pl.geometry.multiview_align import (
    Aligner,
    AlignmentView,
    JointAlignment,
    MetricDepth,
    SparsePointAlignment,
    ViewAlignment,
    apply_scale_shift,
    depth_consistency,
)
from lotus_pl.geometry.single_view import normals_to_opencv

__all__ = ["fuse", "fuse_main", "load_views"]


def _read_depth(npy: Path) -> tuple[np.ndarray, str]:
    meta_path = npy.with_name(npy.name[: -len(".npy")] + ".json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: it says whether {npy.name} holds disparity, depth or metric depth")
    try:
        space = json.loads(meta_path.read_text()).get("space")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{meta_path}: not a JSON object ({exc})") from exc
    if space not in ("disparity", "depth", "metric"):
        raise ValueError(f"{meta_path}: key 'space' must be disparity, depth or metric, got {space!r}")
    pred = np.load(npy).astype(np.float64)
    if pred.ndim != 2:
        raise ValueError(f"{npy}: a depth map must be [H, W], got shape {pred.shape}")
    if space == "metric":
        pred = np.where(pred > 0, pred, np.nan)
    return pred, space


def load_views(predictions: str | Path, cameras: CameraSet, images: str | Path | None = None,
               confidence_quantile: float | None = None, max_uncertainty: float | None = None,
               ) -> tuple[list[AlignmentView], list[np.ndarray | None], list[np.ndarray | None]]:
    """The prediction folder's views matched to their poses, with colours (from ``images``, matched
    by stem, whose size must agree with the camera's) and OpenCV-frame normals when present. With a
    confidence rule, each view's mask keeps only the pixels its ``<stem>_depth_uncertainty.npy``
    (written by ``predict`` with an ensemble) marks as confident, for the alignment and the fusion."""
    from lotus_pl.data.images import IMAGE_SUFFIXES, load_image

    pred_dir = Path(predictions)
    files = sorted(pred_dir.glob("*_depth.npy"))
    if not files:
        raise FileNotFoundError(f"no <stem>_depth.npy in {pred_dir} (lotus_pl predict writes them)")
    image_paths = {}
    if images is not None:
        image_paths = {p.stem: p for p in sorted(Path(images).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    views, colors, normals = [], [], []
    for npy in files:
        stem = npy.name[: -len("_depth.npy")]
        pred, space = _read_depth(npy)
        try:
            camera = cameras.by_stem(stem)
        except KeyError as exc:
            raise KeyError(f"{npy}: {exc.args[0]}") from exc
        color = None
        if images is not None:
            if stem not in image_paths:
                raise FileNotFoundError(f"no image named {stem}.* in {images} for {npy}")
            image = load_image(image_paths[stem])
            h, w = image.shape[-2:]
            if (h, w) != (camera.height, camera.width):
                raise ValueError(f"{image_paths[stem]}: the image is {h}x{w} (HxW) but the intrinsics of view "
                                 f"{camera.name!r} in {cameras.source} are for {camera.height}x{camera.width}")
            import torch.nn.functional as F

            image = F.interpolate(((image + 1) / 2)[None], size=pred.shape, mode="bilinear", antialias=True)[0]
            color = np.round(image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        camera = camera.at_size(*pred.shape, what=f"the prediction {npy.name}")
        normal_path = pred_dir / f"{stem}_normal.npy"
        normal = None
        if normal_path.is_file():
            raw = np.load(normal_path)
            if raw.shape != (3, *pred.shape):
                raise ValueError(f"{normal_path}: normals are {raw.shape}, expected (3, {pred.shape[0]}, {pred.shape[1]})")
            normal = normals_to_opencv(raw)
        mask = None
        if confidence_quantile is not None or max_uncertainty is not None:
            from lotus_pl.ensembles.confidence import confident_pixels, read_uncertainty

            path = pred_dir / f"{stem}_depth_uncertainty.npy"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: a confidence rule needs the uncertainty that lotus_pl "
                                        "predict writes with an ensemble (model.ensemble)")
            mask = confident_pixels(read_uncertainty(path, pred.shape), confidence_quantile, max_uncertainty)
        views.append(AlignmentView(pred, space, camera, mask))
        colors.append(color)
        normals.append(normal)
    return views, colors, normals


def default_aligner(views: list[AlignmentView], cameras: CameraSet) -> Aligner:
    """Metric inputs: none; sparse points available: per view to them; otherwise: the joint solve."""
    if all(v.space == "metric" for v in views):
        return MetricDepth()
    return SparsePointAlignment() if cameras.sparse is not None else JointAlignment()


def fuse(
    predictions: str,
    poses: str,
    out: str,
    images: str | None = None,
    align: Aligner | None = None,
    voxel_size: float | None = None,
    resolution: int = 256,
    trunc_voxels: float = 4.0,
    max_depth: float | None = None,
    min_incidence_cos: float = 0.1,
    mesh_format: Literal["ply", "obj"] = "ply",
    progress: bool = True,
    confidence_quantile: float | None = None,
    max_uncertainty: float | None = None,
) -> dict:
    """Align and fuse posed depth predictions into one mesh.

    Args:
        predictions: folder of ``<stem>_depth.npy`` + ``.json`` (and ``<stem>_normal.npy``).
        poses: a COLMAP model folder (text or binary), a Nerfstudio/instant-ngp transforms.json or
            a lotus_pl cameras.json; every prediction's stem needs a pose.
        out: output folder (mesh, point cloud, report.json).
        images: the input images for colours (matched by stem; their size must match the intrinsics).
        align: how relative predictions become metric (class_path of an Aligner); default:
            SparsePointAlignment with COLMAP points, JointAlignment without, MetricDepth for metric input.
        voxel_size: TSDF voxel in metres (default: scene extent / resolution).
        resolution: voxels across the scene's diagonal without voxel_size.
        trunc_voxels: TSDF truncation in voxels.
        max_depth: drop depth beyond this (metres).
        min_incidence_cos: with normals, drop pixels seen at grazing incidence (|cos| below this).
        mesh_format: ply or obj.
        progress: show a progress bar.
        confidence_quantile: keep per view only the pixels at or below this quantile of its
            ``<stem>_depth_uncertainty.npy`` (0.8 drops the least sure 20 %).
        max_uncertainty: keep only pixels whose uncertainty is at most this.
    """
    from tqdm import tqdm

    o3d = import_open3d()
    cameras = read_poses(poses)
    views, colors, normals = load_views(predictions, cameras, images, confidence_quantile, max_uncertainty)
    aligner = align if align is not None else default_aligner(views, cameras)
    print(f"{len(views)} views from {predictions}, poses {cameras.source}; alignment: {type(aligner).__name__}")
    report: list[ViewAlignment] = aligner.align(views, cameras)
    depths = [apply_scale_shift(v, a.scale, a.shift, max_depth) for v, a in zip(views, report)]
    theta = np.concatenate([[a.scale, a.shift] for a in report])
    try:
        consistency = depth_consistency(views, theta)
    except ValueError:
        consistency = float("nan")
    print(f"{'view':<24} {'scale':>11} {'shift':>11} {'points':>8} {'inliers':>8} {'residual':>9}")
    for a in report:
        print(f"{a.name:<24} {a.scale:>11.5g} {a.shift:>11.5g} {a.num_points:>8d} {a.num_inliers:>8d} {a.residual:>9.4f}")
    print(f"multi-view depth consistency (median relative disagreement over all view pairs): {consistency:.4f}")
    fusion = TSDFFusion(voxel_size, resolution, trunc_voxels, max_depth, min_incidence_cos)
    bar = (lambda it: tqdm(it, desc="TSDF fusion", unit="view")) if progress else None
    result = fusion.fuse(depths, [v.camera for v in views], colors if images is not None else None, normals, bar)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    mesh_path, cloud_path = out_dir / f"mesh.{mesh_format}", out_dir / "points.ply"
    if not o3d.io.write_triangle_mesh(str(mesh_path), result.mesh):
        raise OSError(f"Open3D could not write {mesh_path}")
    if not o3d.io.write_point_cloud(str(cloud_path), result.cloud):
        raise OSError(f"Open3D could not write {cloud_path}")
    summary = {
        "frame": "world frame of the poses; OpenCV camera convention; units of the poses' translation",
        "alignment": type(aligner).__name__, "views": [a.as_dict() for a in report], "depth_consistency": consistency,
        "voxel_size": result.voxel_size, "pixels_per_view": result.pixels_per_view,
        "mesh": {"path": str(mesh_path), "vertices": len(result.mesh.vertices), "triangles": len(result.mesh.triangles)},
        "points": {"path": str(cloud_path), "count": len(result.cloud.points)},
    }
    (out_dir / "report.json").write_text(json.dumps(summary, indent=1))
    print(f"mesh: {summary['mesh']['vertices']} vertices, {summary['mesh']['triangles']} triangles (voxel "
          f"{result.voxel_size:.4g}) -> {mesh_path}; points -> {cloud_path}; report -> {out_dir / 'report.json'}")
    return summary


def fuse_main(args: list[str]) -> None:
    """``lotus_pl fuse --predictions DIR --poses PATH --out DIR [...]``."""
    from jsonargparse import CLI

    CLI(fuse, args=args, as_positional=False, prog="lotus_pl fuse")

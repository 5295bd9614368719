"""``lotus_pl reconstruct``: point clouds and meshes from the depth that ``lotus_pl predict`` wrote.

For every ``<stem>_depth.npy`` (with its ``<stem>_depth.json``, which says whether the values are
disparity or depth) in the prediction folder, the relative prediction becomes metric depth, either
fitted to the sparse metric points of ``<stem>.npy|png|txt|csv`` among ``--sparse`` or mapped onto
the ``--near``/``--far`` guess, and is back-projected through the camera (``--intrinsics`` or a
field-of-view guess) into ``<stem>.ply``: OpenCV camera frame, metres, coloured from the input image
of the same stem, with normals when ``<stem>_normal.npy`` exists. ``--mesh_format ply|obj`` also
writes ``<stem>_mesh.ply|obj``, cut at depth discontinuities. See docs/reconstruction.md.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch.nn.functional as F

from lotus_pl.data.images import IMAGE_SUFFIXES, load_image
from lotus_pl.data.predict_inputs import list_inputs
from lotus_pl.ensembles.confidence import drop_uncertain
from lotus_pl.geometry import (
    FRAME_COMMENT,
    SPACES,
    SPARSE_SUFFIXES,
    Intrinsics,
    backproject,
    fit_sparse,
    mesh_from_depth,
    normals_to_opencv,
    read_sparse_depth,
    relative_to_depth,
    valid_depth,
    write_obj,
    write_ply,
)


def _by_stem(paths: list[Path], what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in paths:
        if path.stem in found:
            raise ValueError(f"two {what} files share the stem {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    return found


def _list_sparse(spec: str) -> list[Path]:
    """Sparse depth files at ``spec``: a file, a folder (searched recursively) or a glob."""
    path = Path(spec)
    if path.is_file():
        return [path]
    candidates = path.rglob("*") if path.is_dir() else map(Path, glob.glob(spec, recursive=True))
    found = sorted(p for p in candidates if p.suffix.lower() in SPARSE_SUFFIXES and p.is_file())
    if not found:
        raise FileNotFoundError(f"no sparse depth files ({', '.join(sorted(SPARSE_SUFFIXES))}) at {spec!r}")
    return found


def _read_prediction(npy: Path) -> tuple[np.ndarray, str]:
    meta_path = npy.with_name(npy.name[: -len(".npy")] + ".json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: lotus_pl predict writes it next to {npy.name}, and it says "
                                f"whether the values are depth or disparity")
    try:
        space = json.loads(meta_path.read_text()).get("space")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{meta_path}: not a JSON object ({exc})") from exc
    if space not in SPACES:
        raise ValueError(f"{meta_path}: key 'space' must be one of {SPACES}, got {space!r}")
    pred = np.load(npy)
    if pred.ndim != 2:
        raise ValueError(f"{npy}: a depth prediction must be [H, W], got shape {pred.shape}")
    return pred.astype(np.float64), space


def _colors(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """The image's colours as ``[H, W, 3]`` uint8 at the prediction's size (resized if needed),
    and the image's own (H, W), which calibrated intrinsics refer to."""
    image = (load_image(path) + 1) / 2
    h, w = image.shape[-2:]
    if (h, w) != shape:
        if abs(h / w - shape[0] / shape[1]) > 0.01 * shape[0] / shape[1]:
            raise ValueError(f"{path}: the image is {h}x{w} (HxW) but its prediction is {shape[0]}x{shape[1]}, "
                             f"another aspect ratio: is it the image that was predicted?")
        image = F.interpolate(image[None], size=shape, mode="bilinear", align_corners=False, antialias=True)[0]
    return np.round(image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8), (h, w)


def reconstruct(
    predictions: str,
    images: str | None = None,
    output_dir: str | None = None,
    intrinsics: tuple[float, float, float, float] | None = None,
    fov: float = 60.0,
    fov_axis: Literal["horizontal", "vertical", "diagonal"] = "horizontal",
    sparse: str | None = None,
    png_scale: float = 256.0,
    near: float = 1.0,
    far: float = 10.0,
    max_depth: float | None = None,
    robust: bool = True,
    min_points: int = 10,
    mesh_format: Literal["ply", "obj"] | None = None,
    max_depth_ratio: float | None = 1.1,
    confidence_quantile: float | None = None,
    max_uncertainty: float | None = None,
) -> list[dict]:
    """Turn ``lotus_pl predict``'s depth outputs into coloured point clouds (and meshes).

    Args:
        predictions: the folder ``lotus_pl predict`` wrote (``<stem>_depth.npy`` + ``<stem>_depth.json``,
            optionally ``<stem>_normal.npy``).
        images: the input images (a file, a folder or a glob), matched by stem, for colours.
            Without them the clouds have no colour.
        output_dir: where ``<stem>.ply`` and the meshes go (default: the predictions folder).
        intrinsics: fx fy cx cy in pixels of the input image (pixel centres at u + 0.5, so a centred
            principal point is cx = W / 2); scaled if the prediction has another size.
        fov: without intrinsics, a GUESS of the field of view in degrees (across ``fov_axis``).
        fov_axis: the image axis ``fov`` spans.
        sparse: metric sparse depth (a file, folder or glob of .npy / 16-bit .png / .txt / .csv
            ``u v depth`` rows), matched by stem; every prediction then needs one. Scale and shift
            are fitted to it in the prediction's space.
        png_scale: 16-bit PNG value per metre of the sparse depth (KITTI: 256).
        near: without sparse depth, the GUESSED depth in metres that the prediction's near end maps to.
        far: ... and its far end.
        max_depth: drop points farther than this (metres); in disparity space it also lets a sparse
            fit extrapolate past infinity (sky) instead of failing.
        robust: refit the sparse alignment without outlying points.
        min_points: fewest valid sparse points to accept a fit.
        mesh_format: also write ``<stem>_mesh.ply`` or ``<stem>_mesh.obj``.
        max_depth_ratio: mesh triangles whose vertex depths differ by more than this ratio are cut
            (discontinuities); null keeps all.
        confidence_quantile: keep only pixels whose ``<stem>_depth_uncertainty.npy`` (an ensemble's,
            see lotus_pl.ensembles) is at or below this quantile (0.8: drop the least sure 20 %).
        max_uncertainty: keep only pixels whose uncertainty is at or below this value.
    """
    pred_dir = Path(predictions)
    depth_files = sorted(pred_dir.glob("*_depth.npy"))
    if not depth_files:
        raise FileNotFoundError(f"no <stem>_depth.npy predictions in {pred_dir} (written by lotus_pl predict)")
    out_dir = Path(output_dir) if output_dir is not None else pred_dir
    image_paths = {}
    if images is not None:
        image_paths = _by_stem([p for p in list_inputs(images) if p.suffix.lower() in IMAGE_SUFFIXES], "image")
    sparse_paths = _by_stem(_list_sparse(sparse), "sparse depth") if sparse is not None else {}
    if intrinsics is None:
        print(f"intrinsics: GUESSED from a {fov:g} degree {fov_axis} field of view (pass --intrinsics for a calibrated camera)")

    summary = []
    for npy in depth_files:
        stem = npy.name[: -len("_depth.npy")]
        pred, space = _read_prediction(npy)
        shape = pred.shape
        colors = None
        input_shape = shape
        if images is not None:
            if stem not in image_paths:
                raise FileNotFoundError(f"no input image named {stem}.* among {images!r} for the prediction {npy}")
            colors, input_shape = _colors(image_paths[stem], shape)
        if intrinsics is not None:
            camera = Intrinsics(*intrinsics).resized(input_shape, shape)
        else:
            camera = Intrinsics.from_fov(shape[1], shape[0], fov, fov_axis)

        if sparse is not None:
            if stem not in sparse_paths:
                raise FileNotFoundError(f"no sparse depth file named {stem}.* among {sparse!r} for the prediction {npy}")
            sparse_path = sparse_paths[stem]
            points = read_sparse_depth(sparse_path, shape, png_scale)
            if points.shape != shape:
                raise ValueError(f"{sparse_path}: sparse depth is {points.shape[0]}x{points.shape[1]} (HxW) but the "
                                 f"prediction {npy.name} is {shape[0]}x{shape[1]}")
            try:
                fit = fit_sparse(pred, space, points, min_points=min_points, robust=robust)
                depth = fit.apply(pred, max_depth=max_depth)
            except ValueError as exc:
                raise ValueError(f"{sparse_path}: {exc}") from exc
            how = (f"sparse fit to {sparse_path.name}: {fit.num_points} points, {fit.num_inliers} inliers, "
                   f"abs_rel {fit.abs_rel:.4f}, rmse {fit.rmse:.4g} m ({space} scale {fit.scale:.6g}, shift {fit.shift:.6g})")
        else:
            depth = relative_to_depth(pred, space, near, far)
            if max_depth is not None:
                depth = np.where(depth <= max_depth, depth, np.nan)
            how = f"range GUESS: {space} mapped onto near {near:g} m .. far {far:g} m (no sparse depth)"

        if confidence_quantile is not None or max_uncertainty is not None:
            depth, note = drop_uncertain(depth, pred_dir, stem, confidence_quantile, max_uncertainty)
            how = f"{how}; {note}"

        normal_path = pred_dir / f"{stem}_normal.npy"
        normals = None
        if normal_path.is_file():
            normals = np.load(normal_path)
            if normals.shape != (3, *shape):
                raise ValueError(f"{normal_path}: normals are {normals.shape} but the depth {npy.name} is {shape}; "
                                 f"expected (3, {shape[0]}, {shape[1]})")
            normals = normals_to_opencv(normals)

        valid = valid_depth(depth)
        points = backproject(depth, camera)
        point_colors = colors[valid] if colors is not None else None
        point_normals = normals[valid] if normals is not None else None
        comments = [FRAME_COMMENT, f"depth: {how}",
                    f"intrinsics: fx {camera.fx:.6g} fy {camera.fy:.6g} cx {camera.cx:.6g} cy {camera.cy:.6g}"
                    + ("" if intrinsics is not None else f" (GUESS: {fov:g} degree {fov_axis} fov)")]
        written = [write_ply(out_dir / f"{stem}.ply", points, point_colors, point_normals, comments=comments)]
        faces = None
        if mesh_format is not None:  # the mesh's vertices are the cloud's points, in the same order
            faces = mesh_from_depth(depth, camera, max_depth_ratio=max_depth_ratio).faces
            if mesh_format == "ply":
                written.append(write_ply(out_dir / f"{stem}_mesh.ply", points, point_colors, point_normals, faces, comments))
            else:
                written.append(write_obj(out_dir / f"{stem}_mesh.obj", points, faces, point_colors, comments))
        face_note = f", {len(faces)} mesh faces" if faces is not None else ""
        print(f"{stem}: {len(points)} points{face_note}; {how} -> {', '.join(str(p) for p in written)}")
        summary.append({"stem": stem, "points": len(points), "faces": None if faces is None else len(faces),
                        "depth": how, "files": [str(p) for p in written]})
    return summary


def reconstruct_main(args: list[str]) -> None:
    """``lotus_pl reconstruct --predictions <dir> [--images ...] [--sparse ...] ...``."""
    from jsonargparse import CLI

    CLI(reconstruct, args=args, as_positional=False, prog="lotus_pl reconstruct")

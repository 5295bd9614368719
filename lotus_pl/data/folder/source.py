"""``lotus_pl data folder``: a user's own RGB images with depth and/or normals -> training shards.

The frames are paired (:mod:`~lotus_pl.data.folder.pairing`), read (:mod:`~lotus_pl.data.folder.readers`),
checked, brought to one training size and written through :func:`lotus_pl.data.convert.convert_split`,
so they get the same resumable parallel writing, skip report and manifest as Hypersim and VKITTI.

The depth rule (one place, applied before any resizing):

* a pixel whose depth is NaN, infinite or 0 is a hole: invalid (stored as 0, never supervised);
* a pixel outside ``[min_depth, max_depth]`` is invalid;
* a negative depth is not a hole but a sign of a wrong file (disparity, a signed offset): the frame
  is rejected (``negative depth``), unless ``negative_depth="mask"``, which treats it as a hole;
* a frame with fewer than ``min_valid_fraction`` valid pixels is rejected (``too little valid depth``).

Normals are converted from the named convention to the project's (x left, y up, z toward the
camera), renormalised, and turned toward the camera when the intrinsics are known. A mask (nonzero =
may be supervised) is written as ``mask.png`` and applies to every task.

Sizing (``size: [H, W]``): ``resize`` stretches to exactly H×W; ``crop`` scales to cover H×W keeping
the aspect ratio and cuts the centre. RGB is resized with an antialiased bilinear filter, depth,
normals and masks with nearest neighbour (a depth edge is never blended into a floating point),
and intrinsics follow. Without ``size`` frames keep their own size, which must then be one size
for all (a batch holds one size).

Samples: ``rgb.jpg|png``, ``depth.npy`` (float32 metres, 0 = invalid), ``normal.png``, ``mask.png``,
``json`` (``height, width``, ``fx, fy, cx, cy`` in the project's convention, pixel centres at
``u + 0.5``, when known; the source files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from lotus_pl.data.convert import (
    FrameSkipped,
    SampleFormat,
    SplitPlan,
    command_line,
    convert_split,
    encode_mask_png,
    encode_rgb,
    face_camera,
    json_bytes,
    resize_nearest,
    unit_normals,
)
from lotus_pl.data.folder.pairing import SPLITS, FolderFrame, Pairing, assign_splits, pair_by_csv, pair_by_stem
from lotus_pl.data.folder.readers import NORMAL_SIGNS, AnnotationError, read_depth, read_intrinsics, read_mask, read_normals
from lotus_pl.data.images import load_image
from lotus_pl.data.predict_inputs import IMAGE_ERRORS
from lotus_pl.data.samples import encode_normal_png, encode_npy


def _read_rgb(path: str) -> np.ndarray:
    """uint8 ``[H, W, 3]``, upright, any PIL mode (as ``predict`` reads images)."""
    image = load_image(path)
    return np.round((image.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)


def _resize_rgb(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def depth_validity(depth: np.ndarray, options: dict[str, Any], key: str) -> np.ndarray:
    """The module docstring's depth rule: the valid pixels, or :class:`FrameSkipped`."""
    finite = np.isfinite(depth)
    negative = finite & (depth < 0)
    if negative.any() and options["negative_depth"] == "reject":
        raise FrameSkipped("negative depth", f"{key}: {int(negative.sum())} pixels, min {float(depth[negative].min()):.4g}")
    valid = finite & (depth > 0) & (depth >= options["min_depth"]) & (depth <= options["max_depth"])
    if valid.mean() < options["min_valid_fraction"]:
        raise FrameSkipped("too little valid depth", f"{key}: {valid.mean():.3f} < {options['min_valid_fraction']}")
    return valid


def fit_window(height: int, width: int, size: list[int] | None, fit: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(scaled H, W)`` and the ``(top, left)`` of the output window in the scaled frame."""
    if size is None:
        return (height, width), (0, 0)
    out_h, out_w = size
    if fit == "resize":
        return (out_h, out_w), (0, 0)
    scale = max(out_h / height, out_w / width)
    scaled = (max(out_h, round(height * scale)), max(out_w, round(width * scale)))
    return scaled, ((scaled[0] - out_h) // 2, (scaled[1] - out_w) // 2)


def convert_frame(frame: FolderFrame, options: dict[str, Any]) -> dict[str, bytes]:
    """One frame -> the sample's fields (see the module docstring), or :class:`FrameSkipped`."""
    try:
        rgb = _read_rgb(frame.rgb)
    except IMAGE_ERRORS as exc:
        raise FrameSkipped("unreadable rgb", f"{frame.rgb}: {exc}") from exc
    height, width = rgb.shape[:2]
    fields: dict[str, np.ndarray] = {}
    try:
        if frame.depth:
            fields["depth"] = read_depth(frame.depth, options["depth_scale"])
        if frame.normal:
            fields["normal"] = read_normals(frame.normal, options["normal_convention"])
        if frame.mask:
            fields["mask"] = read_mask(frame.mask)
    except AnnotationError as exc:
        raise FrameSkipped("unreadable annotation", str(exc)) from exc
    for name, arr in fields.items():
        if arr.shape[:2] != (height, width):
            raise FrameSkipped("sizes differ", f"{frame.key}: rgb {height}x{width}, {name} {arr.shape[0]}x{arr.shape[1]}")

    intrinsics = frame.intrinsics or options["intrinsics"]
    camera = None
    if intrinsics is not None:  # OpenCV (first pixel's centre at 0) -> project (centre at u + 0.5)
        fx, fy, cx, cy = intrinsics
        camera = [fx, fy, cx + 0.5, cy + 0.5]
    if "depth" in fields:
        valid = depth_validity(fields["depth"], options, frame.key)
        fields["depth"] = np.where(valid, fields["depth"], 0.0)
    if "normal" in fields:
        normals, ok = unit_normals(fields["normal"])
        if camera is not None:
            normals = face_camera(normals, *camera) * ok[..., None]
        fields["normal"] = normals

    (scaled_h, scaled_w), (top, left) = fit_window(height, width, options["size"], options["fit"])
    out_h, out_w = options["size"] or (height, width)
    window = (slice(top, top + out_h), slice(left, left + out_w))
    rgb = np.ascontiguousarray(_resize_rgb(rgb, scaled_h, scaled_w)[window])
    for name in list(fields):
        fields[name] = resize_nearest(fields[name], scaled_h, scaled_w)[window]
    meta: dict[str, Any] = {"source": "folder", "rgb_file": frame.rgb, "height": out_h, "width": out_w}
    if camera is not None:
        sx, sy = scaled_w / width, scaled_h / height
        fx, fy, cx, cy = camera
        meta.update(fx=fx * sx, fy=fy * sy, cx=cx * sx - left, cy=cy * sy - top)

    rgb_key, rgb_bytes = encode_rgb(rgb, options["rgb_format"], options["jpeg_quality"])
    sample = {rgb_key: rgb_bytes}
    if "depth" in fields:
        sample["depth.npy"] = encode_npy(fields["depth"])
        meta["valid_fraction"] = round(float((fields["depth"] > 0).mean()), 6)
        meta["depth_file"] = frame.depth
    if "normal" in fields:
        sample["normal.png"] = encode_normal_png(fields["normal"])
        meta["normal_file"] = frame.normal
    if "mask" in fields:
        sample["mask.png"] = encode_mask_png(fields["mask"])
        meta["mask_file"] = frame.mask
    sample["json"] = json_bytes(meta)
    return sample


def _warn_orphans(pairing: Pairing) -> None:
    for kind, paths in pairing.orphans.items():
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        print(f"  WARNING: {len(paths)} {kind} files match no RGB image: {shown}", flush=True)


def make_folder(
    out: str,
    name: str = "own",
    rgb: str | None = None,
    depth: str | None = None,
    normal: str | None = None,
    mask: str | None = None,
    pairs: str | None = None,
    depth_suffix: str = "",
    normal_suffix: str = "",
    mask_suffix: str = "",
    depth_scale: float | None = None,
    normal_convention: Literal["lotus", "dsine", "opengl", "omnidata", "opencv"] | None = None,
    intrinsics: list[float] | None = None,
    intrinsics_file: str | None = None,
    size: list[int] | None = None,
    fit: Literal["crop", "resize"] = "crop",
    min_depth: float = 0.0,
    max_depth: float = float("inf"),
    negative_depth: Literal["reject", "mask"] = "reject",
    min_valid_fraction: float = 0.01,
    val_ratio: float = 0.1,
    test_ratio: float = 0.0,
    train_list: str | None = None,
    val_list: str | None = None,
    test_list: str | None = None,
    manifest_dir: str = "data_manifests",
    rgb_format: Literal["jpg", "png"] = "jpg",
    jpeg_quality: int = 95,
    licence: str = "the user's own data (state its licence with --licence)",
    samples_per_shard: int = 256,
    workers: int = 2,
    seed: int = 0,
) -> list[str]:
    """Convert your own RGB + depth / normal files into shards and ``<name>_{train,val,test}.yaml``.

    Args:
        out: folder for the tar shards.
        name: the manifests' name prefix.
        rgb: folder of RGB images (searched recursively); pairs files by stem with the folders below.
        depth: folder of depth files (16-bit PNG, NPY, PFM, EXR); may be ``rgb`` itself.
        normal: folder of normal files (PNG or NPY / EXR) in ``normal_convention``.
        mask: folder of masks (nonzero = supervise).
        pairs: a CSV pairing the files instead (columns rgb, depth, normal, mask, fx, fy, cx, cy, split).
        depth_suffix, normal_suffix, mask_suffix: what a partner's stem adds to the RGB stem (``_depth``).
        depth_scale: stored value per metre of integer depth (1000 = millimetres); float files: 1.
        normal_convention: ``lotus`` / ``dsine`` (x left, y up, z toward the camera), ``opengl`` /
            ``omnidata`` (x right, y up, z toward the camera), ``opencv`` (x right, y down, z forward).
        intrinsics: fx, fy, cx, cy of every image (OpenCV convention, native pixels).
        intrinsics_file: a text file with fx fy cx cy or a 3x3 K for every image.
        size: training [height, width] (default: the images' own size, which must be one for all).
        fit: ``crop`` (keep the aspect ratio, cut the centre) or ``resize`` (stretch).
        min_depth, max_depth: valid depth range in metres (others are masked).
        negative_depth: ``reject`` the frame (default) or ``mask`` the pixels.
        min_valid_fraction: frames with less valid depth are left out.
        val_ratio, test_ratio: fractions of frames held out (by a seeded hash of the key).
        train_list, val_list, test_list: files listing each split's keys instead of ratios.
        manifest_dir: folder for the manifests.
        rgb_format: ``jpg`` (``jpeg_quality``) or lossless ``png``.
        licence: recorded in the manifests.
        samples_per_shard: frames per shard.
        workers: conversion processes.
        seed: the ratio split and the shuffle of frames into shards.

    Frames left out while pairing (a missing partner, in no split list) have no split; they are
    reported in the printed summary and in the train manifest's ``skipped``.

    Returns:
        The paths of the written manifests (splits with no frames are not written).
    """
    if (rgb is None) == (pairs is None):
        raise ValueError("give either --rgb (with --depth / --normal / --mask folders) or --pairs (a CSV), not both")
    if pairs is None and depth is None and normal is None:
        raise ValueError("nothing to learn: give --depth and/or --normal folders")
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"size must be [height, width] > 0, got {size}")
    if intrinsics is not None and intrinsics_file is not None:
        raise ValueError("give --intrinsics or --intrinsics_file, not both")
    camera = read_intrinsics(intrinsics_file) if intrinsics_file else intrinsics
    if camera is not None and len(camera) != 4:
        raise ValueError(f"intrinsics must be [fx, fy, cx, cy], got {camera}")

    if pairs is not None:
        pairing = pair_by_csv(Path(pairs))
    else:
        dirs = {kind: Path(folder) for kind, folder in (("depth", depth), ("normal", normal), ("mask", mask)) if folder}
        pairing = pair_by_stem(Path(rgb), dirs, {"depth": depth_suffix, "normal": normal_suffix, "mask": mask_suffix})
    has = {kind: any(getattr(f, kind) for f in pairing.frames) for kind in ("depth", "normal", "mask")}
    if has["normal"] and normal_convention is None:
        raise ValueError("normals given: name their convention with --normal_convention "
                         f"({', '.join(sorted(NORMAL_SIGNS))}; see docs/own_data.md)")
    if depth_scale is None and any(f.depth and f.depth.lower().endswith(".png") for f in pairing.frames):
        raise ValueError("depth PNGs need --depth_scale, the stored value per metre (1000 for millimetres, "
                         "256 for KITTI-style PNGs)")
    lists = {split: Path(p) for split, p in (("train", train_list), ("val", val_list), ("test", test_list)) if p}
    splits = assign_splits(pairing, lists, val_ratio, test_ratio, seed)
    print(f"folder: {len(pairing.frames)} frames paired"
          + "".join(f", {len(v)} left out ({k})" for k, v in sorted(pairing.skipped.items())), flush=True)
    _warn_orphans(pairing)

    options = {"depth_scale": depth_scale, "normal_convention": normal_convention,
               "intrinsics": None if camera is None else [float(v) for v in camera], "size": size, "fit": fit,
               "min_depth": min_depth, "max_depth": max_depth, "negative_depth": negative_depth,
               "min_valid_fraction": min_valid_fraction, "rgb_format": rgb_format, "jpeg_quality": jpeg_quality}
    created_by = command_line("folder", out=out, name=name, rgb=rgb, depth=depth, normal=normal, mask=mask, pairs=pairs,
                              depth_suffix=depth_suffix or None, normal_suffix=normal_suffix or None,
                              mask_suffix=mask_suffix or None, depth_scale=depth_scale,
                              normal_convention=normal_convention, intrinsics=intrinsics,
                              intrinsics_file=intrinsics_file, size=size, fit=fit, min_depth=min_depth,
                              max_depth=max_depth, negative_depth=negative_depth,
                              min_valid_fraction=min_valid_fraction, val_ratio=val_ratio, test_ratio=test_ratio,
                              train_list=train_list, val_list=val_list, test_list=test_list,
                              rgb_format=rgb_format, samples_per_shard=samples_per_shard, seed=seed)
    keys = [f"rgb.{rgb_format}", *(k for kind, k in (("depth", "depth.npy"), ("normal", "normal.png"),
                                                      ("mask", "mask.png")) if has[kind]), "json"]
    fmt = SampleFormat(
        keys=keys, resolution=list(size or [0, 0]), depth_scale=1.0, intrinsics=None, licence=licence,
        preprocessing=[
            "paired " + (f"by the CSV {pairs}" if pairs else "by file stem") + "; frames missing an asked-for partner left out",
            f"depth: stored value / {depth_scale or 1} = metres (planar); NaN/inf/0 and outside "
            f"[{min_depth}, {max_depth}] m masked; negative depth: {negative_depth}; "
            f"frames under {min_valid_fraction} valid left out; stored as depth.npy float32, 0 = invalid",
            f"normals: {normal_convention} convention -> project frame (x left, y up, z toward the camera), "
            "renormalised, turned toward the camera when intrinsics are known",
            "no resize" if size is None else f"{fit} to {size[0]}x{size[1]} (RGB antialiased bilinear, "
            "annotations nearest); intrinsics scaled, pixel centres at u + 0.5",
            f"splits: {'CSV column' if pairing.splits else 'lists' if lists else f'val {val_ratio}, test {test_ratio} by a hash of the key (seed {seed})'}",
        ],
    )
    paths = []
    for split in SPLITS:
        plan = SplitPlan(f"{name}_{split}", split, splits[split],
                         skipped=dict(pairing.skipped) if split == "train" else {})
        if not plan.frames and not plan.skipped:
            continue
        manifest_path = Path(manifest_dir) / f"{name}_{split}.yaml"
        report = convert_split(plan, convert_frame, options, Path(out), manifest_path, fmt, created_by,
                               samples_per_shard=samples_per_shard, workers=workers, seed=seed)
        print(report.summary(), flush=True)
        paths.append(str(manifest_path))
    return paths

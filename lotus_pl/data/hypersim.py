"""Hypersim (Roberts et al., 2021; CC BY-SA 3.0) -> shards in the project's sample format.

Reads the layout as distributed::

    <raw>/<scene>/images/scene_cam_XX_final_preview/frame.IIII.tonemap.jpg      RGB (what Lotus trains on)
    <raw>/<scene>/images/scene_cam_XX_final_hdf5/frame.IIII.color.hdf5         linear HDR RGB (optional source)
    <raw>/<scene>/images/scene_cam_XX_geometry_hdf5/frame.IIII.depth_meters.hdf5   distance to the camera centre
    <raw>/<scene>/images/scene_cam_XX_geometry_hdf5/frame.IIII.normal_cam.hdf5     x right, y up, z backward
    <raw>/<scene>/images/scene_cam_XX_geometry_hdf5/frame.IIII.render_entity_id.hdf5   -1 = no geometry

and writes, per frame, ``rgb.jpg``, ``depth.png`` (planar depth, mm), ``normal.png`` (project frame:
x left, y up, z toward the camera, turned toward the camera), ``mask.png`` (geometry with a finite
depth) and ``json``. Splits follow Hypersim's official split CSV; the cameras known to be broken are
left out and reported, as are missing files and frames without any valid depth.

The resize to Lotus's 576×768 happens here, not in the DataModule: decoding is the loader's cost,
a smaller stored image decodes faster, and all sources then arrive at their training size.
RGB is resized bilinearly (antialiased); depth, normals and mask by nearest neighbour, so no depth
is blended across an edge and every stored value is a true one. ``--height 0 --width 0`` keeps the
native 768×1024.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
from PIL import Image

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
from lotus_pl.data.samples import encode_depth_png, encode_normal_png

LICENCE = "CC BY-SA 3.0 (Hypersim, Apple Inc.; https://github.com/apple/ml-hypersim)"
FOV_X = math.pi / 3  # every Hypersim camera: 60 degrees horizontally
DEPTH_SCALE = 1000.0  # uint16 depth = millimetres; planar depth >= 65.535 m is marked invalid
SPLITS = ("train", "val", "test")
# Cameras whose renders are known to be broken (REFERENCE.md, from the Lotus/Marigold filtering).
BROKEN_CAMERAS = frozenset({("ai_004_009", "cam_01"), ("ai_038_007", "cam_00"),
                            ("ai_003_001", "cam_00"), ("ai_031_006", "cam_00")})
SPLIT_CSV = "metadata_images_split_scene_v1.csv"


@dataclass(frozen=True)
class HypersimFrame:
    scene: str  # ai_VVV_NNN
    camera: str  # cam_XX
    index: int

    @property
    def key(self) -> str:
        return f"{self.scene}_{self.camera}_{self.index:04d}"

    def path(self, raw: Path, kind: str) -> Path:
        """``kind``: depth_meters, normal_cam, render_entity_id, tonemap or color."""
        folder = {"tonemap": "final_preview", "color": "final_hdf5"}.get(kind, "geometry_hdf5")
        suffix = "jpg" if kind == "tonemap" else "hdf5"
        return raw / self.scene / "images" / f"scene_{self.camera}_{folder}" / f"frame.{self.index:04d}.{kind}.{suffix}"


def read_hdf5(path: str | Path) -> np.ndarray:
    """The ``dataset`` array of a Hypersim HDF5 file."""
    with h5py.File(path, "r") as f:
        return f["dataset"][()]


def focal_length(width: int) -> float:
    """Hypersim's focal length in pixels: 60 degrees horizontal field of view (886.81 at 1024)."""
    return width / 2 / math.tan(FOV_X / 2)


def planar_depth(distance: np.ndarray, focal: float | None = None) -> np.ndarray:
    """Distance to the camera centre -> planar depth (along the optical axis), NaN kept.

    Pixel centres sit at ``x = u + 0.5 - W/2``, ``y = v + 0.5 - H/2``; a ray through ``(x, y)``
    has length ``sqrt(x² + y² + f²)`` per unit of depth ``f``.
    """
    height, width = distance.shape
    focal = focal_length(width) if focal is None else focal
    x = np.linspace(-width / 2 + 0.5, width / 2 - 0.5, width)
    y = np.linspace(-height / 2 + 0.5, height / 2 - 0.5, height)
    ray = np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + focal**2)
    return distance.astype(np.float64) * focal / ray


def project_normals(normal_cam: np.ndarray, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Hypersim camera-frame normals (x right, y up, z backward) -> project frame (x left), unit,
    turned toward the camera; also the mask of usable ones."""
    n, valid = unit_normals(normal_cam)
    n[..., 0] = -n[..., 0]
    height, width = n.shape[:2]
    return face_camera(n, focal, focal, width / 2, height / 2) * valid[..., None], valid


def tonemap(color: np.ndarray, geometry: np.ndarray) -> np.ndarray:
    """Hypersim's tone map of linear HDR colour -> uint8 RGB.

    The 90th brightness percentile over pixels with geometry is mapped to 0.8 after gamma 2.2.
    """
    rgb = np.nan_to_num(color.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    brightness = 0.3 * rgb[..., 0] + 0.59 * rgb[..., 1] + 0.11 * rgb[..., 2]
    p90 = np.percentile(brightness[geometry], 90) if geometry.any() else 0.0
    scale = 0.0 if p90 < 1e-4 else 0.8**2.2 / p90
    mapped = np.clip(np.maximum(scale * rgb, 0.0) ** (1 / 2.2), 0.0, 1.0)
    return np.round(mapped * 255).astype(np.uint8)


def _read_rgb(frame: HypersimFrame, raw: Path, source: str, geometry: np.ndarray) -> np.ndarray:
    if source == "tonemap":
        with Image.open(frame.path(raw, "tonemap")) as img:
            return np.asarray(img.convert("RGB"))
    return tonemap(read_hdf5(frame.path(raw, "color")), geometry)


def convert_frame(frame: HypersimFrame, options: dict[str, Any]) -> dict[str, bytes]:
    """One Hypersim frame -> the sample's fields (see the module docstring)."""
    raw = Path(options["raw"])
    try:
        distance = read_hdf5(frame.path(raw, "depth_meters"))
        normal_cam = read_hdf5(frame.path(raw, "normal_cam"))
        entity = read_hdf5(frame.path(raw, "render_entity_id"))
    except (OSError, KeyError, ValueError) as exc:
        raise FrameSkipped("unreadable geometry file", str(exc)) from exc
    if distance.ndim != 2 or normal_cam.shape != (*distance.shape, 3) or entity.shape != distance.shape:
        raise FrameSkipped("inconsistent array shapes", f"{distance.shape}, {normal_cam.shape}, {entity.shape}")
    if options["drop_frames_with_nan"] and np.isnan(distance).any():
        raise FrameSkipped("NaN depth (--drop_frames_with_nan)")

    height, width = distance.shape
    focal = focal_length(width)
    depth = planar_depth(distance, focal)
    geometry = entity != -1
    mask = geometry & np.isfinite(depth) & (depth > 0) & (depth < 65535 / DEPTH_SCALE)
    if not mask.any():
        raise FrameSkipped("no valid depth (all NaN / no geometry)")
    normals, normal_ok = project_normals(normal_cam, focal)
    normals = normals * (normal_ok & mask)[..., None]
    try:
        rgb = _read_rgb(frame, raw, options["rgb_source"], geometry)
    except (OSError, KeyError, ValueError) as exc:
        raise FrameSkipped("unreadable rgb file", str(exc)) from exc
    if rgb.shape[:2] != (height, width):
        raise FrameSkipped("inconsistent array shapes", f"rgb {rgb.shape} vs depth {distance.shape}")

    out_h, out_w = options["height"] or height, options["width"] or width
    fx, fy, cx, cy = focal, focal, width / 2, height / 2
    if (out_h, out_w) != (height, width):
        rgb = np.asarray(Image.fromarray(rgb).resize((out_w, out_h), Image.BILINEAR))
        depth, normals, mask = (resize_nearest(a, out_h, out_w) for a in (depth, normals, mask))
        sx, sy = out_w / width, out_h / height
        fx, fy, cx, cy = fx * sx, fy * sy, cx * sx, cy * sy
    rgb_key, rgb_bytes = encode_rgb(rgb, options["rgb_format"], options["jpeg_quality"])
    meta = {"source": "hypersim", "scene": frame.scene, "camera": frame.camera, "frame": frame.index,
            "fx": fx, "fy": fy, "cx": cx, "cy": cy, "depth_scale": DEPTH_SCALE, "height": out_h, "width": out_w,
            "valid_fraction": round(float(mask.mean()), 6)}
    return {
        rgb_key: rgb_bytes,
        "depth.png": encode_depth_png(np.where(mask, depth, 0.0), DEPTH_SCALE),
        "normal.png": encode_normal_png(normals),
        "mask.png": encode_mask_png(mask),
        "json": json_bytes(meta),
    }


def plan_splits(raw: Path, split_csv: Path, splits: list[str], rgb_source: str) -> tuple[dict[str, SplitPlan], int]:
    """Frames per split from the official split CSV, minus what cannot be converted (with reasons).

    Returns the plans and the number of CSV rows outside the public release (not part of any split).
    """
    plans = {s: SplitPlan(f"hypersim_{s}", s, []) for s in splits}
    not_public = 0
    needed = ("depth_meters", "normal_cam", "render_entity_id", rgb_source)
    with open(split_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"scene_name", "camera_name", "frame_id", "included_in_public_release",
                     "split_partition_name"} <= set(rows[0]):
        raise ValueError(f"{split_csv}: not a Hypersim split CSV (columns {sorted(rows[0])})")
    scenes: dict[str, bool] = {}
    for row in rows:
        if row["included_in_public_release"].strip().lower() != "true":
            not_public += 1
            continue
        plan = plans.get(row["split_partition_name"].strip())
        if plan is None:
            continue
        frame = HypersimFrame(row["scene_name"].strip(), row["camera_name"].strip(), int(row["frame_id"]))
        if (frame.scene, frame.camera) in BROKEN_CAMERAS:
            reason = "known broken camera"
        elif not scenes.setdefault(frame.scene, (raw / frame.scene).is_dir()):
            reason = "scene not in the raw tree"
        else:
            missing = [kind for kind in needed if not frame.path(raw, kind).is_file()]
            reason = f"missing {frame.path(raw, missing[0]).name.split('.', 2)[-1]}" if missing else None
        if reason is None:
            plan.frames.append(frame)
        else:
            plan.skipped.setdefault(reason, []).append(frame.key)
    return plans, not_public


def make_hypersim(
    raw: str,
    out: str,
    split_csv: str | None = None,
    manifest_dir: str = "data_manifests",
    splits: list[str] | None = None,
    height: int = 576,
    width: int = 768,
    rgb_source: Literal["tonemap", "color"] = "tonemap",
    rgb_format: Literal["jpg", "png"] = "jpg",
    jpeg_quality: int = 95,
    drop_frames_with_nan: bool = False,
    samples_per_shard: int = 256,
    workers: int = 4,
    seed: int = 0,
) -> list[str]:
    """Convert Hypersim into shards and the manifests ``hypersim_{train,val,test}.yaml``.

    Args:
        raw: Hypersim root (folders ``ai_VVV_NNN``).
        out: folder for the tar shards (``train-000000.tar`` ...).
        split_csv: the official ``metadata_images_split_scene_v1.csv`` (default: inside ``raw``).
        manifest_dir: folder for the manifests.
        splits: which splits to convert (default all three).
        height, width: stored size (Lotus: 576×768); 0 keeps the native 768×1024.
        rgb_source: ``tonemap`` = the distributed ``tonemap.jpg`` (what Lotus trains on); ``color`` =
            ``color.hdf5`` through Hypersim's tone map.
        rgb_format: ``jpg`` (quality ``jpeg_quality``) or lossless ``png``.
        jpeg_quality: JPEG quality of the stored RGB.
        drop_frames_with_nan: leave out every frame with any NaN depth (Lotus's filter) instead of
            masking the NaN pixels; frames with no valid depth at all are always left out.
        samples_per_shard: frames per shard (several shards per rank × loader worker are needed).
        workers: conversion processes.
        seed: the shuffle of frames into shards.

    Returns:
        The paths of the written manifests.
    """
    raw_path = Path(raw)
    csv_path = Path(split_csv) if split_csv else raw_path / SPLIT_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(f"Hypersim split CSV not found: {csv_path} (pass --split_csv)")
    if (height == 0) != (width == 0) or height < 0 or width < 0:
        raise ValueError(f"height and width must both be positive, or both 0 (native), got {height}, {width}")
    splits = list(splits or SPLITS)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown Hypersim splits {unknown}; choose from {list(SPLITS)}")
    plans, not_public = plan_splits(raw_path, csv_path, splits, rgb_source)
    print(f"hypersim: {not_public} rows of {csv_path.name} are outside the public release (in no split)")

    options = {"raw": str(raw_path.resolve()), "height": height, "width": width, "rgb_source": rgb_source,
               "rgb_format": rgb_format, "jpeg_quality": jpeg_quality, "drop_frames_with_nan": drop_frames_with_nan}
    created_by = command_line("hypersim", raw=raw, out=out, split_csv=csv_path, splits=splits, height=height,
                              width=width, rgb_source=rgb_source, rgb_format=rgb_format, jpeg_quality=jpeg_quality,
                              drop_frames_with_nan=drop_frames_with_nan, samples_per_shard=samples_per_shard, seed=seed)
    native = not height
    size = [768, 1024] if native else [height, width]
    fmt = SampleFormat(
        keys=[f"rgb.{rgb_format}", "depth.png", "normal.png", "mask.png", "json"],
        resolution=size,
        depth_scale=DEPTH_SCALE,
        intrinsics=[focal_length(1024) * size[1] / 1024, focal_length(1024) * size[0] / 768, size[1] / 2, size[0] / 2],
        licence=LICENCE,
        preprocessing=[
            "splits: official split CSV, public-release rows; known broken cameras left out",
            "depth: distance to camera centre -> planar depth z = d * f / sqrt(x^2 + y^2 + f^2), f = 886.81 px "
            "(60 deg HFOV), pixel centres at u + 0.5; stored in mm; NaN, no geometry (entity id -1) and >= 65.535 m invalid",
            "normals: normal_cam (x right, y up, z backward) -> x negated (x left, y up, z toward camera), "
            "normalised, flipped to face the camera; invalid = (0,0,0)",
            f"rgb: {'tonemap.jpg as distributed' if rgb_source == 'tonemap' else 'color.hdf5 with the Hypersim tone map'}",
            "size: native 768x1024" if native else
            f"size: resized 768x1024 -> {height}x{width}; rgb bilinear, depth/normal/mask nearest; intrinsics scaled",
            "mask.png: 255 where depth is valid",
            f"frames with no valid depth left out{'; frames with any NaN depth left out' if drop_frames_with_nan else ''}",
            f"frames shuffled into shards (seed {seed})",
        ],
    )
    paths = []
    for split in splits:
        manifest_path = Path(manifest_dir) / f"hypersim_{split}.yaml"
        report = convert_split(plans[split], convert_frame, options, Path(out), manifest_path, fmt, created_by,
                               samples_per_shard=samples_per_shard, workers=workers, seed=seed,
                               unfingerprinted=("raw",))
        print(report.summary(), flush=True)
        paths.append(str(manifest_path))
    return paths

"""Raw datasets -> WebDataset shards and one manifest per split: parallel, resumable, and explicit
about every frame it leaves out.

A source (:mod:`lotus_pl.data.hypersim`, :mod:`lotus_pl.data.vkitti`) plans its frames per split
and supplies one function that turns a frame into a sample, or raises :class:`FrameSkipped` with
the reason. This module does the rest, the same way for every source:

* The frames of a split are shuffled once with a fixed seed and cut into shards, so every shard is
  a random subset. A training worker batches from the few shards it holds open; consecutive frames
  of one camera path in one shard would make its batches near-duplicates.
* Shards are written by a pool of processes, each to ``<shard>.tar.tmp`` and then renamed, and a
  ``<shard>.done.json`` records the shard's sample count, sha256, skipped frames and a fingerprint
  of its frames and the converter settings. A rerun reuses every shard whose record matches and
  whose tar still has the recorded sha256, so after an interruption only unfinished shards are
  redone, and a changed setting redoes exactly the shards it affects (all of them).
* Every frame left out is reported by reason, in the printed summary and in the manifest.

The geometry shared by the sources (nearest-neighbour resizing, turning normals toward the camera)
is here too; everything source-specific lives with its source.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from lotus_pl.data.manifest import Manifest, ShardEntry, sha256_file

FORMAT_VERSION = 1  # bump when a converter's output changes for the same inputs and settings
_MTIME = 0.0  # fixed tar member mtime: shard bytes do not depend on when they were written
_EXAMPLES = 10  # frame keys listed per skip reason in a manifest


class FrameSkipped(Exception):
    """A frame that cannot become a sample; ``reason`` groups it in the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class SplitPlan:
    """What a source wants converted for one split.

    ``frames`` are picklable objects with a unique ``key`` (a WebDataset key: no dots);
    ``skipped`` maps a reason to the keys of frames left out while planning.
    """

    name: str  # manifest name, e.g. "hypersim_train"
    split: str  # shard file prefix, e.g. "train"
    frames: list[Any]
    skipped: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class SampleFormat:
    """Manifest fields that describe every sample of a source.

    Resolution and intrinsics are read back from the samples' json (``height, width, fx, fy, cx,
    cy``), so the manifest states what was written; the nominal values here serve an empty split.
    """

    keys: list[str]
    resolution: list[int]  # nominal [H, W]
    depth_scale: float
    intrinsics: list[float] | None  # nominal [fx, fy, cx, cy]
    licence: str
    preprocessing: list[str]


@dataclass
class SplitReport:
    """What one conversion of a split did."""

    name: str
    manifest: str
    samples: int
    shards: int
    written: int  # shards converted by this run
    reused: int  # shards already complete from an earlier run
    skipped: dict[str, list[str]]

    def summary(self) -> str:
        lines = [f"{self.name}: {self.samples} samples in {self.shards} shards "
                 f"({self.written} converted now, {self.reused} already complete) -> {self.manifest}"]
        if not self.samples:
            lines.append("  WARNING: no samples; check --raw and the split settings")
        total = sum(len(v) for v in self.skipped.values())
        if total:
            lines.append(f"  skipped {total} frames:")
            for reason, keys in sorted(self.skipped.items()):
                lines.append(f"    {len(keys):7d}  {reason}  (e.g. {', '.join(keys[:3])})")
        return "\n".join(lines)


@dataclass
class _ShardJob:
    path: str
    frames: list[Any]
    convert: Callable[[Any, dict[str, Any]], dict[str, bytes]]
    options: dict[str, Any]
    fingerprint: str


def _record_path(shard: str) -> str:
    return shard[: -len(".tar")] + ".done.json"


def _finished(job: _ShardJob) -> dict[str, Any] | None:
    """The shard's done-record if the shard is complete for exactly this job, else None."""
    try:
        record = json.loads(Path(_record_path(job.path)).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != job.fingerprint:
        return None
    if record.get("num_samples") == 0:
        return record
    if not os.path.isfile(job.path) or sha256_file(job.path) != record.get("sha256"):
        return None
    return record


def _write_shard(job: _ShardJob) -> dict[str, Any]:
    """Convert the job's frames into ``job.path`` (via ``.tar.tmp``) and write its done-record."""
    skipped: dict[str, list[str]] = {}
    geometry: set[tuple] = set()
    count, tmp = 0, job.path + ".tmp"
    with open(tmp, "wb") as stream, wds.TarWriter(stream, mtime=_MTIME, encoder=False) as sink:
        for frame in job.frames:
            try:
                sample = job.convert(frame, job.options)
            except FrameSkipped as skip:
                skipped.setdefault(skip.reason, []).append(frame.key)
                continue
            sink.write({"__key__": frame.key, **sample})
            count += 1
            meta = json.loads(sample["json"])
            geometry.add(tuple(meta.get(k) for k in ("height", "width", "fx", "fy", "cx", "cy")))
    digest = None
    if count:
        os.replace(tmp, job.path)
        digest = sha256_file(job.path)
    else:  # nothing to keep: no empty tar, but a record so a rerun does not retry these frames
        os.remove(tmp)
        if os.path.exists(job.path):
            os.remove(job.path)
    record = {"fingerprint": job.fingerprint, "num_samples": count, "sha256": digest, "skipped": skipped,
              "geometry": sorted(list(g) for g in geometry)}
    record_tmp = _record_path(job.path) + ".tmp"
    Path(record_tmp).write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(record_tmp, _record_path(job.path))
    return dict(record, path=job.path)


def _fingerprint(keys: list[str], options: dict[str, Any]) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, "frames": keys, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def convert_split(
    plan: SplitPlan,
    convert: Callable[[Any, dict[str, Any]], dict[str, bytes]],
    options: dict[str, Any],
    out_dir: str | os.PathLike,
    manifest_path: str | os.PathLike,
    fmt: SampleFormat,
    created_by: str,
    samples_per_shard: int = 256,
    workers: int = 2,
    seed: int = 0,
    unfingerprinted: tuple[str, ...] = (),
) -> SplitReport:
    """Write ``plan`` as ``<out_dir>/<split>-NNNNNN.tar`` shards plus the manifest; resume if possible.

    ``convert(frame, options)`` must be a module-level function (it runs in worker processes) that
    returns the sample's fields as bytes or raises :class:`FrameSkipped`. Options named in
    ``unfingerprinted`` (where the raw data lives) do not invalidate finished shards when changed.
    """
    if samples_per_shard <= 0:
        raise ValueError("samples_per_shard must be positive")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = Path(manifest_path)
    manifest_dir = manifest_path.resolve().parent

    frames = sorted(plan.frames, key=lambda f: f.key)
    random.Random(f"{seed}-{plan.name}").shuffle(frames)
    settings = {k: v for k, v in options.items() if k not in unfingerprinted}
    jobs = []
    for k, start in enumerate(range(0, len(frames), samples_per_shard)):
        chunk = frames[start:start + samples_per_shard]
        jobs.append(_ShardJob(str(out / f"{plan.split}-{k:06d}.tar"), chunk, convert, options,
                              _fingerprint([f.key for f in chunk], settings)))

    records, todo = [], []
    for job in jobs:
        record = _finished(job)
        if record is not None:
            records.append(dict(record, path=job.path))
        else:
            todo.append(job)
    print(f"{plan.name}: {len(frames)} frames in {len(jobs)} shards; "
          f"{len(jobs) - len(todo)} already complete, converting {len(todo)}", flush=True)
    start_time = time.perf_counter()
    if workers <= 1 or len(todo) <= 1:
        done = map(_write_shard, todo)
        pool = None
    else:  # spawn: safe whatever threads the parent (torch, loggers) has started
        pool = mp.get_context("spawn").Pool(min(workers, len(todo)))
        done = pool.imap_unordered(_write_shard, todo, chunksize=1)
    try:
        for i, record in enumerate(done, 1):
            records.append(record)
            lost = sum(len(v) for v in record["skipped"].values())
            print(f"  [{i}/{len(todo)}] {Path(record['path']).name}: {record['num_samples']} samples, "
                  f"{lost} skipped ({time.perf_counter() - start_time:.0f} s)", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    skipped = {reason: list(keys) for reason, keys in plan.skipped.items()}
    for record in records:
        for reason, keys in record["skipped"].items():
            skipped.setdefault(reason, []).extend(keys)
    for keys in skipped.values():
        keys.sort()
    kept = sorted((r for r in records if r["num_samples"]), key=lambda r: r["path"])
    resolution, intrinsics = _geometry(plan.name, kept, fmt)
    manifest = Manifest(
        name=plan.name,
        shards=[ShardEntry(os.path.relpath(r["path"], manifest_dir), int(r["num_samples"]), r["sha256"]) for r in kept],
        keys=list(fmt.keys),
        resolution=resolution,
        depth_scale=fmt.depth_scale,
        licence=fmt.licence,
        created_by=created_by,
        intrinsics=intrinsics,
        preprocessing=list(fmt.preprocessing),
        skipped={reason: {"count": len(keys), "examples": keys[:_EXAMPLES]} for reason, keys in sorted(skipped.items())},
    )
    manifest.save(manifest_path)
    return SplitReport(plan.name, str(manifest_path), manifest.num_samples, len(kept),
                       len(todo), len(jobs) - len(todo), skipped)


def _geometry(name: str, records: list[dict[str, Any]], fmt: SampleFormat) -> tuple[list[int], list[float] | None]:
    """The manifest's resolution and intrinsics: those every sample has (nominal if no samples)."""
    seen = {tuple(g) for r in records for g in r.get("geometry", [])}
    if not seen:
        return list(fmt.resolution), fmt.intrinsics
    if len(seen) > 1:
        sizes = sorted({g[:2] for g in seen})
        print(f"  WARNING {name}: samples differ in size or intrinsics ({len(seen)} kinds, sizes {sizes[:4]}); "
              "the manifest gives the first size and leaves intrinsics to each sample's json")
        return [int(sizes[0][0]), int(sizes[0][1])], None
    height, width, *intrinsics = seen.pop()
    if any(x is None for x in intrinsics):  # a source without cameras (lotus_pl data folder)
        return [int(height), int(width)], None
    return [int(height), int(width)], [float(x) for x in intrinsics]


def command_line(command: str, **options: Any) -> str:
    """The ``lotus_pl data ...`` line that reproduces a conversion (recorded as ``created_by``)."""
    parts = [f"lotus_pl data {command}"]
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = "[" + ",".join(str(v) for v in value) + "]"
        parts.append(f"--{name}={value}")
    return " ".join(parts)


# --------------------------------------------------------------------------- #
# Geometry and encodings shared by the sources
# --------------------------------------------------------------------------- #
def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output pixel for a nearest-neighbour resize (pixel centres aligned).

    Output pixel ``i`` has its centre at ``(i + 0.5) * size_in / size_out`` in input pixels; integer
    arithmetic keeps it exact, so a test can predict every converted pixel.
    """
    return ((2 * np.arange(size_out) + 1) * size_in) // (2 * size_out)


def resize_nearest(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[H, W, ...]``: no value is blended across a depth edge."""
    return arr[nearest_indices(arr.shape[0], height)][:, nearest_indices(arr.shape[1], width)]


def toward_camera(height: int, width: int, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """``[H, W, 3]`` direction from each pixel's surface point to the camera, in the project frame
    (x left, y up, z toward the camera; pixel ``u`` has its centre at ``u + 0.5``)."""
    u = (np.arange(width) + 0.5 - cx) / fx
    v = (np.arange(height) + 0.5 - cy) / fy
    out = np.ones((height, width, 3))
    out[..., 0] = u[None, :]
    out[..., 1] = v[:, None]
    return out


def face_camera(normals: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Flip normals that point away from the camera (the Lotus/DSINE convention)."""
    to_camera = toward_camera(normals.shape[0], normals.shape[1], fx, fy, cx, cy)
    away = np.sum(normals * to_camera, axis=-1) < 0
    return np.where(away[..., None], -normals, normals)


def unit_normals(normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised copies and the mask of usable ones (finite, not near zero length)."""
    n = np.nan_to_num(np.asarray(normals, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    finite = np.isfinite(normals).all(axis=-1)
    length = np.linalg.norm(n, axis=-1)
    valid = finite & (length > 1e-6)
    n = np.where(valid[..., None], n / np.maximum(length, 1e-6)[..., None], 0.0)
    return n, valid


def encode_rgb(rgb: np.ndarray, fmt: str, quality: int) -> tuple[str, bytes]:
    """uint8 ``[H, W, 3]`` -> (``"rgb.jpg"`` or ``"rgb.png"``, bytes)."""
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=0)
        return "rgb.jpg", buf.getvalue()
    if fmt == "png":
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=6)
        return "rgb.png", buf.getvalue()
    raise ValueError(f"rgb_format must be 'jpg' or 'png', got {fmt!r}")


def encode_mask_png(mask: np.ndarray) -> bytes:
    """Boolean ``[H, W]`` -> 8-bit PNG, 255 where the pixel may be supervised."""
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def json_bytes(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True).encode("utf-8")

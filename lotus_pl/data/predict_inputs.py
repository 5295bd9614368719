"""What ``lotus_pl predict`` reads: image files and video frames, planned into batches of one size.

:func:`list_inputs` expands a file, a folder (searched recursively) or a glob into image and video
paths. :func:`plan_inputs` turns them into jobs, each a unit of work that one loader worker does
from start to end:

- :class:`ImageBatch`: up to ``batch_size`` images of the same upright size. Images are grouped by
  size (groups in the order of their first image, paths sorted), so the model always receives one
  size per batch, whatever sizes a folder mixes, and the order is deterministic;
- :class:`VideoFrames`: a whole video, decoded sequentially by one worker and cut into batches of
  consecutive frames, so that a sequence's frames arrive in order with any number of workers.

Planning reads headers only (and a video's first frame, and its packets when the container does not
declare a frame count), so the number of batches is known before anything is decoded: the dataset
is sized and the progress bar shows the total. A file that cannot be read is reported by name and
skipped, at planning or while loading; the rest continue. A job always yields the number of batches
planned (an empty one where nothing could be read), so the count holds to the end.

Batches hold ``image`` ``[B, 3, h, w]`` in [-1, 1], ``path`` (one string per item; a frame's is
``clip.mp4#000012``) and ``size`` (each item's original upright ``[H, W]``: ``h, w`` are smaller
when ``max_size`` had the loader resize it); batches of video frames also hold ``sequence`` (the
video's path) and ``frame`` (the frame's index in the video).
"""

from __future__ import annotations

import glob
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from lotus_pl.data.images import IMAGE_SUFFIXES, load_image, processing_size, upright_size
from lotus_pl.data.samples import image_to_float
from lotus_pl.data.videos import VIDEO_SUFFIXES, VideoError, frame_path, iter_frames, output_stem, probe_video

log = logging.getLogger(__name__)

#: What PIL raises for files that are not images, truncated ones and decompression bombs.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def list_inputs(spec: str) -> list[Path]:
    """Expand ``spec`` (a file, a folder searched recursively, or a glob) to sorted image and video paths."""
    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.suffix.lower() in suffixes and p.is_file()]
    else:
        found = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in suffixes and Path(p).is_file()]
    if not found:
        raise FileNotFoundError(f"no images or videos found at {spec!r} (a file, a folder, or a glob such as 'photos/*.jpg')")
    return sorted(found)


@dataclass(frozen=True)
class ImageBatch:
    """Images of one upright size, predicted as one batch."""

    paths: tuple[str, ...]
    size: tuple[int, int]
    max_size: int = 0  # the loader resizes larger images to the model's processing size (0: never)
    num_batches = 1

    @property
    def num_items(self) -> int:
        return len(self.paths)

    def batches(self) -> Iterator[dict[str, Any]]:
        expected = processing_size(self.size, self.max_size) if self.max_size and max(self.size) > self.max_size else self.size
        images, paths = [], []
        for path in self.paths:
            try:
                image = load_image(path, self.max_size)
            except IMAGE_ERRORS as exc:
                log.warning("skipping %s: cannot read it as an image (%s)", path, exc)
                continue
            if tuple(image.shape[-2:]) != tuple(expected):
                log.warning("skipping %s: decoded at %s, not the %s its header promised", path, tuple(image.shape[-2:]), expected)
                continue
            images.append(image)
            paths.append(path)
        if not paths:  # still a batch, so that the count the progress bar was given holds
            yield empty_batch(expected)
            return
        yield {"image": torch.stack(images), "path": paths, "size": [list(self.size)] * len(paths)}


@dataclass(frozen=True)
class VideoFrames:
    """A video's frames (every ``stride``-th, at most ``frames`` of them), in batches of consecutive frames."""

    path: str
    size: tuple[int, int]
    frames: int  # frames planned: every stride-th of the container's frames, capped by max_frames
    stride: int = 1
    batch_size: int = 1
    max_size: int = 0
    capped: bool = False  # ``frames`` is max_frames: the video has more, and they are not wanted

    @property
    def num_items(self) -> int:
        return self.frames

    @property
    def num_batches(self) -> int:
        return math.ceil(self.frames / self.batch_size)

    def _batch(self, chunk: list[tuple[int, np.ndarray]]) -> dict[str, Any]:
        pixels = torch.from_numpy(np.stack([rgb for _, rgb in chunk])).permute(0, 3, 1, 2)
        return {
            "image": image_to_float(pixels.contiguous()),
            "path": [frame_path(self.path, index) for index, _ in chunk],
            "size": [list(self.size)] * len(chunk),
            "sequence": [self.path] * len(chunk),
            "frame": [index for index, _ in chunk],
        }

    def batches(self) -> Iterator[dict[str, Any]]:
        """Exactly ``num_batches`` batches, as planned (the progress bar's count, and Lightning stops
        there): frames beyond the plan are left out with a warning, missing ones give empty batches."""
        chunk: list[tuple[int, np.ndarray]] = []
        done = 0
        try:
            for count, (index, rgb) in enumerate(iter_frames(self.path, self.stride, self.max_size)):
                if count == self.frames:
                    if not self.capped:
                        log.warning("%s has more frames than its container declares; predicted the first %d", self.path, count)
                    break
                chunk.append((index, rgb))
                if len(chunk) == self.batch_size:
                    yield self._batch(chunk)
                    chunk, done = [], done + 1
        except VideoError as exc:
            log.warning("skipping the rest of %s", exc)
        if chunk:
            yield self._batch(chunk)
            done += 1
        for _ in range(self.num_batches - done):
            yield empty_batch(self.size) | {"sequence": [], "frame": []}


Job = ImageBatch | VideoFrames


def empty_batch(size: tuple[int, int]) -> dict[str, Any]:
    """A batch without items (``LotusModel.predict_step`` returns an empty prediction for it)."""
    return {"image": torch.empty(0, 3, *size), "path": [], "size": []}


def plan_inputs(paths: list[Path], batch_size: int = 1, max_size: int = 0, video_stride: int = 1,
                max_frames: int = 0) -> list[Job]:
    """Jobs for ``paths`` in the order of their first input; unreadable files are reported and left out.

    ``video_stride`` keeps every k-th frame of videos, ``max_frames`` (0: all) caps the frames kept
    per video, ``max_size`` (0: off) has the loader resize larger inputs to the model's processing size.
    """
    if batch_size < 1 or video_stride < 1 or max_frames < 0:
        raise ValueError(f"need batch_size >= 1, video_stride >= 1 and max_frames >= 0, "
                         f"got {batch_size}, {video_stride}, {max_frames}")
    placed: list[tuple[int, Job]] = []
    groups: dict[tuple[int, int], list[tuple[int, str]]] = {}
    for position, path in enumerate(paths):
        if path.suffix.lower() in VIDEO_SUFFIXES:
            try:
                info = probe_video(path)
            except VideoError as exc:
                log.warning("skipping %s", exc)
                continue
            count = math.ceil(info.frames / video_stride)
            capped = 0 < max_frames < count
            placed.append((position, VideoFrames(str(path), info.size, max_frames if capped else count, video_stride,
                                                 batch_size, max_size, capped)))
            continue
        try:
            size = upright_size(path)
        except IMAGE_ERRORS as exc:
            log.warning("skipping %s: cannot read it as an image (%s)", path, exc)
            continue
        groups.setdefault(size, []).append((position, str(path)))
    for size, members in groups.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            placed.append((chunk[0][0], ImageBatch(tuple(p for _, p in chunk), size, max_size)))
    jobs = [job for _, job in sorted(placed, key=lambda item: item[0])]
    _warn_on_shared_stems(jobs)
    return jobs


def _warn_on_shared_stems(jobs: list[Job]) -> None:
    """Inputs with the same file stem (``a/x.jpg``, ``b/x.png``) write the same output files."""
    seen: dict[str, str] = {}
    for job in jobs:
        for path in job.paths if isinstance(job, ImageBatch) else [job.path]:
            stem = output_stem(path)
            if stem in seen:
                log.warning("%s and %s share the output name %r: the later one's outputs replace the other's",
                            seen[stem], path, stem)
            seen.setdefault(stem, path)


class PredictInputs(IterableDataset):
    """Batches of the given jobs (use ``batch_size=None`` in the DataLoader: items are batches).

    Loader workers take every n-th job, so that each job, a whole video included, is read by one
    worker in order; the DataLoader interleaves the workers' batches deterministically.
    """

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = list(jobs)

    def __len__(self) -> int:
        return sum(job.num_batches for job in self.jobs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for job in self.jobs[worker::workers]:
            yield from job.batches()

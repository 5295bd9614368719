"""Reading a video's frames to predict on, one at a time (PyAV), never the whole video in memory.

A frame is named ``<video path>#<frame index, 6 digits>`` (:func:`frame_path`); outputs name it
``<video stem>_<frame index>`` (:func:`output_stem`). Frames come in presentation order, upright
(the rotation of the stream's display matrix is applied, as players do; its flips are not), as RGB
uint8, optionally every ``stride``-th frame only. Like :func:`lotus_pl.data.images.load_image`,
frames can be resized on decoding to the size the model would process them at (swscale's area
filter), so that 4K frames never become 4K tensors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from lotus_pl.data.images import processing_size

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts",
                  ".m2ts", ".3gp", ".ogv"}

_FRAME_PATH = re.compile(r"(?P<video>.+)#(?P<index>\d+)")


class VideoError(ValueError):
    """A video that cannot be opened or decoded (the message names the file)."""


def frame_path(video: str | Path, index: int) -> str:
    """The name a frame travels under in batches: ``clip.mp4#000012``."""
    return f"{video}#{index:06d}"


def output_stem(path: str) -> str:
    """Stem of an input's output files: ``photo`` for ``dir/photo.jpg``, ``clip_000012`` for a frame
    ``dir/clip.mp4#000012``."""
    match = _FRAME_PATH.fullmatch(path)
    if match and Path(match["video"]).suffix.lower() in VIDEO_SUFFIXES:
        return f"{Path(match['video']).stem}_{match['index']}"
    return Path(path).stem


@dataclass(frozen=True)
class VideoInfo:
    """What planning needs to know about a video before decoding it."""

    frames: int  # frames in the container: as declared, else counted packet by packet (nothing decoded)
    size: tuple[int, int]  # upright (H, W) of its frames


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that make the frame upright (its display matrix rotation)."""
    return round(frame.rotation / 90) % 4


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count and upright frame size; decodes the first frame, so an undecodable video fails here."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            first = next(container.decode(video=0), None)
            if first is None:
                raise VideoError(f"{path}: no frame could be decoded")
            size = (first.height, first.width) if _quarter_turns(first) % 2 == 0 else (first.width, first.height)
            frames = container.streams.video[0].frames
        if frames <= 0:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                frames = sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: cannot read it as a video ({exc})") from exc
    return VideoInfo(frames=max(frames, 1), size=size)


def iter_frames(path: str | Path, stride: int = 1, max_size: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame index, [H, W, 3] uint8 RGB)`` for every ``stride``-th frame, in order, upright; frames
    whose longest edge exceeds ``max_size`` (if > 0) come at ``processing_size(size, max_size)``."""
    index = -1
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index % stride:
                    continue
                turns = _quarter_turns(frame)
                stored = (frame.height, frame.width)
                upright = stored if turns % 2 == 0 else stored[::-1]
                reformat = {}
                if max_size > 0 and max(upright) > max_size:
                    height, width = processing_size(upright, max_size)
                    if turns % 2:
                        height, width = width, height
                    reformat = {"width": width, "height": height, "interpolation": "AREA"}
                rgb = frame.to_ndarray(format="rgb24", **reformat)
                yield index, np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: decoding failed after frame {index} ({exc})") from exc

"""What the demo page does with an upload, without the page: read an image or a short video, predict
every task of the model, and write what the page shows and offers for download.

Per image (``<stem>`` = the upload's name): each task's files as ``lotus_pl predict`` writes them
(depth: 16-bit PNG, NPY, colour PNG, JSON; normals: PNG, NPY), and for depth models
``<stem>.ply``, the coloured point cloud (OpenCV camera frame; depth is relative, so metres are
a guess: the prediction mapped onto ``near``..``far`` through a ``fov``-degree camera), plus
``<stem>_view.glb``, a coloured mesh of it at most ``view_size`` pixels across for the 3D viewer.
Per video: the first ``max_frames`` frames (every ``stride``-th) are predicted in order, the
colour maps beside the input become ``<stem>_maps.mp4``, each task's predictions of every frame
``<stem>_<task>_frames.npy`` ``[T, C, H, W]``, and the first frame gets the image outputs.

Unreadable uploads raise :class:`UploadError` with a message for the user.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch

from lotus_pl.data.convert import resize_nearest
from lotus_pl.data.images import IMAGE_SUFFIXES, load_image, upright_size
from lotus_pl.data.predict_inputs import IMAGE_ERRORS
from lotus_pl.data.videos import VIDEO_SUFFIXES, VideoError, iter_frames, probe_video
from lotus_pl.demo.glb import write_glb
from lotus_pl.geometry import FRAME_COMMENT, Intrinsics, backproject, mesh_from_depth, normals_to_opencv, relative_to_depth, valid_depth
from lotus_pl.model import LotusModel
from lotus_pl.geometry.meshio import write_ply
from lotus_pl.tasks.depth import Depth
from lotus_pl.tasks.normal import Normal


class UploadError(ValueError):
    """An upload the demo cannot use; the message is shown on the page."""


@dataclass
class DemoResult:
    """What one upload produced: captioned pictures (input first), files to download, the 3D view,
    and a line saying what was done (resolution, time)."""

    gallery: list[tuple[np.ndarray, str]]
    files: list[Path]
    view: Path | None
    message: str
    seconds: float
    video: Path | None = None
    extra: dict = field(default_factory=dict)  # "stages_s": wall seconds per stage (an image; a video: its first frame's files)


def _uint8(picture: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8."""
    return np.round(picture.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)


class DemoPredictor:
    """A model ready for uploads (eval mode, CPU unless told otherwise).

    Args:
        model: any LotusModel (embedded, exported or released weights), weights loaded.
        out_dir: where each upload's files go (one sub-folder per upload); a temporary folder by default.
        max_frames, stride: how much of a video is predicted.
        fov, near, far: the guessed camera and depth range of the point cloud.
        view_size: longest edge of the mesh shown in the 3D viewer.
    """

    def __init__(self, model: LotusModel, out_dir: str | Path | None = None, max_frames: int = 32, stride: int = 1,
                 fov: float = 60.0, near: float = 1.0, far: float = 10.0, view_size: int = 256,
                 device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="lotus_pl_demo_"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_frames, self.stride = max_frames, stride
        self.fov, self.near, self.far, self.view_size = fov, near, far, view_size
        self._default_resolution = model.inference_resolution  # run() sets the model's per upload

    @property
    def default_resolution(self) -> int:
        """The processing resolution uploads get unless the page asks otherwise (0 = native)."""
        return self._default_resolution

    # ------------------------------------------------------------------ one image
    @torch.no_grad()
    def _predict(self, image: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        preds = self.model.predict_all(image[None].to(self.device))
        return {task.name: task.resize_for(preds[task.name].float(), size).cpu() for task in self.model.tasks}

    def _load(self, path: Path, resolution: int) -> tuple[torch.Tensor, tuple[int, int]]:
        try:
            size = upright_size(path)
            return load_image(path, 0 if self.model.tile_size else resolution), size
        except IMAGE_ERRORS as exc:
            raise UploadError(f"cannot read {path.name} as an image ({type(exc).__name__}: {exc}); "
                              f"upload a {', '.join(sorted(IMAGE_SUFFIXES))} image or a short video") from exc

    def run(self, path: str | Path, resolution: int | None = None, seed: int = 0) -> DemoResult:
        """Predict ``path`` (an image or a video) at ``resolution`` (None: the model's default; 0:
        native) with inference noise ``seed``; see the module docstring for what is written."""
        path = Path(path)
        if not path.is_file():
            raise UploadError(f"{path.name}: no such file (the upload did not arrive)")
        resolution = self.default_resolution if resolution is None else int(resolution)
        if resolution < 0:
            raise UploadError(f"processing resolution must be 0 (native) or a positive number of pixels, got {resolution}")
        self.model.processing_resolution, self.model.seed = resolution, int(seed)
        out = self.out_dir / uuid.uuid4().hex[:12]
        out.mkdir()
        start = time.perf_counter()
        if path.suffix.lower() in VIDEO_SUFFIXES:
            result = self._run_video(path, out, resolution)
        else:
            image, size = self._load(path, resolution)
            read = time.perf_counter()
            preds = self._predict(image, size)
            predicted = time.perf_counter()
            colors = _uint8((load_image(path) + 1) / 2) if tuple(image.shape[-2:]) != size else _uint8((image + 1) / 2)
            result = self._outputs(path.stem, colors, preds, out)
            result.extra["stages_s"] = {"read": read - start, "predict": predicted - read, **result.extra["stages_s"]}
        result.seconds = time.perf_counter() - start
        where = f"{resolution} px (longest edge)" if resolution else "native size"
        result.message = (f"{path.name}: {', '.join(t.name for t in self.model.tasks)} at {where}, seed {seed}, "
                          f"in {result.seconds:.2f} s. {result.message}").strip()
        return result

    def _outputs(self, stem: str, colors: np.ndarray, preds: dict[str, torch.Tensor], out: Path) -> DemoResult:
        """Pictures, task files, point cloud and 3D view of one image's predictions."""
        start = time.perf_counter()
        gallery, files = [(colors, "input")], []
        for task in self.model.tasks:
            pred = preds[task.name]
            gallery.append((_uint8(task.visualize(pred)[0]), task.name))
            files += task.save(pred[0].numpy(), out, stem)
        stages = {"maps_and_files": time.perf_counter() - start}
        view, note = None, ""
        depth_tasks = [t for t in self.model.tasks if isinstance(t, Depth)]
        if depth_tasks:
            task = depth_tasks[0]
            depth = relative_to_depth(preds[task.name][0, 0].numpy(), task.encoding.space, self.near, self.far)
            height, width = depth.shape
            camera = Intrinsics.from_fov(width, height, self.fov)
            normal_tasks = [t for t in self.model.tasks if isinstance(t, Normal)]
            normals = normals_to_opencv(preds[normal_tasks[0].name][0].numpy()) if normal_tasks else None
            valid = valid_depth(depth)
            comments = [FRAME_COMMENT, f"depth: relative {task.encoding.space} mapped onto a GUESSED {self.near:g}..{self.far:g} m",
                        f"intrinsics: GUESSED from a {self.fov:g} degree horizontal field of view"]
            files.append(write_ply(out / f"{stem}.ply", backproject(depth, camera), colors[valid],
                                   None if normals is None else normals[valid], comments=comments))
            ply_done = time.perf_counter()
            stages["ply"] = ply_done - start - stages["maps_and_files"]
            scale = min(1.0, self.view_size / max(height, width))
            small = (max(2, round(height * scale)), max(2, round(width * scale)))
            mesh = mesh_from_depth(resize_nearest(depth, *small), camera.resized((height, width), small),
                                   colors=resize_nearest(colors, *small))
            view = write_glb(out / f"{stem}_view.glb", mesh.vertices, mesh.faces, mesh.colors)
            stages["view"] = time.perf_counter() - ply_done
            note = f"3D: relative depth shown over a guessed {self.near:g}-{self.far:g} m range and {self.fov:g} degree view."
        return DemoResult(gallery, files, view, note, 0.0, extra={"stages_s": stages})

    # ------------------------------------------------------------------ a video
    def _run_video(self, path: Path, out: Path, resolution: int) -> DemoResult:
        try:
            probe_video(path)
            frames = []
            for count, (index, rgb) in enumerate(iter_frames(path, self.stride)):
                if count >= self.max_frames:
                    break
                frames.append((index, rgb))
        except VideoError as exc:
            raise UploadError(f"cannot read {path.name} as a video: {exc}") from exc
        if not frames:
            raise UploadError(f"{path.name}: the video has no frames")
        per_task: dict[str, list[torch.Tensor]] = {t.name: [] for t in self.model.tasks}
        pictures = []
        first = None
        for index, rgb in frames:
            image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1
            preds = self._predict(image, rgb.shape[:2])
            for task in self.model.tasks:
                per_task[task.name].append(preds[task.name][0])
            row = [rgb] + [_uint8(t.visualize(preds[t.name])[0]) for t in self.model.tasks]
            pictures.append(np.concatenate(row, axis=1))
            if first is None:
                first = (rgb, preds)
        result = self._outputs(f"{path.stem}_{frames[0][0]:06d}", first[0], first[1], out)
        for name, preds in per_task.items():
            npy = out / f"{path.stem}_{name}_frames.npy"
            np.save(npy, torch.stack(preds).numpy().astype(np.float32))
            result.files.append(npy)
        result.video = write_mp4(out / f"{path.stem}_maps.mp4", pictures, fps=max(1, round(probe_fps(path) / self.stride)))
        result.files.append(result.video)
        result.message = (f"{len(frames)} frames (every {self.stride}) of the video; the first frame's maps are shown, "
                          f"all frames in {result.video.name}. " + result.message)
        return result


def probe_fps(path: Path) -> float:
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 10.0


def write_mp4(path: Path, pictures: list[np.ndarray], fps: int = 10) -> Path:
    """uint8 ``[H, W, 3]`` pictures as an H.264 MP4 (even sizes: the codec's chroma subsampling needs them)."""
    height, width = (pictures[0].shape[0] // 2) * 2, (pictures[0].shape[1] // 2) * 2
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for picture in pictures:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture[:height, :width]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path

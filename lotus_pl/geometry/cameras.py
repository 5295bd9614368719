"""Posed cameras of a multi-view sequence, read from the formats people have.

One model for all of them: :class:`PosedCamera` holds a view's name, image size, pinhole
:class:`~lotus_pl.geometry.single_view.Intrinsics` (pixel centres at ``u + 0.5``) and its
camera-to-world pose in the **OpenCV camera frame** (x right, y down, z forward). Readers:

* a COLMAP model (``cameras``, ``images``, ``points3D`` as ``.txt`` or ``.bin``), read with
  ``pycolmap``; its sparse points come with their observations (:class:`SparsePoints`). COLMAP
  also puts pixel centres at ``+0.5``, and ``cam_from_world`` is already in the OpenCV frame;
* Nerfstudio / instant-ngp ``transforms.json``: camera-to-world in the OpenGL camera frame
  (x right, y up, z backward), converted by flipping the camera's y and z axes;
* lotus_pl's own ``cameras.json`` (what ``lotus_pl data synthetic-multiview`` writes).

Intrinsic models other than a pinhole are refused by name (undistort the images first), unless
all their distortion coefficients are zero.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lotus_pl.geometry.single_view import Intrinsics

__all__ = [
    "CameraSet", "PosedCamera", "SparsePoints", "OPENGL_TO_OPENCV", "read_cameras_json", "read_colmap",
    "read_poses", "read_transforms", "write_cameras_json", "write_colmap_text", "write_transforms",
]

#: Right-multiplying an OpenGL camera-to-world by this gives the OpenCV one (and back).
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])

_PINHOLE_MODELS = {"SIMPLE_PINHOLE", "PINHOLE"}
# COLMAP models whose parameters are focal(s), principal point, then distortion only.
_DISTORTED_MODELS = {
    "SIMPLE_RADIAL": 3, "RADIAL": 3, "OPENCV": 4, "FULL_OPENCV": 4, "SIMPLE_RADIAL_FISHEYE": 3,
    "RADIAL_FISHEYE": 3, "OPENCV_FISHEYE": 4, "THIN_PRISM_FISHEYE": 4,
}


@dataclass(frozen=True)
class PosedCamera:
    """One view: ``name`` (the image's file name), its size, pinhole intrinsics and the 4x4
    camera-to-world pose in the OpenCV camera frame."""

    name: str
    width: int
    height: int
    intrinsics: Intrinsics
    cam_to_world: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        pose = np.asarray(self.cam_to_world, dtype=np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise ValueError(f"view {self.name!r}: cam_to_world must be a finite 4x4 matrix, got shape {pose.shape}")
        rot = pose[:3, :3]
        if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-5) or not np.isclose(np.linalg.det(rot), 1.0, atol=1e-5):
            raise ValueError(f"view {self.name!r}: the pose's rotation is not a rotation (orthonormal, det +1)")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"view {self.name!r}: image size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "cam_to_world", pose)

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def rotation(self) -> np.ndarray:
        """3x3 camera-to-world rotation (OpenCV camera axes as columns)."""
        return self.cam_to_world[:3, :3]

    @property
    def center(self) -> np.ndarray:
        return self.cam_to_world[:3, 3]

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """``[N, 3]`` world points in this camera's OpenCV frame."""
        return (np.asarray(points, dtype=np.float64) - self.center) @ self.rotation

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates ``[N, 2]`` (u, v; pixel centres at +0.5) and depth ``[N]`` of world points."""
        cam = self.world_to_camera(points)
        k = self.intrinsics
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([k.fx * cam[:, 0] / cam[:, 2] + k.cx, k.fy * cam[:, 1] / cam[:, 2] + k.cy], axis=-1)
        return uv, cam[:, 2]

    def at_size(self, height: int, width: int, what: str = "the image") -> PosedCamera:
        """The same camera for ``what`` of size (``height``, ``width``): intrinsics rescaled when the
        aspect ratio agrees; an error naming the view when it contradicts the intrinsics."""
        if (height, width) == (self.height, self.width):
            return self
        if abs(width / height - self.width / self.height) > 0.01 * self.width / self.height:
            raise ValueError(f"view {self.name!r}: {what} is {height}x{width} (HxW) but its intrinsics are for "
                             f"{self.height}x{self.width}, another aspect ratio: wrong image, or wrong camera?")
        return PosedCamera(self.name, width, height, self.intrinsics.resized((self.height, self.width), (height, width)),
                           self.cam_to_world)

    def to_json(self) -> dict:
        k = self.intrinsics
        return {"name": self.name, "width": self.width, "height": self.height, "fx": k.fx, "fy": k.fy,
                "cx": k.cx, "cy": k.cy, "cam_to_world": self.cam_to_world.tolist()}


@dataclass
class SparsePoints:
    """Sparse 3D points (e.g. COLMAP's) and which views observed each: ``observed_in[name]`` is the
    array of point indices seen in that view, which is the visibility the alignment trusts."""

    xyz: np.ndarray  # [P, 3] world
    observed_in: dict[str, np.ndarray]

    def in_view(self, name: str) -> np.ndarray:
        """``[Q, 3]`` the points observed in the view ``name`` (empty when none)."""
        return self.xyz[self.observed_in.get(name, np.zeros(0, dtype=np.int64))]


@dataclass
class CameraSet:
    """The posed views of one sequence, in order, with the sparse points when the source has them."""

    cameras: list[PosedCamera]
    sparse: SparsePoints | None = None
    source: str = ""

    def __post_init__(self) -> None:
        stems = [c.stem for c in self.cameras]
        if len(set(stems)) != len(stems):
            dup = sorted({s for s in stems if stems.count(s) > 1})
            raise ValueError(f"{self.source}: several views share the image stem(s) {dup}")
        if not self.cameras:
            raise ValueError(f"{self.source}: no posed views")

    def by_stem(self, stem: str) -> PosedCamera:
        for cam in self.cameras:
            if cam.stem == stem:
                return cam
        raise KeyError(f"no pose for the image {stem!r} in {self.source} (it has {len(self.cameras)} views, "
                       f"e.g. {[c.stem for c in self.cameras[:3]]})")


# --------------------------------------------------------------------------- #
# COLMAP
# --------------------------------------------------------------------------- #
def _pinhole_params(model: str, params: np.ndarray, where: str) -> tuple[float, float, float, float]:
    if model == "SIMPLE_PINHOLE":
        f, cx, cy = params[:3]
        return f, f, cx, cy
    if model == "PINHOLE":
        return tuple(float(p) for p in params[:4])
    if model in _DISTORTED_MODELS and not np.any(params[_DISTORTED_MODELS[model]:]):
        if _DISTORTED_MODELS[model] == 3:
            f, cx, cy = params[:3]
            return f, f, cx, cy
        return tuple(float(p) for p in params[:4])
    raise ValueError(f"{where}: camera model {model} is not a pinhole (distortion {list(params)}); undistort the "
                     f"images first (e.g. colmap image_undistorter), which writes a PINHOLE model")


def _colmap_folder(path: Path) -> Path:
    for candidate in (path, path / "sparse" / "0", path / "sparse", path / "0"):
        if any((candidate / f"cameras.{ext}").is_file() for ext in ("txt", "bin")):
            return candidate
    raise FileNotFoundError(f"{path}: no COLMAP model (cameras/images/points3D .txt or .bin) there or in sparse/0")


def read_colmap(path: str | Path) -> CameraSet:
    """A COLMAP model folder (text or binary), read with ``pycolmap``: every registered image's
    camera and pose, and the 3D points with the images that observe them."""
    import pycolmap

    folder = _colmap_folder(Path(path))
    for part in ("images", "points3D"):
        if not any((folder / f"{part}.{ext}").is_file() for ext in ("txt", "bin")):
            raise FileNotFoundError(f"{folder}: COLMAP model has no {part}.txt or {part}.bin")
    try:
        recon = pycolmap.Reconstruction(str(folder))
    except Exception as exc:  # pycolmap raises its own error types
        raise ValueError(f"{folder}: pycolmap cannot read the COLMAP model: {exc}") from exc
    cameras, names = [], {}
    for image_id in sorted(recon.images):
        image = recon.images[image_id]
        if not image.has_pose:
            continue
        cam = recon.cameras[image.camera_id]
        where = f"{folder}: camera {image.camera_id} of image {image.name!r}"
        intr = Intrinsics(*_pinhole_params(cam.model.name, np.asarray(cam.params), where))
        cfw = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
        world_to_cam = np.eye(4)
        world_to_cam[:3] = cfw.matrix()
        cameras.append(PosedCamera(image.name, int(cam.width), int(cam.height), intr, np.linalg.inv(world_to_cam)))
        names[image_id] = image.name
    ids = sorted(recon.points3D)
    xyz = np.array([recon.points3D[i].xyz for i in ids], dtype=np.float64).reshape(-1, 3)
    observed: dict[str, list[int]] = {n: [] for n in names.values()}
    for index, point_id in enumerate(ids):
        for element in recon.points3D[point_id].track.elements:
            if element.image_id in names:
                observed[names[element.image_id]].append(index)
    sparse = SparsePoints(xyz, {n: np.unique(np.asarray(v, dtype=np.int64)) for n, v in observed.items()})
    return CameraSet(cameras, sparse if len(ids) else None, str(folder))


def _rotation_to_quaternion(rot: np.ndarray) -> np.ndarray:
    """(qw, qx, qy, qz) of a rotation matrix (Shepperd's method), qw >= 0."""
    m = rot
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.asarray(q)
    return q if q[0] >= 0 else -q


def _num(value: float) -> str:
    return repr(float(value))  # shortest exact decimal


def write_colmap_text(folder: str | Path, cameras: CameraSet, observations: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``cameras.txt`` / ``images.txt`` / ``points3D.txt`` in COLMAP's documented text format
    (PINHOLE cameras, one per view). ``observations[name]`` gives each view's observed point indices
    into ``cameras.sparse.xyz``; the 2D observation is the point's projection."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sparse = cameras.sparse
    obs = observations if observations is not None else (sparse.observed_in if sparse is not None else {})
    tracks: dict[int, list[tuple[int, int]]] = {}
    cam_lines, image_lines = ["# CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]"], ["# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME"]
    for index, cam in enumerate(cameras.cameras, start=1):
        k = cam.intrinsics
        cam_lines.append(f"{index} PINHOLE {cam.width} {cam.height} {_num(k.fx)} {_num(k.fy)} {_num(k.cx)} {_num(k.cy)}")
        world_to_cam = np.linalg.inv(cam.cam_to_world)
        q, t = _rotation_to_quaternion(world_to_cam[:3, :3]), world_to_cam[:3, 3]
        pose = " ".join(_num(v) for v in (*q, *t))
        image_lines.append(f"{index} {pose} {index} {cam.name}")
        points = []
        seen = obs.get(cam.name, np.zeros(0, dtype=np.int64))
        if len(seen):
            uv, _ = cam.project(sparse.xyz[seen])
            for j, (p, (u, v)) in enumerate(zip(seen, uv)):
                points.append(f"{_num(u)} {_num(v)} {int(p) + 1}")
                tracks.setdefault(int(p), []).append((index, j))
        image_lines.append(" ".join(points))
    point_lines = ["# POINT3D_ID X Y Z R G B ERROR TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
    for p in sorted(tracks):
        x, y, z = sparse.xyz[p]
        track = " ".join(f"{i} {j}" for i, j in tracks[p])
        point_lines.append(f"{p + 1} {_num(x)} {_num(y)} {_num(z)} 128 128 128 0.0 {track}")
    for name, lines in (("cameras", cam_lines), ("images", image_lines), ("points3D", point_lines)):
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return folder


# --------------------------------------------------------------------------- #
# transforms.json (Nerfstudio / instant-ngp)
# --------------------------------------------------------------------------- #
def _intrinsics_from(entry: dict, where: str) -> tuple[Intrinsics, int, int]:
    w, h = entry.get("w"), entry.get("h")
    if w is None or h is None:
        raise ValueError(f"{where}: needs the image size 'w' and 'h'")
    if "fl_x" in entry:
        fx = float(entry["fl_x"])
        fy = float(entry.get("fl_y", fx))
    elif "camera_angle_x" in entry:  # instant-ngp
        fx = 0.5 * float(w) / math.tan(0.5 * float(entry["camera_angle_x"]))
        fy = 0.5 * float(h) / math.tan(0.5 * float(entry["camera_angle_y"])) if "camera_angle_y" in entry else fx
    else:
        raise ValueError(f"{where}: needs the focal length 'fl_x' (or instant-ngp's 'camera_angle_x')")
    model = entry.get("camera_model", "OPENCV")
    distortion = [float(entry.get(key, 0.0)) for key in ("k1", "k2", "k3", "k4", "p1", "p2")]
    if any(distortion) or model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise ValueError(f"{where}: camera model {model} with distortion {distortion} is not a pinhole; undistort the "
                         f"images first")
    return Intrinsics(fx, fy, float(entry.get("cx", w / 2)), float(entry.get("cy", h / 2))), int(w), int(h)


def read_transforms(path: str | Path) -> CameraSet:
    """Nerfstudio / instant-ngp ``transforms.json``: intrinsics at the top level or per frame,
    ``frames[i].file_path`` and ``transform_matrix`` (camera-to-world, OpenGL camera frame)."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames:
        raise ValueError(f"{path}: no 'frames' list")
    cameras = []
    for i, frame in enumerate(frames):
        where = f"{path}: frames[{i}]"
        if "file_path" not in frame or "transform_matrix" not in frame:
            raise ValueError(f"{where}: needs 'file_path' and 'transform_matrix'")
        intr, w, h = _intrinsics_from({**meta, **frame}, where)
        gl = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if gl.shape == (3, 4):
            gl = np.vstack([gl, [0, 0, 0, 1]])
        cameras.append(PosedCamera(Path(frame["file_path"]).name, w, h, intr, gl @ OPENGL_TO_OPENCV))
    return CameraSet(cameras, None, str(path))


def write_transforms(path: str | Path, cameras: CameraSet, image_dir: str = "images") -> Path:
    """Write a Nerfstudio ``transforms.json`` (per-frame intrinsics, OpenGL camera frame)."""
    frames = []
    for cam in cameras.cameras:
        k = cam.intrinsics
        frames.append({"file_path": f"{image_dir}/{cam.name}", "w": cam.width, "h": cam.height, "fl_x": k.fx,
                       "fl_y": k.fy, "cx": k.cx, "cy": k.cy, "transform_matrix": (cam.cam_to_world @ OPENGL_TO_OPENCV).tolist()})
    path = Path(path)
    path.write_text(json.dumps({"camera_model": "OPENCV", "frames": frames}, indent=1))
    return path


# --------------------------------------------------------------------------- #
# lotus_pl's own cameras.json
# --------------------------------------------------------------------------- #
def write_cameras_json(path: str | Path, cameras: CameraSet) -> Path:
    """lotus_pl's pose file: OpenCV camera-to-world and pixel-centre (+0.5) intrinsics per view."""
    path = Path(path)
    path.write_text(json.dumps({"frame": "opencv_cam_to_world", "views": [c.to_json() for c in cameras.cameras]}, indent=1))
    return path


def read_cameras_json(path: str | Path) -> CameraSet:
    path = Path(path)
    meta = json.loads(path.read_text())
    if meta.get("frame") != "opencv_cam_to_world" or "views" not in meta:
        raise ValueError(f"{path}: not a lotus_pl cameras.json (needs frame 'opencv_cam_to_world' and 'views')")
    cameras = []
    for i, v in enumerate(meta["views"]):
        try:
            cameras.append(PosedCamera(v["name"], int(v["width"]), int(v["height"]),
                                       Intrinsics(v["fx"], v["fy"], v["cx"], v["cy"]), np.asarray(v["cam_to_world"])))
        except KeyError as exc:
            raise ValueError(f"{path}: views[{i}] lacks the key {exc}") from exc
    return CameraSet(cameras, None, str(path))


def read_poses(path: str | Path) -> CameraSet:
    """Any supported pose source: a COLMAP model folder, a ``transforms.json`` or a lotus_pl ``cameras.json``."""
    path = Path(path)
    if path.is_dir():
        return read_colmap(path)
    if not path.is_file():
        raise FileNotFoundError(f"poses {path} do not exist (a COLMAP folder, transforms.json or cameras.json)")
    meta = json.loads(path.read_text())
    if isinstance(meta, dict) and "views" in meta:
        return read_cameras_json(path)
    return read_transforms(path)

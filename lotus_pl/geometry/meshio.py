"""PLY and OBJ files for point clouds and triangle meshes, through ``plyfile`` and ``trimesh``.

* PLY (binary little-endian, written with ``plyfile``): ``vertex`` with float ``x y z``, optional
  float ``nx ny nz`` and uchar ``red green blue``; optional ``face`` with ``list uchar int
  vertex_indices``; ``comment`` lines carry the coordinate frame and how depth was made metric.
  Any PLY that ``plyfile`` reads (ascii or binary) reads back, if its faces are triangles.
* OBJ (written and read with ``trimesh``): ``v x y z [r g b]`` (colours as floats in [0, 1]) and
  ``f i j k``; header comments as ``#`` lines. Polygons with more corners are triangulated on reading.

Both libraries are small pure-Python packages (numpy only), so ``lotus_pl reconstruct`` needs no
Open3D; ``lotus_pl fuse`` writes its meshes with Open3D, which it needs anyway.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["GeometryData", "as_uint8_colors", "read_obj", "read_ply", "write_obj", "write_ply"]


@dataclass
class GeometryData:
    """What a PLY or OBJ file holds; absent attributes are ``None``."""

    points: np.ndarray  # [N, 3] float32
    colors: np.ndarray | None = None  # [N, 3] uint8
    normals: np.ndarray | None = None  # [N, 3] float32
    faces: np.ndarray | None = None  # [F, 3] int32, 0-based
    comments: list[str] = field(default_factory=list)


def as_uint8_colors(colors: np.ndarray) -> np.ndarray:
    """uint8 colours as they are; float colours in [0, 1] scaled to 0..255."""
    colors = np.asarray(colors)
    if colors.dtype == np.uint8:
        return colors
    return np.round(np.clip(colors.astype(np.float64), 0, 1) * 255).astype(np.uint8)


def _check(points: np.ndarray, colors, normals, faces) -> tuple:
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {points.shape}")
    n = len(points)
    if colors is not None:
        colors = as_uint8_colors(colors)
        if colors.shape != (n, 3):
            raise ValueError(f"colors must be [N, 3] = {(n, 3)}, got {colors.shape}")
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float32)
        if normals.shape != (n, 3):
            raise ValueError(f"normals must be [N, 3] = {(n, 3)}, got {normals.shape}")
    if faces is not None:
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
            raise ValueError(f"faces must be [F, 3] integer vertex indices, got {faces.dtype} {faces.shape}")
        if faces.size and (faces.min() < 0 or faces.max() >= n):
            raise ValueError(f"face indices must be in [0, {n}), got [{faces.min()}, {faces.max()}]")
        faces = faces.astype(np.int32)
    return points, colors, normals, faces


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None, normals: np.ndarray | None = None,
              faces: np.ndarray | None = None, comments: list[str] | tuple[str, ...] = ()) -> Path:
    """Write a binary little-endian PLY point cloud (or mesh, with ``faces``); return its path."""
    from plyfile import PlyData, PlyElement

    points, colors, normals, faces = _check(points, colors, normals, faces)
    fields = [(c, "<f4") for c in "xyz"]
    fields += [(c, "<f4") for c in ("nx", "ny", "nz")] if normals is not None else []
    fields += [(c, "u1") for c in ("red", "green", "blue")] if colors is not None else []
    vertex = np.empty(len(points), dtype=fields)
    for block, names in ((points, "xyz"), (normals, ("nx", "ny", "nz")), (colors, ("red", "green", "blue"))):
        if block is not None:
            for i, name in enumerate(names):
                vertex[name] = block[:, i]
    elements = [PlyElement.describe(vertex, "vertex")]
    if faces is not None:
        face = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
        face["vertex_indices"] = faces
        elements.append(PlyElement.describe(face, "face", len_types={"vertex_indices": "u1"},
                                            val_types={"vertex_indices": "i4"}))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData(elements, text=False, byte_order="<", comments=[_one_line(c) for c in comments]).write(str(path))
    return path


def read_ply(path: str | Path) -> GeometryData:
    """Read a PLY point cloud or triangle mesh (ascii or binary)."""
    from plyfile import PlyData

    path = Path(path)
    try:
        data = PlyData.read(str(path))
    except Exception as exc:  # plyfile raises its own PlyParseError and others
        raise ValueError(f"{path}: not a readable PLY file ({exc})") from exc
    if "vertex" not in data:
        raise ValueError(f"{path}: PLY file has no vertex element")
    vertex = data["vertex"].data

    def columns(names: tuple[str, ...], dtype) -> np.ndarray | None:
        if not all(n in (vertex.dtype.names or ()) for n in names):
            return None
        return np.stack([vertex[n] for n in names], axis=-1).astype(dtype).reshape(-1, 3)

    faces = None
    if "face" in data:
        face = data["face"].data
        name = "vertex_indices" if "vertex_indices" in face.dtype.names else face.dtype.names[0]
        rows = face[name]
        if len(rows) and any(len(r) != 3 for r in rows):
            raise ValueError(f"{path}: element 'face' has polygons that are not triangles")
        faces = np.array([list(r) for r in rows], dtype=np.int32).reshape(-1, 3)
    return GeometryData(columns(("x", "y", "z"), np.float32), columns(("red", "green", "blue"), np.uint8),
                        columns(("nx", "ny", "nz"), np.float32), faces, list(data.comments))


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray | None = None,
              colors: np.ndarray | None = None, comments: list[str] | tuple[str, ...] = ()) -> Path:
    """Write a Wavefront OBJ mesh or point set (``v x y z [r g b]``, ``f i j k``); return its path."""
    import trimesh
    from trimesh.exchange.obj import export_obj

    vertices, colors, _, faces = _check(vertices, colors, None, faces)
    rgba = None if colors is None else np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
    if faces is None:
        geometry = trimesh.PointCloud(vertices.astype(np.float64), colors=rgba)
    else:
        geometry = trimesh.Trimesh(vertices.astype(np.float64), faces, vertex_colors=rgba, process=False)
    # 9 significant digits keep float32 exactly; trimesh counts decimals, so give enough for the smallest value
    magnitude = float(np.abs(vertices[vertices != 0]).min()) if np.any(vertices != 0) else 1.0
    digits = int(np.clip(9 - np.floor(np.log10(magnitude)), 9, 20))
    text = export_obj(geometry, include_color=colors is not None, include_normals=False, include_texture=False,
                      header="\n# ".join(_one_line(c) for c in comments) or None, digits=digits)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
    return path


def read_obj(path: str | Path) -> GeometryData:
    """Read an OBJ's vertices (with colours if every vertex has them), triangle faces (polygons are
    triangulated) and its ``#`` comment lines."""
    import trimesh

    path = Path(path)
    text = path.read_text()
    try:
        loaded = trimesh.load(io.StringIO(text), file_type="obj", process=False, maintain_order=True)
    except Exception as exc:  # trimesh raises many kinds
        raise ValueError(f"{path}: cannot read its vertices or faces: {exc}") from exc
    if isinstance(loaded, trimesh.Scene):
        geometries = list(loaded.geometry.values())
        if len(geometries) != 1:
            raise ValueError(f"{path}: expected one mesh or point set, found {len(geometries)}")
        loaded = geometries[0]
    comments = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    faces = None
    colors = None
    if isinstance(loaded, trimesh.Trimesh):
        faces = np.asarray(loaded.faces, dtype=np.int32).reshape(-1, 3) if len(loaded.faces) else None
        if loaded.visual.kind == "vertex":
            colors = np.asarray(loaded.visual.vertex_colors)[:, :3].astype(np.uint8)
    elif isinstance(loaded, trimesh.PointCloud) and loaded.colors is not None and len(loaded.colors):
        colors = np.asarray(loaded.colors)[:, :3].astype(np.uint8)
    return GeometryData(np.asarray(loaded.vertices, dtype=np.float32), colors, None, faces, comments)

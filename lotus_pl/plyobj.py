"""PLY and OBJ files for point clouds and triangle meshes, written from whole numpy arrays.

* PLY (binary little-endian): ``vertex`` with float ``x y z``, optional float ``nx ny nz`` and
  uchar ``red green blue``; optional ``face`` with ``list uchar int vertex_indices`` (triangles);
  ``comment`` lines carry free text (the coordinate frame, how depth was made metric).
* OBJ: ``v x y z [r g b]`` (colours as floats in [0, 1], the common extension), ``f i j k``
  (1-based). No normals or texture coordinates.

Writers pack every element into one numpy structured array (PLY) or one formatting call per chunk
of rows (OBJ), with no Python loop over points. Readers read these files back, and other PLY files
whose faces are triangles (ascii or binary, any scalar types), for tests and users alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_PLY_NAMES = {"f4": "float", "u1": "uchar", "i4": "int"}


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


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None, normals: np.ndarray | None = None,
              faces: np.ndarray | None = None, comments: list[str] | tuple[str, ...] = ()) -> Path:
    """Write a binary little-endian PLY point cloud (or mesh, with ``faces``); return its path."""
    points, colors, normals, faces = _check(points, colors, normals, faces)
    fields = [(c, "<f4") for c in "xyz"]
    if normals is not None:
        fields += [(c, "<f4") for c in ("nx", "ny", "nz")]
    if colors is not None:
        fields += [(c, "u1") for c in ("red", "green", "blue")]
    vertex = np.empty(len(points), dtype=fields)
    for i, c in enumerate("xyz"):
        vertex[c] = points[:, i]
    for i, c in enumerate(("nx", "ny", "nz")):
        if normals is not None:
            vertex[c] = normals[:, i]
    for i, c in enumerate(("red", "green", "blue")):
        if colors is not None:
            vertex[c] = colors[:, i]
    header = ["ply", "format binary_little_endian 1.0"]
    header += [f"comment {' '.join(str(line).split())}" for line in comments]  # one line each
    header += [f"element vertex {len(points)}"]
    header += [f"property {_PLY_NAMES[np.dtype(t).str[1:]]} {name}" for name, t in fields]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header += ["end_header"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vertex.tobytes())
        if faces is not None:
            packed = np.empty(len(faces), dtype=[("count", "u1"), ("index", "<i4", (3,))])
            packed["count"] = 3
            packed["index"] = faces
            f.write(packed.tobytes())
    return path


def _parse_ply_header(f, path: Path) -> tuple[str, list[str], list[tuple[str, int, list[tuple]]]]:
    if f.readline().strip() != b"ply":
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic line)")
    fmt, comments, elements = None, [], []
    for raw in iter(f.readline, b""):
        words = raw.decode("ascii", errors="replace").split()
        if not words:
            continue
        if words[0] == "end_header":
            if fmt is None:
                raise ValueError(f"{path}: PLY header has no format line")
            return fmt, comments, elements
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "comment":
            comments.append(raw.decode("ascii", errors="replace")[len("comment "):].rstrip("\r\n"))
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if words[1] == "list":
                elements[-1][2].append((words[4], _PLY_TYPES[words[2]], _PLY_TYPES[words[3]]))
            else:
                elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
    raise ValueError(f"{path}: PLY header has no end_header")


def read_ply(path: str | Path) -> GeometryData:
    """Read a PLY point cloud or triangle mesh (ascii, binary little- or big-endian)."""
    path = Path(path)
    with open(path, "rb") as f:
        fmt, comments, elements = _parse_ply_header(f, path)
        body = f.read()
    orders = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": None}
    if fmt not in orders:
        raise ValueError(f"{path}: unknown PLY format {fmt!r}")
    order, offset = orders[fmt], 0  # offset: bytes (binary) or lines (ascii) consumed
    lines = [line for line in body.decode("ascii").splitlines() if line.strip()] if order is None else []
    data = {}
    for name, count, props in elements:
        if any(len(p) == 3 for p in props):  # a list property: only triangle faces are supported
            if len(props) != 1:
                raise ValueError(f"{path}: element {name!r} mixes a list with other properties")
            _, count_type, index_type = props[0]
            if order is None:
                rows = np.loadtxt(lines[offset:offset + count], dtype=np.int64, ndmin=2) if count else np.zeros((0, 4))
                offset += count
                counts, indices = rows[:, 0], rows[:, 1:]
            else:
                dtype = np.dtype([("count", order + count_type), ("index", order + index_type, (3,))])
                packed = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
                offset += count * dtype.itemsize
                counts, indices = packed["count"], packed["index"]
            if count and (indices.shape[1] != 3 or (counts != 3).any()):
                raise ValueError(f"{path}: element {name!r} has polygons that are not triangles")
            data[name] = indices.astype(np.int32).reshape(-1, 3)
        else:
            dtype = np.dtype([(p[0], (order or "<") + p[1]) for p in props])
            if order is None:
                rows = np.loadtxt(lines[offset:offset + count], ndmin=2) if count else np.zeros((0, len(props)))
                offset += count
                values = np.empty(count, dtype=dtype)
                for i, p in enumerate(props):
                    values[p[0]] = rows[:, i]
            else:
                values = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
                offset += count * dtype.itemsize
            data[name] = values
    if "vertex" not in data:
        raise ValueError(f"{path}: PLY file has no vertex element")
    vertex = data["vertex"]

    def columns(names: tuple[str, ...], dtype) -> np.ndarray | None:
        if not all(n in (vertex.dtype.names or ()) for n in names):
            return None
        return np.stack([vertex[n] for n in names], axis=-1).astype(dtype).reshape(-1, 3)

    return GeometryData(columns(("x", "y", "z"), np.float32), columns(("red", "green", "blue"), np.uint8),
                        columns(("nx", "ny", "nz"), np.float32), data.get("face"), comments)


def _format_rows(f, row_format: str, values: np.ndarray, chunk: int = 1 << 16) -> None:
    """Write ``row_format % row`` for every row, one C-level formatting call per chunk of rows."""
    for start in range(0, len(values), chunk):
        block = values[start:start + chunk]
        f.write((row_format * len(block)) % tuple(block.ravel().tolist()))


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray | None = None,
              colors: np.ndarray | None = None, comments: list[str] | tuple[str, ...] = ()) -> Path:
    """Write a Wavefront OBJ mesh (``v x y z [r g b]``, ``f i j k``); return its path."""
    vertices, colors, _, faces = _check(vertices, colors, None, faces)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for line in comments:
            f.write(f"# {' '.join(str(line).split())}\n")
        if colors is None:
            _format_rows(f, "v %.9g %.9g %.9g\n", vertices.astype(np.float64))
        else:
            rows = np.concatenate([vertices.astype(np.float64), colors / 255.0], axis=1)
            _format_rows(f, "v %.9g %.9g %.9g %.6g %.6g %.6g\n", rows)
        if faces is not None:
            _format_rows(f, "f %d %d %d\n", faces.astype(np.int64) + 1)
    return path


def read_obj(path: str | Path) -> GeometryData:
    """Read an OBJ's vertices (with ``r g b`` colours if every vertex has them) and triangle faces
    (``f i j k``, ``f i/t/n ...`` forms accepted, positive indices only)."""
    path = Path(path)
    vertex_lines, face_lines, comments = [], [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            vertex_lines.append(line[2:])
        elif line.startswith("f "):
            face_lines.append(re.sub(r"/\S*", "", line[2:]))
        elif line.startswith("#"):
            comments.append(line[1:].strip())
    try:
        vertices = np.loadtxt(vertex_lines, ndmin=2) if vertex_lines else np.zeros((0, 3))
        faces = np.loadtxt(face_lines, dtype=np.int64, ndmin=2) if face_lines else None
    except ValueError as exc:
        raise ValueError(f"{path}: cannot read its vertices or faces (triangles only): {exc}") from exc
    if vertices.shape[1] not in (3, 6):
        raise ValueError(f"{path}: vertices need 3 (x y z) or 6 (x y z r g b) values, got {vertices.shape[1]}")
    if faces is not None:
        if faces.shape[1] != 3:
            raise ValueError(f"{path}: only triangle faces are supported, got {faces.shape[1]} vertices per face")
        if faces.min() < 1 or faces.max() > len(vertices):
            raise ValueError(f"{path}: face indices must be in [1, {len(vertices)}] (no relative indices)")
        faces = (faces - 1).astype(np.int32)
    colors = as_uint8_colors(vertices[:, 3:]) if vertices.shape[1] == 6 else None
    return GeometryData(vertices[:, :3].astype(np.float32), colors, None, faces, comments)

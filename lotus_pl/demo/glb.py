"""A coloured triangle mesh as binary glTF (``.glb``), the format browser 3D viewers (Gradio's
``Model3D``) display with vertex colours; PLY there is read as a Gaussian splat, not a mesh.

Written from the glTF 2.0 specification: one JSON chunk, one binary chunk holding float32
positions, normalised uint8 RGBA colours (4 bytes per vertex keeps the 4-byte vertex alignment)
and uint32 indices; an unlit, double-sided material so the colours show as photographed.
Positions arrive in the OpenCV camera frame (x right, y down, z forward) and are written in glTF's
frame (x right, y up, z toward the viewer), a rotation by 180° about x, so triangle winding holds.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_GLB_MAGIC, _JSON_CHUNK, _BIN_CHUNK = 0x46546C67, 0x4E4F534A, 0x004E4942
_FLOAT, _UBYTE, _UINT = 5126, 5121, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def write_glb(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None,
              center: bool = True) -> Path:
    """Write ``vertices`` [N, 3] (OpenCV frame), ``faces`` [F, 3] and uint8 ``colors`` [N, 3] as a GLB."""
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.uint32)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"need vertices [N, 3] and faces [F, 3], got {vertices.shape} and {faces.shape}")
    if len(faces) and int(faces.max()) >= len(vertices):
        raise ValueError(f"a face refers to vertex {int(faces.max())} of {len(vertices)}")
    positions = vertices * np.array([1.0, -1.0, -1.0], dtype=np.float32)
    if center and len(positions):
        positions = positions - positions.mean(axis=0)
    rgba = np.full((len(vertices), 4), 255, dtype=np.uint8)
    if colors is not None:
        rgba[:, :3] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    blobs = [positions.tobytes(), rgba.tobytes(), faces.ravel().tobytes()]
    views, offset = [], 0
    for blob, target in zip(blobs, (_ARRAY_BUFFER, _ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER)):
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob), "target": target})
        offset += len(_pad(blob, b"\0"))
    low = positions.min(axis=0).tolist() if len(positions) else [0.0] * 3
    high = positions.max(axis=0).tolist() if len(positions) else [0.0] * 3
    gltf = {
        "asset": {"version": "2.0", "generator": "lotus_pl"},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "indices": 2, "material": 0, "mode": 4}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0, "roughnessFactor": 1},
                       "extensions": {"KHR_materials_unlit": {}}, "doubleSided": True}],
        "buffers": [{"byteLength": offset}],
        "bufferViews": views,
        "accessors": [
            {"bufferView": 0, "componentType": _FLOAT, "count": len(positions), "type": "VEC3", "min": low, "max": high},
            {"bufferView": 1, "componentType": _UBYTE, "normalized": True, "count": len(rgba), "type": "VEC4"},
            {"bufferView": 2, "componentType": _UINT, "count": int(faces.size), "type": "SCALAR"},
        ],
    }
    json_chunk = _pad(json.dumps(gltf, separators=(",", ":")).encode("utf-8"), b" ")
    bin_chunk = b"".join(_pad(blob, b"\0") for blob in blobs)
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<III", _GLB_MAGIC, 2, total))
        f.write(struct.pack("<II", len(json_chunk), _JSON_CHUNK) + json_chunk)
        f.write(struct.pack("<II", len(bin_chunk), _BIN_CHUNK) + bin_chunk)
    return path


def read_glb(path: str | Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """``(gltf json, positions [N, 3], rgba [N, 4], faces [F, 3])`` of a GLB written by :func:`write_glb`."""
    data = Path(path).read_bytes()
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != 2 or total != len(data):
        raise ValueError(f"{path}: not a glTF 2.0 binary of {len(data)} bytes")
    json_length, _ = struct.unpack_from("<II", data, 12)
    gltf = json.loads(data[20:20 + json_length])
    bin_start = 20 + json_length + 8
    blob = data[bin_start:]

    def accessor(i: int, dtype, width: int) -> np.ndarray:
        acc = gltf["accessors"][i]
        view = gltf["bufferViews"][acc["bufferView"]]
        arr = np.frombuffer(blob, dtype=dtype, count=acc["count"] * (width if acc["type"] != "SCALAR" else 1),
                            offset=view["byteOffset"])
        return arr.reshape(-1, width)

    return gltf, accessor(0, "<f4", 3), accessor(1, np.uint8, 4), accessor(2, "<u4", 3)

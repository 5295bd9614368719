"""Depth to 3D: intrinsics, back-projection against the renderer, sparse alignment, sparse files,
mesh cuts, PLY/OBJ round trips, and ``lotus_pl reconstruct`` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from lotus_pl.cli import main
from lotus_pl.data.renderer import Camera, Plane, Scene, render
from lotus_pl.geometry import (
    Intrinsics,
    align_to_sparse,
    backproject,
    fit_sparse,
    mesh_from_depth,
    normals_to_opencv,
    read_obj,
    read_ply,
    read_sparse_depth,
    relative_to_depth,
    write_obj,
    write_ply,
)
from lotus_pl.tasks import Depth, NormalizedDepth, Normal

H, W = 12, 16


def tilted_plane(height: int = H, width: int = W) -> tuple[np.ndarray, Intrinsics]:
    """Exact depth of the plane ``n . p = -4`` (OpenCV frame, n = (0.2, -0.3, -1)) seen with a 60 degree FOV."""
    camera = Intrinsics.from_fov(width, height, 60.0)
    rays = camera.rays(height, width)
    return -4.0 / (rays @ np.array([0.2, -0.3, -1.0])), camera


def sparse_sample(depth: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` random pixels of ``depth``; the rest missing, half as 0 and half as NaN."""
    rng = np.random.default_rng(seed)
    sparse = np.where(rng.random(depth.shape) < 0.5, 0.0, np.nan)
    picks = rng.choice(depth.size, size=count, replace=False)
    sparse.flat[picks] = depth.flat[picks]
    return sparse


# --- intrinsics and back-projection -----------------------------------------------------


def test_intrinsics_from_fov_and_resize() -> None:
    k = Intrinsics.from_fov(640, 480, 90.0)
    assert (k.fx, k.fy, k.cx, k.cy) == pytest.approx((320.0, 320.0, 320.0, 240.0))
    assert Intrinsics.from_fov(640, 480, 90.0, axis="vertical").fx == pytest.approx(240.0)
    assert Intrinsics.from_fov(640, 480, 90.0, axis="diagonal").fx == pytest.approx(400.0)
    # The renderer's camera gives the same numbers.
    assert Intrinsics.from_fov(64, 48, 60.0) == Intrinsics(*Camera(hfov_deg=60.0).intrinsics(48, 64))
    assert Intrinsics.from_fov(64, 48, 60.0).fx == pytest.approx(32.0 / math.tan(math.radians(30.0)))
    half = k.resized((480, 640), (240, 320))
    assert (half.fx, half.fy, half.cx, half.cy) == pytest.approx((160.0, 160.0, 160.0, 120.0))
    with pytest.raises(ValueError, match="fov_degrees"):
        Intrinsics.from_fov(64, 48, 180.0)
    with pytest.raises(ValueError, match="axis"):
        Intrinsics.from_fov(64, 48, 60.0, axis="diag")
    with pytest.raises(ValueError, match="fx, fy > 0"):
        Intrinsics(0.0, 1.0, 0.0, 0.0)


def test_backprojected_renderer_plane_lies_on_its_rendered_normals() -> None:
    # A tilted wall rendered by the project's renderer: its back-projected points satisfy
    # n . p = const with the renderer's own normals (converted to the OpenCV frame).
    scene = Scene([Plane((0.0, 0.0, -5.0), (0.3, 0.4, 1.0))])
    view = render(scene, Camera(hfov_deg=60.0), H, W)
    assert view.valid.all()
    camera = Intrinsics(view.fx, view.fy, view.cx, view.cy)
    points = backproject(view.depth, camera)
    assert points.shape == (H * W, 3) and points.dtype == np.float32
    normals = normals_to_opencv(view.normal.transpose(2, 0, 1)).reshape(-1, 3)
    np.testing.assert_allclose(normals, normals[:1].repeat(len(normals), 0), atol=1e-6)  # one plane
    offset = (points.astype(np.float64) * normals).sum(axis=1)
    assert np.all(offset < 0)  # the normal faces the camera at the origin
    assert np.abs(offset - offset.mean()).max() < 1e-5 * abs(offset.mean())
    np.testing.assert_allclose(points[:, 2], view.depth.ravel(), rtol=1e-6)  # planar depth is z
    grid = points.reshape(H, W, 3)
    assert (grid[:, -1, 0] > 0).all() and (grid[:, 0, 0] < 0).all()  # x image-right
    assert (grid[-1, :, 1] > 0).all() and (grid[0, :, 1] < 0).all()  # y image-down


def test_backproject_analytic_plane_with_mask_and_invalid_pixels() -> None:
    depth, camera = tilted_plane()
    depth[0, 0], depth[1, 1] = np.nan, 0.0
    mask = np.ones((H, W), dtype=bool)
    mask[:, : W // 2] = False
    points = backproject(depth, camera, mask)
    assert points.shape == (H * (W - W // 2), 3)
    all_points = backproject(depth, camera)
    assert len(all_points) == H * W - 2
    residual = all_points.astype(np.float64) @ np.array([0.2, -0.3, -1.0]) + 4.0
    assert np.abs(residual).max() < 1e-5 * 4.0


# --- metric scale -----------------------------------------------------------------------


def test_relative_to_depth_maps_the_range_in_each_space() -> None:
    pred = np.array([[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(relative_to_depth(pred, "disparity", 2.0, 8.0), [[8.0, 1 / ((1 / 8 + 1 / 2) / 2), 2.0]])
    np.testing.assert_allclose(relative_to_depth(pred, "depth", 2.0, 8.0), [[2.0, 5.0, 8.0]])
    with pytest.raises(ValueError, match="near < far"):
        relative_to_depth(pred, "depth", 8.0, 2.0)
    with pytest.raises(ValueError, match="space"):
        relative_to_depth(pred, "inverse", 2.0, 8.0)


@pytest.mark.parametrize("space", ["disparity", "depth"])
def test_sparse_alignment_recovers_a_known_scale_and_shift(space: str) -> None:
    depth, _ = tilted_plane(24, 32)
    value = 1.0 / depth if space == "disparity" else depth
    pred = (value - value.min()) / (value.max() - value.min())  # relative, in [0, 1]
    sparse = sparse_sample(depth, 40)
    fit = fit_sparse(pred, space, sparse, min_points=10, robust=False)
    assert fit.num_points == fit.num_inliers == 40
    assert fit.scale == pytest.approx(value.max() - value.min(), rel=1e-9)
    assert fit.shift == pytest.approx(value.min(), rel=1e-9)
    assert fit.abs_rel < 1e-9 and fit.rmse < 1e-8
    np.testing.assert_allclose(align_to_sparse(pred, space, sparse), depth, rtol=1e-9)


@pytest.mark.parametrize("space", ["disparity", "depth"])
def test_robust_alignment_survives_gross_outliers(space: str) -> None:
    depth, _ = tilted_plane(24, 32)
    value = 1.0 / depth if space == "disparity" else depth
    pred = (value - value.min()) / (value.max() - value.min())
    sparse = sparse_sample(depth, 200, seed=1)
    picked = np.flatnonzero(np.isfinite(sparse) & (sparse > 0))
    bad = picked[::40]  # 5 LiDAR returns from the wrong surface
    sparse.flat[bad] *= np.array([3.0, 0.3, 2.5, 0.4, 4.0])
    plain = align_to_sparse(pred, space, sparse, robust=False)
    assert np.abs(plain / depth - 1).max() > 0.02  # the outliers do pull a plain fit
    fit = fit_sparse(pred, space, sparse, robust=True)
    assert fit.num_points == 200 and fit.num_inliers == 195
    np.testing.assert_allclose(fit.apply(pred), depth, rtol=1e-8)


def test_sparse_alignment_refuses_bad_fits() -> None:
    depth, _ = tilted_plane(24, 32)
    pred = 1.0 / depth
    pred = (pred - pred.min()) / (pred.max() - pred.min())
    with pytest.raises(ValueError, match="only 5 valid sparse depth points.*min_points=10"):
        fit_sparse(pred, "disparity", sparse_sample(depth, 5), min_points=10)
    with pytest.raises(ValueError, match="differ in size"):
        fit_sparse(pred, "disparity", sparse_sample(depth, 40)[:-1])
    with pytest.raises(ValueError, match="inverts the prediction"):
        fit_sparse(1.0 - pred, "disparity", sparse_sample(depth, 40))
    # Sparse points only where pred >= 0.5, with disparity = pred - 0.3: pixels with pred < 0.3
    # extrapolate to negative disparity ("beyond infinity", like sky), which is refused unless
    # max_depth drops them (together with everything beyond it).
    near = pred >= 0.5
    sparse = np.where(near, 1.0 / np.where(near, pred - 0.3, 1.0), np.nan)
    fit = fit_sparse(pred, "disparity", sparse)
    assert (fit.scale, fit.shift) == pytest.approx((1.0, -0.3))
    negative = int((pred <= 0.3).sum())
    assert negative > 0
    with pytest.raises(ValueError, match=f"non-positive disparity on {negative} of {pred.size} pixels .*max_depth"):
        fit.apply(pred)
    metric = fit.apply(pred, max_depth=50.0)
    assert np.isnan(metric[pred < 0.32]).all() and np.isfinite(metric[pred > 0.33]).all()
    assert np.nanmax(metric) <= 50.0
    with pytest.raises(ValueError, match="non-positive depth"):
        fit_sparse(pred, "depth", np.where(near, pred - 0.3, np.nan)).apply(pred, max_depth=50.0)


# --- sparse files -----------------------------------------------------------------------


def test_read_sparse_depth_formats(tmp_path) -> None:
    dense = np.zeros((4, 5), dtype=np.float32)
    dense[1, 2], dense[3, 4] = 2.5, 10.0
    npy = dense.copy()
    npy[0, 0] = np.nan
    np.save(tmp_path / "a.npy", npy)
    expected = np.where(dense > 0, dense, np.nan)
    np.testing.assert_array_equal(read_sparse_depth(tmp_path / "a.npy"), expected)

    Image.fromarray(np.round(dense * 256).astype(np.uint16)).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_sparse_depth(tmp_path / "b.png"), expected)
    np.testing.assert_array_equal(read_sparse_depth(tmp_path / "b.png", png_scale=128.0), expected * 2)
    Image.fromarray(np.zeros((4, 5), dtype=np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"c\.png: sparse depth PNGs must be 16-bit"):
        read_sparse_depth(tmp_path / "c.png")

    # Header, comment, a fractional coordinate, two points on one pixel (the nearer wins), one outside.
    (tmp_path / "d.csv").write_text("u,v,depth\n# lidar\n2.7,1.2,2.5\n4,3,12.0\n4,3,10.0\n9,1,3.0\n")
    np.testing.assert_array_equal(read_sparse_depth(tmp_path / "d.csv", shape=(4, 5)), expected)
    (tmp_path / "e.txt").write_text("2 1 2.5\n4 3 10\n")
    np.testing.assert_array_equal(read_sparse_depth(tmp_path / "e.txt", shape=(4, 5)), expected)
    with pytest.raises(ValueError, match=r"e\.txt: .*needs the image shape"):
        read_sparse_depth(tmp_path / "e.txt")
    (tmp_path / "f.txt").write_text("2 1\n4 3\n")
    with pytest.raises(ValueError, match=r"f\.txt: rows need 3 columns"):
        read_sparse_depth(tmp_path / "f.txt", shape=(4, 5))


# --- meshes -----------------------------------------------------------------------------


def test_mesh_keeps_a_smooth_plane_and_cuts_a_step() -> None:
    depth, camera = tilted_plane()
    colors = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    mesh = mesh_from_depth(depth, camera, colors=colors)
    full = 2 * (H - 1) * (W - 1)
    assert mesh.faces.shape == (full, 3) and len(np.unique(mesh.faces)) == H * W
    np.testing.assert_array_equal(mesh.vertices, backproject(depth, camera))
    np.testing.assert_array_equal(mesh.colors, colors.reshape(-1, 3))
    # Counter-clockwise seen from the camera: every face normal points back toward it (z < 0).
    a, b, c = (mesh.vertices[mesh.faces[:, i]].astype(np.float64) for i in range(3))
    normals = np.cross(b - a, c - a)
    assert (normals[:, 2] < 0).all()

    step = np.where(np.arange(W)[None, :] < W // 2, 2.0, 4.0).repeat(H, axis=0)
    cut = mesh_from_depth(step, camera)
    assert len(cut.faces) == full - 2 * (H - 1)  # the column of quads across the step is gone
    face_depths = cut.vertices[cut.faces][..., 2]
    assert (face_depths.max(axis=1) == face_depths.min(axis=1)).all()  # no face bridges it
    assert len(mesh_from_depth(step, camera, max_depth_ratio=None).faces) == full

    holed = depth.copy()
    holed[5, 7] = np.nan  # an interior pixel belongs to six triangles
    assert len(mesh_from_depth(holed, camera).faces) == full - 6


# --- files ------------------------------------------------------------------------------


def test_ply_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (50, 3), dtype=np.uint8)
    normals = rng.normal(size=(50, 3)).astype(np.float32)
    faces = rng.integers(0, 50, (20, 3))
    path = write_ply(tmp_path / "m.ply", points, colors, normals, faces, comments=["frame: test", "two\nlines"])
    header = path.read_bytes().split(b"end_header\n")[0].decode()
    assert "format binary_little_endian 1.0" in header and "property list uchar int vertex_indices" in header
    assert "property uchar red" in header and "property float nx" in header
    data = read_ply(path)
    np.testing.assert_array_equal(data.points, points)
    np.testing.assert_array_equal(data.colors, colors)
    np.testing.assert_array_equal(data.normals, normals)
    np.testing.assert_array_equal(data.faces, faces)
    assert data.comments == ["frame: test", "two lines"]

    bare = read_ply(write_ply(tmp_path / "p.ply", points))
    np.testing.assert_array_equal(bare.points, points)
    assert bare.colors is None and bare.normals is None and bare.faces is None
    assert (tmp_path / "p.ply").stat().st_size == len(header_of(tmp_path / "p.ply")) + 50 * 12

    (tmp_path / "a.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nelement face 1\n"
        "property list uchar int vertex_indices\nend_header\n0 0 0 255 0 0\n1 0 0 0 255 0\n0 1 0.5 0 0 255\n3 0 1 2\n"
    )
    ascii_data = read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(ascii_data.points, [[0, 0, 0], [1, 0, 0], [0, 1, 0.5]])
    np.testing.assert_array_equal(ascii_data.colors, [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    np.testing.assert_array_equal(ascii_data.faces, [[0, 1, 2]])

    with pytest.raises(ValueError, match=r"face indices must be in \[0, 50\)"):
        write_ply(tmp_path / "bad.ply", points, faces=[[0, 1, 50]])
    with pytest.raises(ValueError, match="colors must be"):
        write_ply(tmp_path / "bad.ply", points, colors[:-1])


def header_of(path) -> bytes:
    return path.read_bytes().split(b"end_header\n")[0] + b"end_header\n"


def test_obj_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(1)
    vertices = (rng.normal(size=(30, 3)) * 7).astype(np.float32)
    colors = rng.integers(0, 256, (30, 3), dtype=np.uint8)
    faces = rng.integers(0, 30, (12, 3))
    path = write_obj(tmp_path / "m.obj", vertices, faces, colors, comments=["frame: test"])
    lines = path.read_text().splitlines()
    assert lines[0] == "# frame: test" and lines[1].startswith("v ") and len(lines[1].split()) == 7
    assert lines[-1] == "f " + " ".join(str(i + 1) for i in faces[-1])
    data = read_obj(path)
    np.testing.assert_array_equal(data.points, vertices)  # %.9g keeps float32 exactly
    np.testing.assert_array_equal(data.colors, colors)
    np.testing.assert_array_equal(data.faces, faces)
    plain = read_obj(write_obj(tmp_path / "p.obj", vertices))
    assert plain.colors is None and plain.faces is None and len(plain.points) == 30
    # other writers' forms: v/t/n face indices, and a quad, which trimesh triangulates
    (tmp_path / "q.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1/1/1 2/2/2 3/3/3\nf 1 2 4 3\n")
    quad = read_obj(tmp_path / "q.obj")
    assert len(quad.points) == 4 and len(quad.faces) == 3 and quad.faces.max() == 3


# --- lotus_pl reconstruct ---------------------------------------------------------------


def prediction_folder(tmp_path, space: str = "disparity") -> dict:
    """Two images and the files ``lotus_pl predict`` writes for them (depth, plus normals for one)."""
    depth, camera = tilted_plane()
    value = 1.0 / depth if space == "disparity" else depth
    relative = ((value - value.min()) / (value.max() - value.min())).astype(np.float32)
    task = Depth() if space == "disparity" else Depth(encoding=NormalizedDepth())
    images, preds = tmp_path / "images", tmp_path / "preds"
    images.mkdir()
    preds.mkdir()
    rng = np.random.default_rng(0)
    rgb = {}
    for stem in ("a", "b"):
        rgb[stem] = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(rgb[stem]).save(images / f"{stem}.png")
        task.save(relative[None], preds, stem)
    normal = np.zeros((3, H, W), dtype=np.float32)
    normal[2] = 1.0  # facing the camera in the project's frame
    Normal().save(normal, preds, "a")
    return {"depth": depth, "camera": camera, "images": images, "preds": preds, "rgb": rgb, "relative": relative}


def test_reconstruct_with_range_guess_and_obj_mesh(tmp_path, capsys) -> None:
    f = prediction_folder(tmp_path)
    out = tmp_path / "out"
    near, far = float(f["depth"].min()), float(f["depth"].max())  # the guess happens to be right
    main(["reconstruct", f"--predictions={f['preds']}", f"--images={f['images']}", f"--output_dir={out}",
          f"--near={near!r}", f"--far={far!r}", "--mesh_format=obj"])
    printed = capsys.readouterr().out
    assert "GUESSED from a 60 degree horizontal field of view" in printed
    assert printed.count(f"range GUESS: disparity mapped onto near {near:g} m .. far {far:g} m") == 2
    a = read_ply(out / "a.ply")
    assert len(a.points) == H * W and f"a: {H * W} points, {2 * (H - 1) * (W - 1)} mesh faces" in printed
    np.testing.assert_array_equal(a.colors, f["rgb"]["a"].reshape(-1, 3))
    np.testing.assert_array_equal(a.normals, np.tile([0.0, 0.0, -1.0], (H * W, 1)))  # toward the camera in OpenCV
    assert any(c.startswith("frame: OpenCV camera (x right, y down, z forward)") for c in a.comments)
    np.testing.assert_allclose(a.points, backproject(f["depth"], f["camera"]), rtol=2e-5, atol=1e-5)
    b = read_ply(out / "b.ply")
    assert b.normals is None and len(b.points) == H * W
    mesh = read_obj(out / "b_mesh.obj")
    assert len(mesh.points) == H * W and len(mesh.faces) == 2 * (H - 1) * (W - 1)


@pytest.mark.parametrize("space", ["disparity", "depth"])
def test_reconstruct_with_sparse_depth_recovers_the_scene(tmp_path, capsys, space: str) -> None:
    f = prediction_folder(tmp_path, space)
    sparse = tmp_path / "lidar"
    sparse.mkdir()
    np.save(sparse / "a.npy", sparse_sample(f["depth"], 30))
    rows = [(u, v, f["depth"][v, u]) for v in range(0, H, 3) for u in range(0, W, 3)]
    (sparse / "b.txt").write_text("".join(f"{u} {v} {float(d)!r}\n" for u, v, d in rows))
    k = f["camera"]
    main(["reconstruct", f"--predictions={f['preds']}", f"--sparse={sparse}", "--mesh_format=ply",
          f"--intrinsics=[{k.fx!r}, {k.fy!r}, {k.cx!r}, {k.cy!r}]"])
    printed = capsys.readouterr().out
    assert "GUESSED" not in printed
    assert "sparse fit to a.npy: 30 points, 30 inliers" in printed and f"sparse fit to b.txt: {len(rows)} points" in printed
    truth = backproject(f["depth"], k)
    for stem in ("a", "b"):
        cloud = read_ply(f["preds"] / f"{stem}.ply")
        assert cloud.colors is None
        np.testing.assert_allclose(cloud.points, truth, rtol=2e-5, atol=1e-5)  # float32 relative prediction
        mesh = read_ply(f["preds"] / f"{stem}_mesh.ply")
        assert len(mesh.faces) == 2 * (H - 1) * (W - 1)
        np.testing.assert_array_equal(mesh.points, cloud.points)


def test_reconstruct_names_the_file_at_fault(tmp_path) -> None:
    f = prediction_folder(tmp_path)
    (f["preds"] / "b_depth.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"b_depth\.json is missing"):
        main(["reconstruct", f"--predictions={f['preds']}"])
    (f["preds"] / "b_depth.json").write_text(json.dumps({"space": "inverse"}))
    with pytest.raises(ValueError, match=r"b_depth\.json: key 'space'"):
        main(["reconstruct", f"--predictions={f['preds']}"])
    (f["preds"] / "b_depth.json").write_text(json.dumps({"space": "disparity"}))

    sparse = tmp_path / "lidar"
    sparse.mkdir()
    np.save(sparse / "a.npy", sparse_sample(f["depth"], 30))
    np.save(sparse / "b.npy", np.ones((H + 1, W)))
    with pytest.raises(ValueError, match=rf"b\.npy: sparse depth is {H + 1}x{W} \(HxW\) but the prediction b_depth\.npy is {H}x{W}"):
        main(["reconstruct", f"--predictions={f['preds']}", f"--sparse={sparse}"])
    (sparse / "b.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"no sparse depth file named b\.\*"):
        main(["reconstruct", f"--predictions={f['preds']}", f"--sparse={sparse}"])
    np.save(sparse / "b.npy", sparse_sample(f["depth"], 3))
    with pytest.raises(ValueError, match=r"b\.npy: only 3 valid sparse depth points"):
        main(["reconstruct", f"--predictions={f['preds']}", f"--sparse={sparse}"])

    np.save(f["preds"] / "a_normal.npy", np.zeros((3, H, W + 1), dtype=np.float32))
    with pytest.raises(ValueError, match=r"a_normal\.npy: normals are"):
        main(["reconstruct", f"--predictions={f['preds']}"])
    Image.fromarray(np.zeros((H, 2 * W, 3), dtype=np.uint8)).save(f["images"] / "a.png")
    with pytest.raises(ValueError, match=r"a\.png: the image is .* another aspect ratio"):
        main(["reconstruct", f"--predictions={f['preds']}", f"--images={f['images']}"])
    with pytest.raises(FileNotFoundError, match="no <stem>_depth.npy predictions"):
        main(["reconstruct", f"--predictions={tmp_path / 'images'}"])

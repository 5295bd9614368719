"""Renderer ground truth checked against closed-form geometry."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from lotus_pl.data.renderer import (
    Box,
    Camera,
    Light,
    Plane,
    Scene,
    Sphere,
    Texture,
    random_scene,
    render,
    render_random,
)

GREY = Texture("solid", (0.5, 0.5, 0.5))


def _pixel_of(camera: Camera, point, height: int, width: int) -> tuple[int, int, float]:
    """(row, col, planar depth) of a world point, independent of the renderer's ray code."""
    fx, fy, cx, cy = camera.intrinsics(height, width)
    rel = np.asarray(point, dtype=float) - np.asarray(camera.position)
    x, y, z = camera.rotation().T @ rel  # OpenCV camera frame
    return int(math.floor(fy * y / z + cy)), int(math.floor(fx * x / z + cx)), z


def test_fronto_parallel_plane_depth_and_normal():
    d = 3.7
    scene = Scene([Plane((0.0, 0.0, -d), (0.0, 0.0, 1.0), GREY)])
    view = render(scene, Camera(position=(0.0, 0.0, 0.0)), 48, 64)
    assert view.valid.all()
    np.testing.assert_allclose(view.depth, d, rtol=0, atol=1e-5)
    np.testing.assert_allclose(view.normal, np.broadcast_to([0, 0, 1], (48, 64, 3)), atol=1e-6)
    # Albedo is the texture, not the lit colour.
    np.testing.assert_allclose(view.albedo, 0.5, atol=1e-6)


def test_plane_normal_flipped_to_face_camera_and_camera_translation():
    # Same wall with its normal pointing away; camera moved: depth is relative to the camera.
    scene = Scene([Plane((5.0, 1.0, -10.0), (0.0, 0.0, -1.0), GREY)])
    view = render(scene, Camera(position=(1.0, 2.0, -4.0)), 32, 32)
    np.testing.assert_allclose(view.depth, 6.0, atol=1e-5)
    np.testing.assert_allclose(view.normal[..., 2], 1.0, atol=1e-6)


def test_floor_below_level_camera_matches_analytic_depth():
    h, height, width = 1.5, 60, 80
    camera = Camera(position=(0.3, h, 0.0), hfov_deg=70.0)
    view = render(Scene([Plane((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), GREY)]), camera, height, width)
    fx, fy, cx, cy = view.fx, view.fy, view.cx, view.cy
    assert cx == width / 2 and cy == height / 2
    assert fx == pytest.approx(width / 2 / math.tan(math.radians(35.0)))
    for v in range(height):
        below = v + 0.5 - cy  # pixel-centre convention
        if below > 0:
            np.testing.assert_allclose(view.depth[v], h * fy / below, rtol=1e-6)
            np.testing.assert_allclose(view.normal[v], np.broadcast_to([0, 1, 0], (width, 3)), atol=1e-6)
        else:  # at or above the horizon the ray never reaches the floor
            assert (view.depth[v] == 0).all() and (view.normal[v] == 0).all()
            assert (view.albedo[v] == 0).all()


def test_plane_facing_image_right_has_normal_minus_x():
    # A wall on the camera's left (x = -2) facing +x world, i.e. facing image-right.
    camera = Camera(position=(0.0, 0.0, 0.0), hfov_deg=60.0)
    view = render(Scene([Plane((-2.0, 0.0, 0.0), (1.0, 0.0, 0.0), GREY)]), camera, 32, 32)
    left, right = view.valid[:, :16], view.valid[:, 16:]
    assert left.all() and not right.any()
    np.testing.assert_allclose(view.normal[:, :16], np.broadcast_to([-1, 0, 0], (32, 16, 3)), atol=1e-6)
    # Planar depth of a point on x = -2 is 2 / |x_ndc|.
    u = np.arange(16) + 0.5
    np.testing.assert_allclose(view.depth[5, :16], 2.0 * view.fx / (view.cx - u), rtol=1e-6)


def test_yawed_camera_sees_wall_on_its_left():
    # Yaw +90 deg turns the camera to look along world -x.
    camera = Camera(position=(0.0, 1.0, 0.0), yaw_deg=90.0)
    view = render(Scene([Plane((-4.0, 0.0, 0.0), (1.0, 0.0, 0.0), GREY)]), camera, 24, 24)
    np.testing.assert_allclose(view.depth, 4.0, atol=1e-5)
    np.testing.assert_allclose(view.normal[..., 2], 1.0, atol=1e-6)


@pytest.mark.parametrize("size", [65, 64])
def test_sphere_on_optical_axis(size):
    center, r = np.array([0.0, 0.0, -5.0]), 1.0
    camera = Camera(position=(0.0, 0.0, 0.0), hfov_deg=40.0)
    view = render(Scene([Sphere(tuple(center), r, GREY)]), camera, size, size)
    c = size // 2  # for odd sizes this pixel centre is exactly on the axis
    tol = 0.0 if size % 2 else 1e-3  # half a pixel off-axis at most
    assert view.depth[c, c] == pytest.approx(5.0 - r, abs=tol + 1e-5)
    # Half a pixel off-axis the surface point moves by ~(5 - r) * 0.5 / fx, tilting the normal by that / r.
    normal_tol = 1.2 * (5.0 - r) * 0.5 / view.fx / r if tol else 1e-6
    np.testing.assert_allclose(view.normal[c, c], [0, 0, 1], atol=normal_tol)

    valid = view.valid
    assert 0.05 < valid.mean() < 0.95
    np.testing.assert_allclose(np.linalg.norm(view.normal[valid], axis=-1), 1.0, atol=1e-5)
    # Back-project every valid pixel: it must lie on the sphere, with the radial normal.
    v, u = np.nonzero(valid)
    z = view.depth[v, u].astype(float)
    x = (u + 0.5 - view.cx) / view.fx * z
    y = (v + 0.5 - view.cy) / view.fy * z
    world = np.stack([x, -y, -z], axis=1)  # OpenCV camera frame -> world (camera at origin, no rotation)
    np.testing.assert_allclose(np.linalg.norm(world - center, axis=1), r, atol=1e-4)
    radial = (world - center) / r
    expected = np.stack([-radial[:, 0], radial[:, 1], radial[:, 2]], axis=1)  # project convention
    np.testing.assert_allclose(view.normal[v, u], expected, atol=1e-3)


def test_box_faces_and_depth():
    box = Box((-1.0, 0.0, -4.0), (1.0, 1.0, -3.0), GREY)
    # Head-on: the front face (z = -3) at depth 3 with normal toward the camera.
    view = render(Scene([box]), Camera(position=(0.0, 0.5, 0.0), hfov_deg=60.0), 33, 33)
    assert view.depth[16, 16] == pytest.approx(3.0, abs=1e-6)
    np.testing.assert_allclose(view.normal[16, 16], [0, 0, 1], atol=1e-6)
    # From the front-right both the front face and the +x face are visible; every
    # pixel with the +x face's normal must back-project onto the plane x = 1.
    camera = Camera(position=(3.0, 0.5, -1.0), yaw_deg=30.0)
    view = render(Scene([box]), camera, 64, 64)
    side_normal = -(np.array([1.0, 0.0, 0.0]) @ camera.rotation())
    assert side_normal[0] < 0 < side_normal[2]  # faces image-right and toward the camera
    side = np.isclose(view.normal, side_normal, atol=1e-5).all(-1)
    front = np.isclose(view.normal, -(np.array([0.0, 0.0, 1.0]) @ camera.rotation()), atol=1e-5).all(-1)
    assert side.sum() > 20 and front.sum() > 20
    v, u = np.nonzero(side)
    z = view.depth[v, u].astype(float)
    cam_pts = np.stack([(u + 0.5 - view.cx) / view.fx * z, (v + 0.5 - view.cy) / view.fy * z, z], axis=1)
    world = cam_pts @ camera.rotation().T + np.asarray(camera.position)
    np.testing.assert_allclose(world[:, 0], 1.0, atol=1e-4)


def test_shadow_darker_than_lit_same_albedo():
    light = Light(direction=(1.0, 1.0, 0.0), intensity=0.8, ambient=0.25)
    box = Box((-0.5, 0.0, -5.5), (0.5, 1.0, -4.5), Texture("solid", (0.9, 0.2, 0.2)))
    floor = Plane((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), GREY)
    camera = Camera(position=(0.0, 3.0, 0.0), pitch_deg=-30.0)
    size = 96
    view = render(Scene([floor, box], light), camera, size, size)
    # (-1, 0, -5): the ray toward the light passes through the box; (-1, 0, -3) does not.
    shadowed = _pixel_of(camera, (-1.0, 0.0, -5.0), size, size)
    lit = _pixel_of(camera, (-1.0, 0.0, -3.0), size, size)
    for row, col, z in (shadowed, lit):
        assert view.depth[row, col] == pytest.approx(z, rel=0.05)
        np.testing.assert_allclose(view.albedo[row, col], 0.5, atol=1e-6)
    rs, cs, _ = shadowed
    rl, cl, _ = lit
    assert view.rgb[rs, cs].astype(int).sum() < view.rgb[rl, cl].astype(int).sum()
    # Exact Lambertian values: ambient only in shadow, ambient + I * n.l when lit.
    assert view.rgb[rs, cs, 0] == round(0.5 * 0.25 * 255)
    assert view.rgb[rl, cl, 0] == round(0.5 * (0.25 + 0.8 / math.sqrt(2)) * 255)
    # Without the box, the same floor point is lit.
    unboxed = render(Scene([floor], light), camera, size, size)
    assert unboxed.rgb[rs, cs, 0] == view.rgb[rl, cl, 0]


def test_textures_on_floor():
    tex = Texture("checker", (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), scale=1.0)
    camera = Camera(position=(0.0, 2.0, 0.0), pitch_deg=-45.0)
    view = render(Scene([Plane((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), tex)]), camera, 64, 64)
    values = np.unique(view.albedo[view.valid][:, 0])
    np.testing.assert_array_equal(values, [0.0, 1.0])


def test_render_random_deterministic_and_seed_dependent():
    a, b, c = render_random(7, 64, 64), render_random(7, 64, 64), render_random(8, 64, 64)
    for name in ("rgb", "depth", "normal", "albedo"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.depth, c.depth)
    assert not np.array_equal(a.rgb, c.rgb)


def test_random_scenes_are_sane():
    valid_fracs = []
    for seed in range(12):
        scene, camera = random_scene(np.random.default_rng(seed))
        assert 50.0 <= camera.hfov_deg <= 75.0
        n_obj = sum(isinstance(p, (Box, Sphere)) for p in scene.primitives)
        assert n_obj >= 1
        view = render(scene, camera, 64, 64)
        valid = view.valid
        valid_fracs.append(valid.mean())
        assert view.rgb.dtype == np.uint8 and view.rgb.shape == (64, 64, 3)
        assert view.depth.dtype == np.float32 and (view.depth[valid] > 0.1).all()
        assert view.depth.max() < 65.0  # fits uint16 millimetres
        np.testing.assert_allclose(np.linalg.norm(view.normal[valid], axis=-1), 1.0, atol=1e-5)
        assert view.albedo.min() >= 0.0 and view.albedo.max() <= 1.0
        assert (view.albedo[~valid] == 0).all() and (view.normal[~valid] == 0).all()
        assert view.intrinsics.shape == (4,)
        assert view.depth[valid].std() > 0.2  # real depth structure
    assert np.mean(valid_fracs) > 0.9


def test_render_speed_report():
    sizes = 128
    render_random(0, sizes, sizes)  # warm-up
    n = 10
    start = time.perf_counter()
    for seed in range(n):
        render_random(seed, sizes, sizes)
    ms = (time.perf_counter() - start) / n * 1000
    print(f"\nrender_random: {ms:.1f} ms per {sizes}x{sizes} image")

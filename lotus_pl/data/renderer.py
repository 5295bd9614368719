"""Procedural scene renderer with exact per-pixel ground truth.

The synthetic data source has to work offline and give *exact* labels, so the
scenes are built from primitives whose ray intersections are analytic (infinite
planes, world-axis-aligned boxes, spheres) and every image is rendered with one
ray through each pixel centre. Depth, normal and albedo are therefore the true
values at the pixel centre, not an estimate.

Conventions
-----------
* World frame: right-handed, ``y`` up. A camera with ``yaw = pitch = 0`` looks
  along world ``-z`` with image-right = world ``+x``.
* Rays are cast in an internal OpenCV-style camera frame (x right, y down,
  z forward) with direction ``((u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1)``.
  Because the camera-frame z of the direction is 1, the ray parameter ``t`` at a
  hit *is* the planar depth.
* Output normals use the project convention: x image-LEFT, y UP, z TOWARD the
  camera. That is exactly the negated OpenCV camera-frame vector.
* Shading is linear: ``rgb = albedo * (ambient + intensity * max(n.l, 0) * lit)``
  (clipped, no gamma), so ``rgb ~= albedo * shading`` holds for intrinsic-image
  work. Room planes do not cast shadows (the light "comes through" the ceiling);
  boxes and spheres do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-6  # minimum ray parameter for a hit (avoids self-intersection)
_SHADOW_OFFSET = 1e-4  # shadow ray origins are pushed this far along the normal


# --------------------------------------------------------------------------- #
# Scene description
# --------------------------------------------------------------------------- #
@dataclass
class Texture:
    """Reflectance pattern evaluated on 2-D surface coordinates in metres.

    ``kind`` is ``"solid"`` (``color_a`` only), ``"checker"`` (tiles of side
    ``scale``), ``"stripes"`` (bands of width ``scale`` at ``angle`` radians),
    ``"rings"`` (concentric bands of width ``scale`` around the surface origin),
    ``"dots"`` (discs of ``color_b`` on a grid of pitch ``scale``) or ``"blocks"``
    (tiles of side ``scale``, each ``color_a`` or ``color_b`` by a fixed hash of
    its index: irregular, but the same on every render).
    """

    kind: str = "solid"
    color_a: tuple[float, float, float] = (0.7, 0.7, 0.7)
    color_b: tuple[float, float, float] = (0.3, 0.3, 0.3)
    scale: float = 0.5
    angle: float = 0.0

    def evaluate(self, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Albedo [N,3] at surface coordinates ``s, t`` (each [N])."""
        a = np.asarray(self.color_a, dtype=np.float32)
        b = np.asarray(self.color_b, dtype=np.float32)
        if self.kind == "solid":
            return np.broadcast_to(a, (s.shape[0], 3)).copy()
        if self.kind == "checker":
            parity = (np.floor(s / self.scale) + np.floor(t / self.scale)) % 2
        elif self.kind == "stripes":
            coord = s * math.cos(self.angle) + t * math.sin(self.angle)
            parity = np.floor(coord / self.scale) % 2
        elif self.kind == "rings":
            parity = np.floor(np.hypot(s, t) / self.scale) % 2
        elif self.kind == "dots":
            fs, ft = s / self.scale - np.floor(s / self.scale) - 0.5, t / self.scale - np.floor(t / self.scale) - 0.5
            parity = (fs * fs + ft * ft < 0.09).astype(np.float64)
        elif self.kind == "blocks":
            i, j = np.floor(s / self.scale), np.floor(t / self.scale)
            parity = (np.sin(i * 12.9898 + j * 78.233) * 43758.5453) % 1.0
        else:
            raise ValueError(f"unknown texture kind {self.kind!r}")
        return np.where(parity[:, None] > 0.5, b, a).astype(np.float32)


@dataclass
class Plane:
    """Infinite plane through ``point`` with normal ``normal`` (either side visible)."""

    point: tuple[float, float, float]
    normal: tuple[float, float, float]
    texture: Texture = field(default_factory=Texture)
    casts_shadow: bool = False


@dataclass
class Box:
    """Box aligned with the world axes, spanning ``lo`` to ``hi``."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    texture: Texture = field(default_factory=Texture)
    casts_shadow: bool = True


@dataclass
class Sphere:
    center: tuple[float, float, float]
    radius: float
    texture: Texture = field(default_factory=Texture)
    casts_shadow: bool = True


Primitive = Plane | Box | Sphere


@dataclass
class Light:
    """Directional light. ``direction`` points from the surface TOWARD the light."""

    direction: tuple[float, float, float] = (0.3, 1.0, 0.5)
    intensity: float = 0.8
    ambient: float = 0.3
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class Scene:
    """Primitives lit by ``light`` (whose ``ambient`` is the scene's ambient term) and by
    ``fill_lights`` (their own ``ambient`` is ignored); ``background`` is what rays that miss see."""

    primitives: list[Primitive]
    light: Light = field(default_factory=Light)
    background: tuple[float, float, float] = (0.55, 0.7, 0.9)
    fill_lights: list[Light] = field(default_factory=list)


@dataclass
class Camera:
    """Pinhole camera placed in the world.

    ``pitch_deg`` < 0 looks down, ``yaw_deg`` > 0 turns left (counter-clockwise
    seen from above). The principal point is at ``(cx_frac * W, cy_frac * H)``
    in the pixel-centre convention (pixel ``(u, v)`` has its centre at
    ``u + 0.5, v + 0.5``), so the defaults give ``cx = W / 2``.
    """

    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    hfov_deg: float = 60.0
    cx_frac: float = 0.5
    cy_frac: float = 0.5

    def intrinsics(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels for an image of the given size (square pixels)."""
        fx = (width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)
        return fx, fx, self.cx_frac * width, self.cy_frac * height

    def rotation(self) -> np.ndarray:
        """3x3 matrix mapping OpenCV camera-frame vectors to world vectors."""
        yaw, pitch = math.radians(self.yaw_deg), math.radians(self.pitch_deg)
        forward = np.array(
            [-math.sin(yaw) * math.cos(pitch), math.sin(pitch), -math.cos(yaw) * math.cos(pitch)]
        )
        right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
        down = np.cross(forward, right)
        return np.stack([right, down, forward], axis=1)


@dataclass
class RenderedView:
    """One rendered image with its exact ground truth (see module docstring)."""

    rgb: np.ndarray  # uint8 [H,W,3]
    depth: np.ndarray  # float32 [H,W], planar metres, 0 = invalid
    normal: np.ndarray  # float32 [H,W,3], camera frame (x left, y up, z toward camera)
    albedo: np.ndarray  # float32 [H,W,3] in [0,1], 0 = invalid
    fx: float
    fy: float
    cx: float
    cy: float

    @property
    def intrinsics(self) -> np.ndarray:
        return np.array([self.fx, self.fy, self.cx, self.cy], dtype=np.float32)

    @property
    def valid(self) -> np.ndarray:
        return self.depth > 0


# --------------------------------------------------------------------------- #
# Intersections. ``o`` is [3] or [N,3], ``d`` is [N,3] or [3]; results are [N]
# ray parameters with ``inf`` for a miss.
# --------------------------------------------------------------------------- #
def _intersect_plane(p: Plane, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    n = np.asarray(p.normal, dtype=np.float64)
    denom = d @ n
    num = (np.asarray(p.point, dtype=np.float64) - o) @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / denom
    return np.where((np.abs(denom) > 1e-12) & (t > _EPS), t, np.inf)


def _intersect_sphere(s: Sphere, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    oc = o - np.asarray(s.center, dtype=np.float64)
    a = np.einsum("...i,...i->...", d, d)
    half_b = np.einsum("...i,...i->...", oc, d)
    c = np.einsum("...i,...i->...", oc, oc) - s.radius**2
    disc = half_b * half_b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t0 = (-half_b - root) / a
    t1 = (-half_b + root) / a
    t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))
    return np.where(disc >= 0.0, t, np.inf)


def _intersect_box(b: Box, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    # Slab test, one axis at a time on contiguous columns (much faster than
    # reducing over a length-3 last axis). fmin/fmax ignore the NaN of 0 * inf
    # for rays lying exactly in a slab face.
    o = np.broadcast_to(o, np.broadcast_shapes(np.shape(o), np.shape(d)))
    d = np.broadcast_to(d, o.shape)
    tnear = tfar = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            inv = 1.0 / d[..., k]
            ta = (b.lo[k] - o[..., k]) * inv
            tb = (b.hi[k] - o[..., k]) * inv
            lo_k, hi_k = np.fmin(ta, tb), np.fmax(ta, tb)
            tnear = lo_k if tnear is None else np.fmax(tnear, lo_k)
            tfar = hi_k if tfar is None else np.fmin(tfar, hi_k)
    hit = tfar >= np.maximum(tnear, _EPS)
    t = np.where(tnear > _EPS, tnear, tfar)
    return np.where(hit, t, np.inf)


def _intersect(prim: Primitive, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    if isinstance(prim, Plane):
        return _intersect_plane(prim, o, d)
    if isinstance(prim, Sphere):
        return _intersect_sphere(prim, o, d)
    if isinstance(prim, Box):
        return _intersect_box(prim, o, d)
    raise TypeError(f"unsupported primitive {type(prim).__name__}")


def _plane_basis(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit tangents of a plane; fixed per normal so textures are stable."""
    helper = np.array([0.0, 1.0, 0.0]) if abs(n[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(helper, n)
    u /= np.linalg.norm(u)
    return u, np.cross(n, u)


def _surface(prim: Primitive, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World normal [N,3] (not yet camera-facing) and albedo [N,3] at hit points ``p``."""
    if isinstance(prim, Plane):
        n = np.asarray(prim.normal, dtype=np.float64)
        n = n / np.linalg.norm(n)
        u, v = _plane_basis(n)
        albedo = prim.texture.evaluate(p @ u, p @ v)
        return np.broadcast_to(n, p.shape).copy(), albedo
    if isinstance(prim, Sphere):
        q = (p - np.asarray(prim.center)) / prim.radius
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        s = np.arctan2(q[:, 2], q[:, 0]) * prim.radius
        t = np.arcsin(np.clip(q[:, 1], -1.0, 1.0)) * prim.radius
        return q, prim.texture.evaluate(s, t)
    # Box: the face hit is the axis on which the point is farthest out, relative
    # to the half extent.
    lo, hi = np.asarray(prim.lo), np.asarray(prim.hi)
    center, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    rel = (p - center) / half
    axis = np.argmax(np.abs(rel), axis=1)
    rows = np.arange(p.shape[0])
    n = np.zeros_like(p)
    n[rows, axis] = np.sign(rel[rows, axis])
    # Texture coordinates: the two world coordinates in the face plane.
    other = np.array([[1, 2], [0, 2], [0, 1]])[axis]
    s = p[rows, other[:, 0]]
    t = p[rows, other[:, 1]]
    return n, prim.texture.evaluate(s, t)


# --------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------- #
def render(scene: Scene, camera: Camera, height: int, width: int) -> RenderedView:
    """Ray-cast ``scene`` from ``camera``; one ray through every pixel centre."""
    fx, fy, cx, cy = camera.intrinsics(height, width)
    rot = camera.rotation()
    origin = np.asarray(camera.position, dtype=np.float64)

    us = (np.arange(width, dtype=np.float64) + 0.5 - cx) / fx
    vs = (np.arange(height, dtype=np.float64) + 0.5 - cy) / fy
    d_cam = np.empty((height, width, 3))
    d_cam[..., 0] = us[None, :]
    d_cam[..., 1] = vs[:, None]
    d_cam[..., 2] = 1.0
    d_cam = d_cam.reshape(-1, 3)
    d_world = d_cam @ rot.T

    # Nearest hit over all primitives; t is the planar depth (camera z of d is 1).
    ts = np.stack([_intersect(p, origin, d_world) for p in scene.primitives])
    which = np.argmin(ts, axis=0)
    depth = ts[which, np.arange(ts.shape[1])]
    valid = np.isfinite(depth)

    n_pix = height * width
    normal_w = np.zeros((n_pix, 3))
    albedo = np.zeros((n_pix, 3), dtype=np.float32)
    for k, prim in enumerate(scene.primitives):
        idx = np.nonzero(valid & (which == k))[0]
        if idx.size == 0:
            continue
        p = origin + depth[idx, None] * d_world[idx]
        normal_w[idx], albedo[idx] = _surface(prim, p)

    # Make normals face the camera (planes are two-sided).
    facing = np.einsum("ij,ij->i", normal_w, d_world) > 0
    normal_w[facing] *= -1.0

    # Lambertian shading with hard shadows from the shadow-casting primitives, summed over the
    # lights; each light's colour tints its own contribution.
    shading = np.full((n_pix, 3), scene.light.ambient)
    for light in [scene.light, *scene.fill_lights]:
        ldir = np.asarray(light.direction, dtype=np.float64)
        ldir = ldir / np.linalg.norm(ldir)
        ndotl = np.clip(normal_w @ ldir, 0.0, None)
        lit = valid & (ndotl > 0)
        lit_idx = np.nonzero(lit)[0]
        if lit_idx.size:
            p = origin + depth[lit_idx, None] * d_world[lit_idx] + _SHADOW_OFFSET * normal_w[lit_idx]
            blocked = np.zeros(lit_idx.size, dtype=bool)
            for prim in scene.primitives:
                if prim.casts_shadow:
                    blocked |= np.isfinite(_intersect(prim, p, ldir))
            lit[lit_idx[blocked]] = False
        shading += (light.intensity * ndotl * lit)[:, None] * np.asarray(light.color, dtype=np.float64)
    color = albedo * shading.astype(np.float32)
    color[~valid] = np.asarray(scene.background, dtype=np.float32)
    rgb = np.clip(np.round(color * 255.0), 0, 255).astype(np.uint8)

    # OpenCV camera frame -> project convention (x left, y up, z toward camera).
    normal_c = -(normal_w @ rot)
    normal_c[~valid] = 0.0
    depth = np.where(valid, depth, 0.0)

    return RenderedView(
        rgb=rgb.reshape(height, width, 3),
        depth=depth.reshape(height, width).astype(np.float32),
        normal=normal_c.reshape(height, width, 3).astype(np.float32),
        albedo=albedo.reshape(height, width, 3),
        fx=fx,
        fy=fy,
        cx=cx,
        cy=cy,
    )


# --------------------------------------------------------------------------- #
# Random scenes
# --------------------------------------------------------------------------- #
def _random_color(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.95) -> tuple[float, ...]:
    """A saturated-ish colour: a random hue mixed with grey."""
    base = rng.uniform(lo, hi, size=3)
    grey = base.mean()
    mix = rng.uniform(0.3, 1.0)
    return tuple(float(x) for x in np.clip(grey + mix * (base - grey), 0.0, 1.0))


def _random_texture(
    rng: np.random.Generator, patterned: float, scale: tuple[float, float]
) -> Texture:
    """Textures with clear contrast: a pattern of known metric size is a depth cue."""
    a = _random_color(rng)
    # Second colour: same hue family, clearly lighter or darker.
    factor = rng.uniform(0.35, 0.65) if rng.random() < 0.5 else rng.uniform(1.4, 1.9)
    b = tuple(float(np.clip(x * factor + 0.05, 0.0, 1.0)) for x in a)
    if rng.random() >= patterned:
        return Texture("solid", a, b)
    kind = "checker" if rng.random() < 0.6 else "stripes"
    angle = float(rng.choice([0.0, math.pi / 2])) if rng.random() < 0.7 else float(rng.uniform(0, math.pi))
    return Texture(kind, a, b, scale=float(rng.uniform(*scale)), angle=angle)


def random_scene(rng: np.random.Generator) -> tuple[Scene, Camera]:
    """A room with objects on the floor, seen by a randomly placed camera.

    The layout is structured enough for the image to carry depth cues (a
    textured floor receding to a back wall, objects standing on the floor with
    shading and cast shadows, occlusion) while room size, camera height, pitch,
    yaw and FOV vary enough that no single mean depth map fits all scenes.
    """
    width = rng.uniform(4.0, 10.0)  # room extent along x
    length = rng.uniform(5.0, 16.0)  # camera to back wall (along -z)
    ceiling = rng.uniform(2.6, 4.0)
    x_left = -width * rng.uniform(0.3, 0.7)
    x_right = x_left + width
    z_back = -length

    prims: list[Primitive] = [
        Plane((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), _random_texture(rng, 0.9, (0.3, 1.2))),
        Plane((0.0, 0.0, z_back), (0.0, 0.0, 1.0), _random_texture(rng, 0.6, (0.3, 1.0))),
    ]
    if rng.random() < 0.85:
        prims.append(Plane((x_left, 0.0, 0.0), (1.0, 0.0, 0.0), _random_texture(rng, 0.5, (0.3, 1.0))))
    if rng.random() < 0.85:
        prims.append(Plane((x_right, 0.0, 0.0), (-1.0, 0.0, 0.0), _random_texture(rng, 0.5, (0.3, 1.0))))
    if rng.random() < 0.5:
        prims.append(Plane((0.0, ceiling, 0.0), (0.0, -1.0, 0.0), _random_texture(rng, 0.3, (0.5, 1.5))))

    # Camera near the front of the room, looking roughly toward the back wall.
    camera = Camera(
        position=(
            float(rng.uniform(x_left + 0.25 * width, x_right - 0.25 * width)),
            float(rng.uniform(1.0, 2.2)),
            float(rng.uniform(-0.5, 0.5)),
        ),
        yaw_deg=float(rng.uniform(-25.0, 25.0)),
        pitch_deg=float(rng.uniform(-35.0, -3.0)),
        hfov_deg=float(rng.uniform(50.0, 75.0)),
    )
    cam_x, _, cam_z = camera.position
    yaw = math.radians(camera.yaw_deg)
    half_fov = math.radians(camera.hfov_deg) / 2.0

    # Objects standing on the floor, mostly inside the view frustum, with
    # non-overlapping footprints (circles of radius `foot`).
    footprints: list[tuple[float, float, float]] = []

    def place(foot: float) -> tuple[float, float] | None:
        for _ in range(20):
            dist = rng.uniform(1.2 + foot, length + cam_z - foot - 0.2)
            ang = yaw + rng.uniform(-1.0, 1.0) * half_fov * 0.9
            x = cam_x - math.sin(ang) * dist
            z = cam_z - math.cos(ang) * dist
            if not (x_left + foot < x < x_right - foot and z > z_back + foot):
                continue
            if all((x - fx) ** 2 + (z - fz) ** 2 > (foot + fr) ** 2 for fx, fz, fr in footprints):
                footprints.append((x, z, foot))
                return x, z
        return None

    for _ in range(int(rng.integers(2, 8))):
        sx, sz = rng.uniform(0.3, 1.4, size=2)
        sy = rng.uniform(0.3, 1.8)
        spot = place(0.5 * math.hypot(sx, sz))
        if spot is not None:
            x, z = spot
            prims.append(
                Box(
                    (x - sx / 2, 0.0, z - sz / 2),
                    (x + sx / 2, sy, z + sz / 2),
                    _random_texture(rng, 0.5, (0.1, 0.4)),
                )
            )
    for _ in range(int(rng.integers(1, 6))):
        r = rng.uniform(0.2, 0.8)
        spot = place(r)
        if spot is not None:
            x, z = spot
            prims.append(Sphere((x, r, z), r, _random_texture(rng, 0.4, (0.1, 0.3))))

    elev = math.radians(rng.uniform(30.0, 75.0))
    azim = rng.uniform(0.0, 2.0 * math.pi)
    light = Light(
        direction=(math.cos(elev) * math.cos(azim), math.sin(elev), math.cos(elev) * math.sin(azim)),
        intensity=float(rng.uniform(0.6, 1.0)),
        ambient=float(rng.uniform(0.2, 0.4)),
    )
    background = tuple(float(x) for x in rng.uniform(0.4, 0.95, size=3))
    return Scene(prims, light, background), camera


def render_random(seed: int | list[int], height: int = 128, width: int = 128) -> RenderedView:
    """Render the random scene determined by ``seed`` (an int or a list of ints)."""
    scene, camera = random_scene(np.random.default_rng(seed))
    return render(scene, camera, height, width)

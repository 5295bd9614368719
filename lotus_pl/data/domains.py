"""Named families of procedural scenes (domains), so that one renderer serves three roles.

Lotus adapts a prior that has seen far more images than its labelled fine-tuning set, and it is
judged zero-shot on scenes fine-tuning never showed it. The embedded default reproduces that split
with domains of the procedural renderer (:mod:`lotus_pl.data.renderer`):

* :class:`Rooms`: today's quickstart scenes (boxes and spheres in a room), the narrow *labelled*
  fine-tuning domain. It renders exactly what :func:`~lotus_pl.data.renderer.random_scene` does, so
  existing shards and results are unchanged.
* :class:`LitRooms`: rooms with coloured key and fill lights, new texture families (rings, dots,
  irregular blocks) and wide-angle lenses.
* :class:`Outdoor`: a ground plane, buildings and trees-as-spheres up to ~45 m, a far tree line,
  and sky (pixels with no depth), from eye or vehicle height with wide fields of view.
* :class:`Tabletop`: close-range clutter (centimetre-scale objects, 0.3 to 3 m away) under a
  narrow lens and tinted light.
* :class:`Mixture`: a weighted mix of domains; ``Mixture()`` (all four) is the broad *unlabelled*
  stream the generative prior is pretrained on.

:class:`Outdoor` and :class:`Tabletop` are the held-out domains for zero-shot evaluation. Each
domain draws a scene from a ``numpy`` generator, so a sample is a pure function of its seed.
"""

from __future__ import annotations

import math
import zlib
from abc import ABC, abstractmethod

import numpy as np

from lotus_pl.data.renderer import (
    Box,
    Camera,
    Light,
    Plane,
    Primitive,
    Scene,
    Sphere,
    Texture,
    _random_color,
    _random_texture,
    random_scene,
)

_NEW_KINDS = ("rings", "dots", "blocks", "checker", "stripes")


class SceneDomain(ABC):
    """A distribution over (scene, camera) pairs."""

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def entropy(self, base: list[int]) -> list[int]:
        """Seed entropy of one sample: the base entropy salted with the domain's name, so the same
        index of two domains never renders related scenes."""
        return [*base, zlib.crc32(self.name.encode("utf-8"))]

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> tuple[Scene, Camera]:
        """One scene and the camera that sees it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Rooms(SceneDomain):
    """The quickstart's rooms (:func:`~lotus_pl.data.renderer.random_scene`), seeded as before."""

    def entropy(self, base: list[int]) -> list[int]:
        return list(base)  # unsalted: the quickstart's shards stay byte-identical

    def sample(self, rng: np.random.Generator) -> tuple[Scene, Camera]:
        return random_scene(rng)


def _new_texture(rng: np.random.Generator, scale: tuple[float, float]) -> Texture:
    """A two-colour texture of one of the families the quickstart never uses (or a classic one)."""
    base = _random_texture(rng, 1.0, scale)
    kind = str(rng.choice(_NEW_KINDS, p=[0.3, 0.25, 0.25, 0.1, 0.1]))
    return Texture(kind, base.color_a, base.color_b, base.scale, base.angle)


def _tinted(rng: np.random.Generator, strength: float) -> tuple[float, float, float]:
    """A light colour: white pushed ``strength`` of the way toward a random hue (max channel 1)."""
    hue = np.asarray(_random_color(rng, 0.1, 1.0))
    color = (1.0 - strength) + strength * hue
    return tuple(float(c) for c in color / color.max())


def _direction(rng: np.random.Generator, elev_deg: tuple[float, float]) -> tuple[float, float, float]:
    elev = math.radians(rng.uniform(*elev_deg))
    azim = rng.uniform(0.0, 2.0 * math.pi)
    return (math.cos(elev) * math.cos(azim), math.sin(elev), math.cos(elev) * math.sin(azim))


class LitRooms(SceneDomain):
    """Rooms under coloured light, with new texture families and wider lenses."""

    def sample(self, rng: np.random.Generator) -> tuple[Scene, Camera]:
        scene, camera = random_scene(rng)
        for prim in scene.primitives:
            if rng.random() < 0.7:
                prim.texture = _new_texture(rng, (0.1, 0.8))
        scene.light.color = _tinted(rng, rng.uniform(0.2, 0.6))
        scene.fill_lights = [
            Light(_direction(rng, (10.0, 80.0)), float(rng.uniform(0.2, 0.5)), 0.0, _tinted(rng, rng.uniform(0.4, 0.9)))
            for _ in range(int(rng.integers(1, 3)))
        ]
        camera.hfov_deg = float(rng.uniform(60.0, 95.0))
        return scene, camera


class Outdoor(SceneDomain):
    """Open ground with buildings, round trees and a far tree line under the sky (no depth there)."""

    def sample(self, rng: np.random.Generator) -> tuple[Scene, Camera]:
        ground = Texture("blocks" if rng.random() < 0.5 else "checker", _random_color(rng, 0.15, 0.6),
                         _random_color(rng, 0.15, 0.6), scale=float(rng.uniform(0.8, 3.0)))
        far = float(rng.uniform(28.0, 45.0))
        prims: list[Primitive] = [
            Plane((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), ground),
            Box((-300.0, 0.0, -far - 2.0), (300.0, float(rng.uniform(3.0, 12.0)), -far),
                Texture("stripes", _random_color(rng, 0.05, 0.4), _random_color(rng, 0.05, 0.4),
                        scale=float(rng.uniform(1.0, 4.0)), angle=math.pi / 2), casts_shadow=False),
        ]
        camera = Camera(position=(0.0, float(rng.uniform(1.2, 3.0)), 0.0), yaw_deg=float(rng.uniform(-20.0, 20.0)),
                        pitch_deg=float(rng.uniform(-18.0, 4.0)), hfov_deg=float(rng.uniform(60.0, 100.0)))
        yaw, half_fov = math.radians(camera.yaw_deg), math.radians(camera.hfov_deg) / 2.0
        for _ in range(int(rng.integers(3, 10))):
            dist = rng.uniform(4.0, far - 6.0)
            ang = yaw + rng.uniform(-1.0, 1.0) * half_fov
            x, z = -math.sin(ang) * dist, -math.cos(ang) * dist
            if rng.random() < 0.55:
                w, d, h = rng.uniform(2.0, 8.0), rng.uniform(2.0, 8.0), rng.uniform(3.0, 15.0)
                prims.append(Box((x - w / 2, 0.0, z - d / 2), (x + w / 2, h, z + d / 2), _new_texture(rng, (0.4, 1.5))))
            else:
                r = rng.uniform(0.8, 3.0)
                prims.append(Sphere((x, r * rng.uniform(0.8, 1.6), z), r, _new_texture(rng, (0.2, 0.8))))
        light = Light(_direction(rng, (20.0, 70.0)), float(rng.uniform(0.7, 1.0)), float(rng.uniform(0.25, 0.45)),
                      _tinted(rng, rng.uniform(0.0, 0.3)))
        sky = (float(rng.uniform(0.45, 0.7)), float(rng.uniform(0.65, 0.85)), float(rng.uniform(0.85, 1.0)))
        return Scene(prims, light, sky), camera


class Tabletop(SceneDomain):
    """Small objects on a table against a near wall, seen from close by with a narrow lens."""

    def sample(self, rng: np.random.Generator) -> tuple[Scene, Camera]:
        back = float(rng.uniform(1.2, 2.8))
        prims: list[Primitive] = [
            Plane((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), _new_texture(rng, (0.03, 0.15))),
            Plane((0.0, 0.0, -back), (0.0, 0.0, 1.0), _new_texture(rng, (0.05, 0.3))),
        ]
        camera = Camera(position=(0.0, float(rng.uniform(0.25, 0.7)), 0.0), yaw_deg=float(rng.uniform(-15.0, 15.0)),
                        pitch_deg=float(rng.uniform(-50.0, -15.0)), hfov_deg=float(rng.uniform(35.0, 55.0)))
        yaw, half_fov = math.radians(camera.yaw_deg), math.radians(camera.hfov_deg) / 2.0
        for _ in range(int(rng.integers(4, 12))):
            dist = rng.uniform(0.3, back - 0.1)
            ang = yaw + rng.uniform(-1.0, 1.0) * half_fov * 0.9
            x, z = -math.sin(ang) * dist, -math.cos(ang) * dist
            if rng.random() < 0.5:
                w, d, h = rng.uniform(0.04, 0.25, size=3) * (1.0, 1.0, 1.6)
                prims.append(Box((x - w / 2, 0.0, z - d / 2), (x + w / 2, h, z + d / 2), _new_texture(rng, (0.01, 0.06))))
            else:
                r = rng.uniform(0.02, 0.12)
                prims.append(Sphere((x, r, z), r, _new_texture(rng, (0.01, 0.05))))
        light = Light(_direction(rng, (35.0, 80.0)), float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.2, 0.4)),
                      _tinted(rng, rng.uniform(0.1, 0.5)))
        return Scene(prims, light, tuple(float(c) for c in rng.uniform(0.3, 0.9, size=3))), camera


class Mixture(SceneDomain):
    """Each sample from one of ``domains`` (all four by default), drawn with ``weights``.

    Args:
        domains: the domains to mix.
        weights: relative frequency of each (equal by default).
    """

    def __init__(self, domains: list[SceneDomain] | None = None, weights: list[float] | None = None) -> None:
        self.domains = list(domains) if domains is not None else [Rooms(), LitRooms(), Outdoor(), Tabletop()]
        weights = [1.0] * len(self.domains) if weights is None else list(weights)
        if len(weights) != len(self.domains) or not self.domains or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"Mixture needs one non-negative weight per domain, got {weights} for {self.domains}")
        self.probabilities = np.asarray(weights, dtype=np.float64) / sum(weights)

    @property
    def name(self) -> str:
        return "mixture-" + "-".join(d.name for d in self.domains)

    def sample(self, rng: np.random.Generator) -> tuple[Scene, Camera]:
        domain = self.domains[int(rng.choice(len(self.domains), p=self.probabilities))]
        return domain.sample(rng)

    def __repr__(self) -> str:
        return f"Mixture({self.domains!r}, weights={self.probabilities.round(4).tolist()})"

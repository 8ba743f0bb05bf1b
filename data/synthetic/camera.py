"""Cameras of a drive: pinhole frames and equirectangular panoramas over one world frame
(X right of the street's direction, Y up, Z along the street; metres)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data.synthetic.plan import STEP_M
from data.synthetic.sessions import LANE_X, Session


def _rotation(yaw: float) -> np.ndarray:
    """Camera-to-world rotation: yaw turns right about Y."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass(frozen=True, eq=False)
class Camera:
    """A level camera: it turns (yaw) but never tilts, so that a ray's horizontal direction
    depends on its column only and its slope on its row only; the background is then cast per
    column and per row instead of per pixel. Pinhole frames move the horizon by shifting the
    principal point (`centre_y`) instead of pitching."""

    width: int
    height: int
    panorama: bool
    position: np.ndarray  # world
    rotation: np.ndarray  # camera -> world
    focal: float  # pinhole frames
    centre_y: float  # pinhole frames: the horizon's row

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """World horizontal direction (x, z) of each column's rays, float32 (W,) each."""
        u = np.arange(self.width, dtype=np.float64) + 0.5
        if self.panorama:
            lon = (u / self.width - 0.5) * 2 * np.pi
            x, z = np.sin(lon), np.cos(lon)
        else:
            x, z = (u - self.width / 2) / self.focal, np.ones_like(u)
        r = self.rotation
        world_x, world_z = r[0, 0] * x + r[0, 2] * z, r[2, 0] * x + r[2, 2] * z
        return world_x.astype(np.float32), world_z.astype(np.float32)

    def rises(self) -> np.ndarray:
        """Height gained per unit of a row's rays' horizontal travel (per `columns` vector),
        float32 (H,), decreasing down the image."""
        v = np.arange(self.height, dtype=np.float64) + 0.5
        if self.panorama:
            return np.tan((0.5 - v / self.height) * np.pi).astype(np.float32)
        return (-(v - self.centre_y) / self.focal).astype(np.float32)

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(points) - self.position) @ self.rotation

    def longitude(self, point: np.ndarray) -> float:
        x, _, z = self.to_camera(point)[0]
        return math.atan2(x, z)

    def project(self, points: np.ndarray, lon_ref: float = 0.0) -> np.ndarray:
        """Pixel coordinates (N, 2) of world points; in panoramas longitudes are unwrapped
        around `lon_ref`, so one object's points stay together across the seam."""
        p = self.to_camera(points)
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        if self.panorama:
            lon = np.arctan2(x, z)
            lon = lon_ref + (lon - lon_ref + np.pi) % (2 * np.pi) - np.pi
            lat = np.arctan2(y, np.hypot(x, z))
            return np.stack(
                [(lon / (2 * np.pi) + 0.5) * self.width, (0.5 - lat / np.pi) * self.height], axis=1
            )
        return np.stack(
            [self.width / 2 + self.focal * x / z, self.centre_y - self.focal * y / z], axis=1
        )

    def ray(self, u: float, v: float) -> np.ndarray:
        """World direction through pixel (u, v) of a pinhole frame, with unit depth."""
        d = np.array([(u - self.width / 2) / self.focal, -(v - self.centre_y) / self.focal, 1.0])
        return self.rotation @ d

    def in_front(self, points: np.ndarray, near: float) -> bool:
        """Whether a pinhole camera can project the points (panoramas see everything)."""
        return self.panorama or bool((self.to_camera(points)[:, 2] > near).all())


def make_camera(session: Session, frame: int, rng: np.random.Generator) -> Camera:
    position = np.array(
        [
            LANE_X + rng.normal(0.0, 0.12),
            session.camera_height,
            frame * STEP_M + rng.uniform(-1.5, 1.5),
        ]
    )
    return Camera(
        width=session.width,
        height=session.height,
        panorama=session.panorama,
        position=position,
        rotation=_rotation(rng.normal(0.0, 0.04)),
        focal=session.focal,
        centre_y=session.height * (session.horizon + rng.normal(0.0, 0.012)),
    )

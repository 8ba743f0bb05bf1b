"""Capture sessions: the street a drive goes down (its buildings, ground and sky), its
camera, its day and place."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from data.config import SyntheticConfig
from data.synthetic.plan import SESSION_STREAM, STEP_M, is_panorama, stream_rng

HALF_WIDTH = 7.0  # building line, metres from the street's centre line
ROAD_HALF = 3.9  # kerb
KERB = 4.1
LANE_X = 1.6  # centre of the right-hand lane: where the camera drives

_FACADE_PALETTE = np.array(
    [
        (214, 196, 160),
        (232, 220, 196),
        (190, 186, 178),
        (176, 98, 72),
        (150, 72, 58),
        (196, 206, 214),
        (206, 164, 96),
        (160, 160, 150),
        (226, 206, 170),
        (120, 116, 112),
    ],
    np.float32,
)
_CITIES = [(48.8566, 2.3522), (52.5200, 13.4050), (52.3676, 4.9041), (45.7640, 4.8357)]


# The right side's segments are keyed at Z + this, so that one sorted table serves both sides.
RIGHT_SIDE = 4096.0


@dataclass(frozen=True, eq=False)
class _Buildings:
    """Buildings along both sides of the street, as segments along it (float32 arrays)."""

    starts: np.ndarray  # left side: Z; right side: Z + RIGHT_SIDE
    lengths: np.ndarray
    heights: np.ndarray  # 0: a gap (a side street or a square)
    spacing: np.ndarray  # window pitch along the street
    storey: np.ndarray  # storey height
    wall: np.ndarray  # palette index of the wall colour
    glass: np.ndarray  # palette index of the glass colour


@dataclass(frozen=True, eq=False)
class Session:
    index: int
    panorama: bool
    width: int
    height: int
    camera_height: float
    focal: float  # pinhole frames, pixels
    horizon: float  # pinhole frames: the horizon's row, as a share of the height
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    buildings: _Buildings
    palette: np.ndarray  # (n, 3) float32: ground materials, then wall and glass colours
    crossings: np.ndarray  # zebra crossings along the street (Z)
    texture_seed: int
    start: datetime
    origin: tuple[float, float] | None  # GPS of the street's Z = 0; None: no GPS fix
    bearing: float  # compass direction of +Z, radians


def _buildings(
    rng: np.random.Generator, z_from: float, z_to: float, first_colour: int
) -> tuple[_Buildings, np.ndarray]:
    """Both sides of a street from z_from to z_to, and their colours (wall colours first, then
    glass) numbered from `first_colour` in the session's palette."""
    edges = []
    for side in (0.0, RIGHT_SIDE):
        z = [z_from]
        while z[-1] < z_to:
            z.append(z[-1] + rng.uniform(8.0, 26.0))
        edges.append(np.array(z) + side)
    starts = np.concatenate([e[:-1] for e in edges])
    n = len(starts)
    heights = rng.uniform(7.0, 28.0, n)
    heights[rng.random(n) < 0.08] = 0.0
    walls = _FACADE_PALETTE[rng.integers(0, len(_FACADE_PALETTE), n)]
    walls = walls * rng.uniform(0.8, 1.08, (n, 1))
    glass = np.array([60, 72, 84]) * rng.uniform(0.6, 1.4, (n, 1))
    f32 = np.float32
    buildings = _Buildings(
        starts=starts.astype(f32),
        lengths=np.concatenate([np.diff(e) for e in edges]).astype(f32),
        heights=heights.astype(f32),
        spacing=rng.uniform(2.2, 3.4, n).astype(f32),
        storey=rng.uniform(2.9, 3.6, n).astype(f32),
        wall=first_colour + np.arange(n, dtype=np.int32),
        glass=first_colour + n + np.arange(n, dtype=np.int32),
    )
    return buildings, np.concatenate([walls, glass])


def make_session(cfg: SyntheticConfig, index: int) -> Session:
    rng = stream_rng(cfg, SESSION_STREAM, index)
    panorama = is_panorama(cfg, index)
    width, height = (
        (cfg.panorama_width, cfg.panorama_width // 2) if panorama else (cfg.width, cfg.height)
    )
    length = cfg.frames_per_session * STEP_M
    overcast = rng.random() < 0.3
    sky_top = (
        np.array([150, 156, 164], np.float32)
        if overcast
        else np.array([rng.uniform(60, 110), rng.uniform(120, 160), rng.uniform(195, 235)])
    )
    sky_horizon = np.array([rng.uniform(195, 215), rng.uniform(205, 222), rng.uniform(220, 236)])
    city = _CITIES[int(rng.integers(0, len(_CITIES)))]
    origin = (city[0] + rng.uniform(-0.05, 0.05), city[1] + rng.uniform(-0.05, 0.05))
    day = datetime(2024, 3, 1) + timedelta(days=int(rng.integers(0, 300)))
    start = day + timedelta(seconds=int(rng.integers(8 * 3600, 17 * 3600)))
    asphalt = rng.uniform(70, 100) * np.array([1.0, 1.0, 1.04])
    ground = np.array([asphalt, [rng.uniform(150, 185)] * 3, (196, 196, 192), (226, 226, 218)])
    buildings, colours = _buildings(rng, -600.0, length + 600.0, len(ground))
    return Session(
        index=index,
        panorama=panorama,
        width=width,
        height=height,
        camera_height=rng.uniform(2.3, 2.6) if panorama else rng.uniform(1.35, 1.6),
        focal=width * rng.uniform(0.8, 0.95),
        horizon=rng.uniform(0.44, 0.56),
        sky_top=sky_top.astype(np.float32),
        sky_horizon=sky_horizon.astype(np.float32),
        buildings=buildings,
        palette=np.concatenate([ground, colours]).astype(np.float32),
        crossings=np.sort(rng.uniform(-150.0, length + 150.0, 4)),
        texture_seed=int(rng.integers(0, 2**31)),
        start=start,
        # Some drives have no GPS fix (a phone with location off, an urban canyon).
        origin=None if rng.random() < 0.25 else origin,
        bearing=rng.uniform(0, 2 * math.pi),
    )

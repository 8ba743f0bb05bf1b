"""The empty street (sky, facades with windows, road with lane marks), ray cast per pixel."""

from __future__ import annotations

import cv2
import numpy as np

from data.synthetic.camera import Camera
from data.synthetic.sessions import HALF_WIDTH, KERB, RIGHT_SIDE, ROAD_HALF, Session


def _hash01(seed: int, *coords: np.ndarray) -> np.ndarray:
    """A uniform [0, 1) value per integer lattice point: texture that stays put in the world.

    Coordinates (integral floats or ints) broadcast against each other.
    """
    h = np.uint32(seed & 0xFFFFFFFF)
    for c, prime in zip(coords, (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D), strict=False):
        h = h + np.asarray(c).astype(np.int32).view(np.uint32) * np.uint32(prime)
    h = np.asarray(h, np.uint32)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(2**-24)


def cast_background(session: Session, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """The empty street as float32 RGB (H, W, 3), and the windows that are lit at night.

    Each pixel gets a colour from the session's palette and a brightness, then haze by
    distance along the ground; whatever no ray hits is sky.
    """
    f32 = np.float32
    hx, hz = camera.columns()
    rise = camera.rises()
    x0, y0, z0 = (f32(c) for c in camera.position)
    reach = np.hypot(hx, hz)  # ground distance per unit of ray parameter
    width = camera.width
    index = np.zeros((camera.height, width), np.int32)
    shade = np.ones((camera.height, width), f32)
    dist = np.full((camera.height, width), np.inf, f32)
    lit = np.zeros((camera.height, width), bool)
    # The building lines: each column's rays meet one at the same point along the street.
    b = session.buildings
    right = hx > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (np.where(right, f32(HALF_WIDTH), f32(-HALF_WIDTH)) - x0) / hx
        key = z0 + t * hz + right * f32(RIGHT_SIDE)
    seg = np.clip(np.searchsorted(b.starts, key, side="right") - 1, 0, len(b.starts) - 1)
    seg[~np.isfinite(t)] = 0
    t[~np.isfinite(t)] = 0.0  # a ray along the street: no wall
    y = y0 + t * rise[:, None]
    hits = np.flatnonzero((y >= 0) & (y <= b.heights[seg]) & (t > 0))
    cols = hits % width
    # Flat views: writing through them fills the (H, W) arrays.
    flat_index, flat_shade, flat_dist = index.reshape(-1), shade.reshape(-1), dist.reshape(-1)
    flat_index[hits], flat_shade[hits], lit.reshape(-1)[hits] = _facade(
        session, seg[cols], (key - b.starts[seg])[cols], y.reshape(-1)[hits]
    )
    flat_dist[hits] = (t * reach)[cols]
    # The ground, below the horizon (rows whose rays descend) where no wall stands.
    low = int(np.searchsorted(-rise, 0.0, side="right"))
    hits = np.flatnonzero(np.isinf(dist[low:])) + low * width
    rows, cols = np.divmod(hits, width)
    t = y0 / -rise[rows]
    flat_index[hits], flat_shade[hits] = _ground(session, x0 + t * hx[cols], z0 + t * hz[cols])
    flat_dist[hits] = t * reach[cols]
    # Colour, haze, and sky where nothing was hit.
    keep = np.exp(dist * f32(-1 / 220))
    fade, mist = shade * keep, f32(1) - keep
    haze = session.sky_horizon * f32(0.92)
    planes = [session.palette[:, c][index] * fade + haze[c] * mist for c in range(3)]
    sky = np.isinf(dist[:low])  # rays that rise and pass over every roof
    up = np.sqrt(np.clip(rise[:low, None] / np.hypot(rise[:low, None], reach), 0, 1))
    for c in range(3):
        lo, hi = session.sky_horizon[c], session.sky_top[c]
        planes[c][:low] = np.where(sky, lo + (hi - lo) * up, planes[c][:low])
    return cv2.merge(planes), lit


def _facade(
    session: Session, seg: np.ndarray, u: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Palette index, brightness and night light of facade points: segment, distance along the
    building, height."""
    b = session.buildings
    length, height = b.lengths[seg], b.heights[seg]
    inside = (u > 0.7) & (u < length - 0.7)
    shade = 0.94 + 0.12 * _hash01(session.texture_seed, np.floor(u * 12), np.floor(y * 12))
    # Upper storeys: a grid of windows, one random shade (and night light) per window.
    spacing, storey = b.spacing[seg], b.storey[seg]
    column = np.floor(u / spacing)
    in_column = inside & (np.abs(u - column * spacing - spacing / 2) < 0.3 * spacing)
    row = np.floor((y - 3.6) / storey)
    in_row = (y > 3.6) & (y < height - 1.2) & (y - 3.6 - row * storey > 0.9)
    window = in_column & in_row & (y - 3.6 - row * storey < 2.4)
    # Ground floor: shop windows.
    along = _frac(u / 4.0) * 4.0
    shop = (inside & (along > 0.5) & (along < 3.5)) & (y > 0.5) & (y < 2.9)
    which = _hash01(session.texture_seed + 7, seg, column, np.where(shop, -1, row))
    glass = window | shop
    index = np.where(glass, b.glass[seg], b.wall[seg])
    shade = np.where(glass, 0.65 + 0.7 * which, shade)
    shade = np.where((y > height - 0.5) | (u < 0.15), shade * 0.78, shade)  # cornice, edge
    return index, shade.astype(np.float32), window & (which > 0.7)


_ASPHALT, _PAVING, _KERBSTONE, _MARKING = range(4)  # the first entries of a session's palette


def _ground(session: Session, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Palette index and brightness of ground points."""
    ax = np.abs(x)
    index = np.full(x.shape, _ASPHALT, np.int32)
    index[ax > ROAD_HALF] = _KERBSTONE
    paving = ax > KERB
    index[paving] = _PAVING
    shade = 0.86 + 0.28 * _hash01(session.texture_seed + 3, np.floor(x * 14), np.floor(z * 14))
    shade[paving & ((_frac(x / 0.6) < 0.07) | (_frac(z / 0.6) < 0.07))] *= 0.8  # tile joints
    marking = (ax < 0.07) & (_frac(z / 9.0) < 0.39)  # dashed centre line
    marking |= np.abs(ax - (ROAD_HALF - 0.35)) < 0.06  # lane edges
    to_crossing = np.full(x.shape, np.inf, np.float32)
    for at in session.crossings:
        np.minimum(to_crossing, np.abs(z - np.float32(at)), out=to_crossing)
    marking |= (to_crossing < 2.0) & (ax < ROAD_HALF - 0.2) & (_frac(x) < 0.5)  # zebra
    index[marking] = _MARKING
    return index, shade


def _frac(a: np.ndarray) -> np.ndarray:
    # Several times faster than np.mod, and the same for a positive period.
    return a - np.floor(a)

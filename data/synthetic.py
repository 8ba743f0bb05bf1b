"""The built-in `synthetic` image source: seeded street scenes with exact ground truth.

`generate(cfg)` yields street-level frames and 2:1 equirectangular panoramas with faces,
persons, license plates and vehicles at every size, occluding one another, each with the exact
pixels it covers, so that every stage runs offline on known answers; `labelstudio_task` writes
that ground truth as a Label Studio export, as if annotators had labelled the image.

Image `i` depends on (`seed`, `i`) and the shares only, never on `count`: raising `count` only
appends images, and `generate_one(cfg, i)` makes image `i` alone. Consecutive indices form
capture sessions ("drives") of `frames_per_session` frames: one street, camera and day. Each
frame's `kind` says what review should make of it: `normal`; `empty` (no objects);
`near_duplicate` (the previous frame again, as a stopped vehicle takes it: shifted a pixel or
two, a touch darker and softer so that review keeps the original); `dark`; `blurry`.

Conventions:
- Pixel (row r, column c) covers [c, c+1) x [r, r+1) in continuous coordinates; ellipses,
  rectangles and keypoints use them, and a shape holds the pixels whose centres it contains.
  Angles are degrees, clockwise in the image.
- `mask` holds the visible pixels; `amodal_mask` every pixel the object covers, hidden or not;
  `depth` is its distance along the ground (nearer objects hide farther ones). A face belongs to
  its person and a plate to its vehicle (`parent_id`), so their masks are subsets of their
  parent's. Objects whose largest visible piece is under 4 pixels are left out.
- Keypoints follow COCO: v=0 outside the image (stored as 0, 0), 1 labelled but hidden (behind
  the head or another object), 2 visible; `left_eye` is the person's own left eye.
- Panorama columns wrap: an object across the left-right seam has pixels at both ends, and its
  ellipse or rectangle centre may lie outside [0, width).

Label Studio regions (all on `image`): faces are ellipses (`ellipse`); persons and vehicles are
polygons (`polygon`) traced from the visible mask, one per connected piece of at least 4
pixels, vertices at the centres of its boundary pixels; plates are rotated rectangles
(`rectangle`); head keypoints with v > 0 are `keypoint` regions. An object drawn as several
regions (pieces split by the seam or by an occluder; a face or plate drawn once on each side of
the seam; a person's keypoints) stays one object: its first region is linked to each other one
by a relation `{"type": "relation", "labels": ["same_object"], "direction": "bi"}`, and a
converter rebuilds objects as the groups these relations connect.
"""

from __future__ import annotations

import dataclasses
import io
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import cv2
import numpy as np
from PIL import ExifTags, Image

from data.config import SyntheticConfig

CLASSES = ("face", "person", "license_plate", "vehicle")
KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
KINDS = ("normal", "empty", "near_duplicate", "dark", "blurry")
SAME_OBJECT = "same_object"

_GOLDEN = 0.6180339887498949
_FRAME_SECONDS = 2.0  # between consecutive frames of a drive
_STEP_M = 12.0  # distance driven between consecutive frames
# Objects smaller than this (largest 8-connected visible piece, in pixels) are not annotated:
# an annotator cannot see them, and Label Studio cannot draw them.
_MIN_PIECE = 4

# Random streams: every draw is seeded from (seed, stream, n), so no image depends on another.
_FRAME_STREAM, _SESSION_STREAM, _KIND_STREAM, _PANORAMA_STREAM = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, eq=False)
class _Patch:
    """A mask kept as its bounding rows and columns only; columns wrap in panoramas."""

    top: int
    left: int  # may lie outside [0, width) in panoramas
    crop: np.ndarray
    width: int
    height: int

    def full(self) -> np.ndarray:
        out = np.zeros((self.height, self.width), bool)
        rows = slice(self.top, self.top + self.crop.shape[0])
        for frame_cols, crop_cols in _column_runs(self.left, self.crop.shape[1], self.width):
            out[rows, frame_cols] = self.crop[:, crop_cols]
        return out

    def shifted(self, dx: int, dy: int, wrap: bool) -> _Patch:
        if wrap:
            return _Patch(self.top, self.left + dx, self.crop, self.width, self.height)
        full = _shift(self.full(), dx, dy, wrap=False)
        return _Patch(0, 0, full, self.width, self.height)


def _column_runs(left: int, count: int, width: int) -> list[tuple[slice, slice]]:
    """(frame columns, canvas columns) of a canvas `count` columns wide placed at `left`, its
    columns wrapped at `width`: one run, or two when it crosses a panorama's seam."""
    start = left % width
    first = min(count, width - start)
    runs = [(slice(start, start + first), slice(0, first))]
    if first < count:
        runs.append((slice(0, count - first), slice(first, count)))
    return runs


@dataclass(frozen=True, eq=False)
class SyntheticObject:
    """One object of the ground truth, in the pixel coordinates of its image."""

    label: str  # face | person | license_plate | vehicle
    mask: np.ndarray  # bool HxW, the visible pixels
    instance_id: int  # unique within the image
    keypoints: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # persons
    text: str | None = None  # license plates: the characters drawn on it
    parent_id: int | None = None  # a face's person, a plate's vehicle
    depth: float = 0.0  # metres from the camera, along the ground
    ellipse: tuple[float, float, float, float, float] | None = None  # face: cx, cy, rx, ry, deg
    rect: tuple[float, float, float, float, float] | None = None  # plate: cx, cy, w, h, deg
    amodal: _Patch | None = field(default=None, repr=False)

    @property
    def amodal_mask(self) -> np.ndarray:
        """Every pixel the object covers, including those hidden by nearer objects."""
        return self.mask.copy() if self.amodal is None else self.amodal.full()


@dataclass(eq=False)
class SyntheticImage:
    index: int
    name: str  # stable relative name: drive-003/frame-0005.jpg
    session: str  # capture session: synthetic-drive-003
    image: np.ndarray  # HxWx3 uint8 RGB
    objects: list[SyntheticObject]
    panorama: bool
    kind: str  # one of KINDS
    captured_at: datetime  # local time, as a camera writes it
    gps: tuple[float, float] | None  # (lat, lon)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def encode(self, quality: int = 92) -> bytes:
        """JPEG bytes with the metadata a camera writes: capture time, orientation, GPS.

        Panoramas also carry the GPano XMP block that marks an equirectangular image.
        """
        stamp = self.captured_at.strftime("%Y:%m:%d %H:%M:%S")
        exif = Image.Exif()
        exif[ExifTags.Base.Make] = "anonlab"
        exif[ExifTags.Base.Model] = "synthetic 360" if self.panorama else "synthetic"
        exif[ExifTags.Base.Orientation] = 1
        exif[ExifTags.Base.DateTime] = stamp
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = stamp
        if self.gps is not None:
            lat, lon = self.gps
            gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
            gps[ExifTags.GPS.GPSVersionID] = b"\x02\x03\x00\x00"
            gps[ExifTags.GPS.GPSLatitudeRef] = "N" if lat >= 0 else "S"
            gps[ExifTags.GPS.GPSLatitude] = _dms(lat)
            gps[ExifTags.GPS.GPSLongitudeRef] = "E" if lon >= 0 else "W"
            gps[ExifTags.GPS.GPSLongitude] = _dms(lon)
        options: dict[str, Any] = {"quality": quality, "exif": exif}
        if self.panorama:
            options["xmp"] = _gpano(self.width, self.height)
        out = io.BytesIO()
        Image.fromarray(self.image).save(out, "JPEG", **options)
        return out.getvalue()


def _dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    degrees = math.floor(value)
    minutes = math.floor((value - degrees) * 60)
    seconds = round((value - degrees - minutes / 60) * 3600, 4)
    return (float(degrees), float(minutes), seconds)


def _gpano(width: int, height: int) -> bytes:
    fields = {
        "ProjectionType": "equirectangular",
        "UsePanoramaViewer": "True",
        "FullPanoWidthPixels": width,
        "FullPanoHeightPixels": height,
        "CroppedAreaImageWidthPixels": width,
        "CroppedAreaImageHeightPixels": height,
        "CroppedAreaLeftPixels": 0,
        "CroppedAreaTopPixels": 0,
    }
    attrs = " ".join(f'GPano:{k}="{v}"' for k, v in fields.items())
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:GPano="http://ns.google.com/photos/1.0/panorama/" '
        f"{attrs}/></rdf:RDF></x:xmpmeta>"
    ).encode()


# ---------------------------------------------------------------------------------------------
# Public entry points


def generate(cfg: SyntheticConfig) -> Iterator[SyntheticImage]:
    """Yield `cfg.count` images, one at a time."""
    previous: SyntheticImage | None = None
    for index in range(cfg.count):
        previous = _build(cfg, index, previous)
        yield previous


def generate_one(cfg: SyntheticConfig, index: int) -> SyntheticImage:
    """Image `index` alone: the same as the one `generate` yields at that position."""
    if index < 0:
        raise ValueError(f"image index must be >= 0, got {index}")
    return _build(cfg, index, None)


def _build(cfg: SyntheticConfig, index: int, previous: SyntheticImage | None) -> SyntheticImage:
    plan = _plan(cfg, index)
    if plan.kind != "near_duplicate":
        return _render(cfg, plan)
    if previous is None or previous.index != index - 1:
        previous = generate_one(cfg, index - 1)
    return _near_duplicate(cfg, plan, previous)


# ---------------------------------------------------------------------------------------------
# The plan: which session, frame and kind an index is


@dataclass(frozen=True)
class _Plan:
    index: int
    session: int
    frame: int
    kind: str
    panorama: bool


def _entropy(seed: int) -> int:
    # SeedSequence takes non-negative integers only; config seeds may be negative.
    return seed % 2**64


def _rng(cfg: SyntheticConfig, stream: int, n: int) -> np.random.Generator:
    return np.random.default_rng([_entropy(cfg.seed), stream, n])


def _weyl(cfg: SyntheticConfig, stream: int, n: int) -> float:
    # A golden-ratio sequence: shares hold closely over any prefix of indices (little binomial
    # noise for small counts), and element n needs nothing but n.
    offset = np.random.default_rng([_entropy(cfg.seed), stream]).random()
    return float((offset + n * _GOLDEN) % 1.0)


def _plan(cfg: SyntheticConfig, index: int) -> _Plan:
    session, frame = divmod(index, cfg.frames_per_session)
    return _Plan(
        index=index,
        session=session,
        frame=frame,
        kind=_kind(cfg, index),
        panorama=_is_panorama(cfg, session),
    )


def _is_panorama(cfg: SyntheticConfig, session: int) -> bool:
    # Whole drives are panoramic: one camera per drive.
    return _weyl(cfg, _PANORAMA_STREAM, session) < cfg.panorama_share


def _raw_kind(cfg: SyntheticConfig, index: int) -> str:
    frames = cfg.frames_per_session
    # The first frame of a drive has nothing to repeat; the others carry its share instead.
    duplicate = 0.0 if frames == 1 else cfg.near_duplicate_share * frames / (frames - 1)
    shares = [("empty", cfg.empty_share), ("dark", cfg.dark_share), ("blurry", cfg.blurry_share)]
    total = duplicate + sum(share for _, share in shares)
    scale = 1.0 / total if total > 1.0 else 1.0
    u = _weyl(cfg, _KIND_STREAM, index)
    edge = 0.0
    for kind, share in shares:
        edge += share * scale
        if u < edge:
            return kind
    # Near-duplicates take the top of the unit interval, so that first frames (which cannot be
    # one) leave every other kind its share.
    if u >= 1.0 - duplicate * scale and index % frames != 0:
        return "near_duplicate"
    return "normal"


def _kind(cfg: SyntheticConfig, index: int) -> str:
    kind = _raw_kind(cfg, index)
    # Repeating a dark or blurred frame would make the pair ambiguous for review (which reason
    # rejects it?); a stopped vehicle repeating such a frame is drawn as an ordinary frame.
    if kind == "near_duplicate" and _raw_kind(cfg, index - 1) in ("dark", "blurry"):
        return "normal"
    return kind


# ---------------------------------------------------------------------------------------------
# Sessions: the street a drive goes down, its light, its camera, its day and place

_HALF_WIDTH = 7.0  # building line, metres from the street's centre line
_ROAD_HALF = 3.9  # kerb
_KERB = 4.1
_LANE_X = 1.6  # centre of the right-hand lane: where the camera drives

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
_RIGHT_SIDE = 4096.0


@dataclass(frozen=True, eq=False)
class _Buildings:
    """Buildings along both sides of the street, as segments along it (float32 arrays)."""

    starts: np.ndarray  # left side: Z; right side: Z + _RIGHT_SIDE
    lengths: np.ndarray
    heights: np.ndarray  # 0: a gap (a side street or a square)
    spacing: np.ndarray  # window pitch along the street
    storey: np.ndarray  # storey height
    wall: np.ndarray  # palette index of the wall colour
    glass: np.ndarray  # palette index of the glass colour


@dataclass(frozen=True, eq=False)
class _Session:
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
    for side in (0.0, _RIGHT_SIDE):
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


def _session(cfg: SyntheticConfig, index: int) -> _Session:
    rng = _rng(cfg, _SESSION_STREAM, index)
    panorama = _is_panorama(cfg, index)
    width, height = (
        (cfg.panorama_width, cfg.panorama_width // 2) if panorama else (cfg.width, cfg.height)
    )
    length = cfg.frames_per_session * _STEP_M
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
    return _Session(
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


# ---------------------------------------------------------------------------------------------
# Camera: pinhole frames and equirectangular panoramas over one world frame
# (X right of the street's direction, Y up, Z along the street; metres)


def _rotation(yaw: float) -> np.ndarray:
    """Camera-to-world rotation: yaw turns right about Y."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass(frozen=True, eq=False)
class _Camera:
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


def _camera(session: _Session, frame: int, rng: np.random.Generator) -> _Camera:
    position = np.array(
        [
            _LANE_X + rng.normal(0.0, 0.12),
            session.camera_height,
            frame * _STEP_M + rng.uniform(-1.5, 1.5),
        ]
    )
    return _Camera(
        width=session.width,
        height=session.height,
        panorama=session.panorama,
        position=position,
        rotation=_rotation(rng.normal(0.0, 0.04)),
        focal=session.focal,
        centre_y=session.height * (session.horizon + rng.normal(0.0, 0.012)),
    )


# ---------------------------------------------------------------------------------------------
# Background: sky, facades with windows, road with lane marks; ray cast per pixel


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


def _background(session: _Session, camera: _Camera) -> tuple[np.ndarray, np.ndarray]:
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
        t = (np.where(right, f32(_HALF_WIDTH), f32(-_HALF_WIDTH)) - x0) / hx
        key = z0 + t * hz + right * f32(_RIGHT_SIDE)
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
    session: _Session, seg: np.ndarray, u: np.ndarray, y: np.ndarray
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


def _ground(session: _Session, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Palette index and brightness of ground points."""
    ax = np.abs(x)
    index = np.full(x.shape, _ASPHALT, np.int32)
    index[ax > _ROAD_HALF] = _KERBSTONE
    paving = ax > _KERB
    index[paving] = _PAVING
    shade = 0.86 + 0.28 * _hash01(session.texture_seed + 3, np.floor(x * 14), np.floor(z * 14))
    shade[paving & ((_frac(x / 0.6) < 0.07) | (_frac(z / 0.6) < 0.07))] *= 0.8  # tile joints
    marking = (ax < 0.07) & (_frac(z / 9.0) < 0.39)  # dashed centre line
    marking |= np.abs(ax - (_ROAD_HALF - 0.35)) < 0.06  # lane edges
    to_crossing = np.full(x.shape, np.inf, np.float32)
    for at in session.crossings:
        np.minimum(to_crossing, np.abs(z - np.float32(at)), out=to_crossing)
    marking |= (to_crossing < 2.0) & (ax < _ROAD_HALF - 0.2) & (_frac(x) < 0.5)  # zebra
    index[marking] = _MARKING
    return index, shade


def _frac(a: np.ndarray) -> np.ndarray:
    # Several times faster than np.mod, and the same for a positive period.
    return a - np.floor(a)


# ---------------------------------------------------------------------------------------------
# Objects: what stands in the street

_SKIN = np.array(
    [(241, 194, 167), (224, 172, 138), (198, 134, 102), (161, 102, 74), (112, 72, 52)], np.float32
)
_HAIR = np.array(
    [(30, 25, 20), (70, 45, 30), (120, 85, 50), (200, 170, 110), (150, 150, 150)], np.float32
)
_CAR_PAINT = np.array(
    [
        (200, 200, 205),
        (30, 30, 35),
        (140, 20, 25),
        (20, 50, 120),
        (235, 235, 235),
        (90, 95, 100),
        (40, 90, 60),
        (170, 150, 110),
    ],
    np.float32,
)
_PLATE_PATTERNS = ("LL-DDD-LL", "LLL DDDD", "LL DD LLL", "DLLL DDD")
_PLATE_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"

# Part codes in an object's canvas (0: nothing drawn).
_TROUSERS, _SHOES, _SHIRT, _SKIN_PART, _HAIR_PART = 1, 2, 3, 4, 5
_FACE, _EYE, _MOUTH, _NOSE = 6, 7, 8, 9
_TYRE, _HUB, _SIDE, _END, _TOP, _CABIN, _GLASS, _REAR_LIGHT, _HEAD_LIGHT, _PLATE = range(10, 20)
_FACE_PARTS = (_FACE, _EYE, _MOUTH, _NOSE)
_LIGHTS = (_REAR_LIGHT, _HEAD_LIGHT)

# Head points in the head's own frame (left, up, front; metres) and how far they may turn away
# from the camera (cosine of their normal to the line of sight) and still be seen.
_HEAD_POINTS = {
    "nose": ((0.0, -0.02, 0.105), 0.15),
    # The far eye hides behind the nose well before it would leave the face.
    "left_eye": ((0.033, 0.025, 0.082), 0.3),
    "right_eye": ((-0.033, 0.025, 0.082), 0.3),
    # Ears stick out: still seen from the front, and from behind.
    "left_ear": ((0.092, 0.0, -0.01), -0.35),
    "right_ear": ((-0.092, 0.0, -0.01), -0.35),
}


@dataclass(frozen=True)
class _Person:
    x: float  # feet, world
    z: float
    height: float
    yaw: float  # radians; 0 faces the camera, pi shows the back
    roll: float  # head tilt, radians clockwise in the image
    stride: float  # -1..1
    colours: dict[int, tuple[float, float, float]]


@dataclass(frozen=True)
class _Vehicle:
    x: float  # footprint centre, world
    z: float
    heading: int  # +1 drives toward +Z, -1 toward -Z
    length: float
    width: float
    body_top: float
    cabin_top: float
    van: bool
    paint: tuple[float, float, float]
    plate_text: str
    plate_yellow: bool
    plate_size: tuple[float, float]  # metres
    plate_tilt: float  # degrees clockwise

    def footprint(self) -> tuple[float, float, float, float]:
        return (
            self.x - self.width / 2,
            self.x + self.width / 2,
            self.z - self.length / 2,
            self.z + self.length / 2,
        )


@dataclass(eq=False)
class _Layer:
    """One drawn object: its canvas (part codes and colours) placed at (left, top)."""

    label: str  # person | vehicle
    depth: float
    left: int  # may lie outside [0, width) in panoramas: columns wrap
    top: int
    parts: np.ndarray  # uint8 (h, w)
    colours: np.ndarray  # float32 (h, w, 3)
    keypoints: dict[str, tuple[float, float, bool]] = field(default_factory=dict)
    ellipse: tuple[float, float, float, float, float] | None = None
    rect: tuple[float, float, float, float, float] | None = None
    text: str | None = None

    def rows(self) -> slice:
        return slice(self.top, self.top + self.parts.shape[0])

    def runs(self, width: int) -> list[tuple[slice, slice]]:
        return _column_runs(self.left, self.parts.shape[1], width)

    def under(self, frame: np.ndarray) -> np.ndarray:
        """The part of a frame-sized array under this canvas (a copy)."""
        return np.concatenate([frame[self.rows(), f] for f, _ in self.runs(frame.shape[1])], 1)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _random_person(
    rng: np.random.Generator, x: float, z: float, yaw: float | None = None
) -> _Person:
    if yaw is None:
        pick = rng.random()
        if pick < 0.45:
            yaw = rng.normal(0.0, 0.4)
        elif pick < 0.75:
            yaw = math.pi + rng.normal(0.0, 0.4)
        else:
            yaw = rng.choice([-1, 1]) * math.pi / 2 + rng.normal(0.0, 0.3)
    height = rng.uniform(1.1, 1.45) if rng.random() < 0.12 else rng.normal(1.73, 0.08)
    skin = _SKIN[rng.integers(0, len(_SKIN))]
    shirt = rng.uniform(20, 230, 3)
    colours = {
        _TROUSERS: rng.uniform(20, 120, 3) * np.array([0.8, 0.85, 1.1]),
        _SHOES: rng.uniform(15, 60, 3),
        _SHIRT: shirt,
        _SKIN_PART: skin,
        _HAIR_PART: _HAIR[rng.integers(0, len(_HAIR))],
        _FACE: skin * 1.03,
        _EYE: np.array([40, 32, 30]),
        _MOUTH: skin * np.array([0.75, 0.5, 0.5]),
        _NOSE: skin * 0.86,
    }
    return _Person(
        x=x,
        z=z,
        height=float(np.clip(height, 1.05, 1.98)),
        yaw=float((yaw + math.pi) % (2 * math.pi) - math.pi),
        roll=float(np.clip(rng.normal(0.0, 0.08), -0.2, 0.2)),
        stride=rng.uniform(-1, 1),
        colours={k: tuple(float(c) for c in np.clip(v, 0, 255)) for k, v in colours.items()},
    )


def _plate_text(rng: np.random.Generator, pattern: str) -> str:
    return "".join(
        _PLATE_LETTERS[rng.integers(0, len(_PLATE_LETTERS))]
        if c == "L"
        else str(rng.integers(0, 10))
        if c == "D"
        else c
        for c in pattern
    )


def _random_vehicle(rng: np.random.Generator, x: float, z: float, heading: int) -> _Vehicle:
    van = rng.random() < 0.2
    us_plate = rng.random() < 0.2
    pattern = _PLATE_PATTERNS[3] if us_plate else _PLATE_PATTERNS[rng.integers(0, 3)]
    return _Vehicle(
        x=x,
        z=z,
        heading=heading,
        length=rng.uniform(4.8, 5.4) if van else rng.uniform(3.8, 4.7),
        width=rng.uniform(1.9, 2.05) if van else rng.uniform(1.7, 1.85),
        body_top=rng.uniform(1.1, 1.3) if van else rng.uniform(0.9, 1.05),
        cabin_top=rng.uniform(1.9, 2.2) if van else rng.uniform(1.38, 1.5),
        van=van,
        paint=tuple(float(c) for c in _CAR_PAINT[rng.integers(0, len(_CAR_PAINT))]),
        plate_text=_plate_text(rng, pattern),
        plate_yellow=rng.random() < 0.15,
        plate_size=(0.305, 0.152) if us_plate else (0.52, 0.11),
        # Most plates are level; some hang crooked.
        plate_tilt=0.0 if rng.random() < 0.75 else float(rng.choice([-1, 1]) * rng.uniform(2, 9)),
    )


def _footprint_distance(camera: _Camera, box: tuple[float, float, float, float]) -> float:
    x0, x1, z0, z1 = box
    cx, cz = float(camera.position[0]), float(camera.position[2])
    return math.hypot(max(x0 - cx, 0.0, cx - x1), max(z0 - cz, 0.0, cz - z1))


def _overlaps(a: tuple[float, ...], b: tuple[float, ...], margin: float) -> bool:
    return not (
        a[1] + margin < b[0] or b[1] + margin < a[0] or a[3] + margin < b[2] or b[3] + margin < a[2]
    )


def _seam_direction(camera: _Camera) -> np.ndarray:
    """World direction of a panorama's left-right seam: straight behind the camera."""
    return -camera.rotation[:, 2] * np.array([1.0, 0.0, 1.0])


def _place_vehicles(camera: _Camera, rng: np.random.Generator, seam: bool) -> list[_Vehicle]:
    cx, cz = float(camera.position[0]), float(camera.position[2])
    vehicles: list[_Vehicle] = []
    if seam:
        # A car following the camera car: on the seam, with its front plate across it.
        back = _seam_direction(camera)
        dist = rng.uniform(7.0, 13.0)
        vehicles.append(
            _random_vehicle(
                rng, cx + back[0] * dist + rng.uniform(-0.25, 0.25), cz + back[2] * dist, +1
            )
        )
    wanted = int(rng.integers(3, 9) if camera.panorama else rng.integers(1, 7))
    lanes = [(-3.1, 0), (-_LANE_X, -1), (_LANE_X, 1), (3.1, 0)]  # 0: parked either way
    for _ in range(wanted * 4):
        if len(vehicles) >= wanted + seam:
            break
        lane_x, heading = lanes[int(rng.integers(0, len(lanes)))]
        dist = _log_uniform(rng, 5.0, 70.0)
        ahead = not camera.panorama or rng.random() < 0.55
        z = cz + (dist if ahead else -dist)
        v = _random_vehicle(
            rng, lane_x + rng.normal(0.0, 0.1), z, heading or int(rng.choice([-1, 1]))
        )
        box = v.footprint()
        if _footprint_distance(camera, box) < 3.5:
            continue
        if any(_overlaps(box, other.footprint(), 0.8) for other in vehicles):
            continue
        if not camera.panorama and not _in_view(camera, np.array([v.x, 0.8, v.z]), 0.0):
            continue
        vehicles.append(v)
    return vehicles


def _in_view(camera: _Camera, point: np.ndarray, margin: float) -> bool:
    if not camera.in_front(point, 0.3):
        return False
    u = camera.project(point)[0, 0]
    return -margin * camera.width <= u <= (1 + margin) * camera.width


def _place_persons(
    camera: _Camera, rng: np.random.Generator, vehicles: list[_Vehicle], seam: bool
) -> list[_Person]:
    cx, cz = float(camera.position[0]), float(camera.position[2])
    boxes = [v.footprint() for v in vehicles]
    persons: list[_Person] = []

    def free(x: float, z: float) -> bool:
        spot = (x - 0.25, x + 0.25, z - 0.25, z + 0.25)
        return not any(_overlaps(spot, box, 0.2) for box in boxes) and not any(
            abs(p.x - x) < 0.45 and abs(p.z - z) < 0.45 for p in persons
        )

    if seam:
        # Someone standing right behind the camera car, across the seam.
        back = _seam_direction(camera)
        dist = rng.uniform(3.5, 7.0)
        persons.append(_random_person(rng, cx + back[0] * dist, cz + back[2] * dist))
    if not camera.panorama and rng.random() < 0.5:
        persons.append(_close_up(camera, rng))
    wanted = int(rng.integers(3, 11) if camera.panorama else rng.integers(1, 9))
    for _ in range(wanted * 4):
        if len(persons) >= wanted:
            break
        if rng.random() < 0.78:
            x = float(rng.choice([-1, 1]) * rng.uniform(_KERB + 0.2, _HALF_WIDTH - 0.3))
            dist = _log_uniform(rng, 2.5, 60.0)
        else:  # crossing the road
            x = rng.uniform(-_ROAD_HALF + 0.3, _ROAD_HALF - 0.3)
            dist = _log_uniform(rng, 3.0, 30.0)
        z = cz + (dist if (not camera.panorama or rng.random() < 0.5) else -dist)
        if math.hypot(x - cx, z - cz) < 2.2 or not free(x, z):
            continue
        if not camera.panorama and not _in_view(camera, np.array([x, 1.5, z]), 0.05):
            continue
        persons.append(_random_person(rng, x, z))
        if rng.random() < 0.3:  # walking together: one partly hides the other
            x2, z2 = x + rng.uniform(-0.6, 0.6), z + rng.uniform(0.6, 2.0)
            if free(x2, z2):
                persons.append(_random_person(rng, x2, z2))
    # People just behind or in front of cars, so that cars hide people and people hide cars.
    for v in vehicles:
        if rng.random() < 0.35:
            _, _, z0, z1 = v.footprint()
            near, far = (z0, z1) if abs(z0 - cz) < abs(z1 - cz) else (z1, z0)
            away = 1.0 if far > near else -1.0
            z = (far + away * rng.uniform(0.3, 1.5)) if rng.random() < 0.6 else near - away * 1.0
            x = v.x + rng.uniform(-0.8, 0.8)
            if math.hypot(x - cx, z - cz) > 2.2 and free(x, z):
                persons.append(_random_person(rng, x, z))
    return persons


def _close_up(camera: _Camera, rng: np.random.Generator) -> _Person:
    """A pedestrian right in front of the lens: a face far larger than 96 px."""
    depth = rng.uniform(0.45, 1.0)
    u = rng.uniform(0.2, 0.8) * camera.width
    v = rng.uniform(0.2, 0.45) * camera.height  # where the head centre lands
    head = camera.position + camera.ray(u, v) * depth
    person = _random_person(rng, float(head[0]), float(head[2]), yaw=rng.normal(0.0, 0.35))
    return dataclasses.replace(person, height=float(np.clip(head[1] + 0.12, 1.3, 2.1)))


# ---------------------------------------------------------------------------------------------
# Drawing: every shape fills the pixels whose centres it contains (exact ground truth)


def _ellipse_pixels(
    shape: tuple[int, int], origin: np.ndarray, ellipse: tuple[float, float, float, float, float]
) -> np.ndarray:
    cx, cy, a, b, deg = ellipse
    out = np.zeros(shape, bool)
    if a <= 0 or b <= 0:
        return out
    th = math.radians(deg)
    c, s = math.cos(th), math.sin(th)
    ex, ey = math.hypot(a * c, b * s), math.hypot(a * s, b * c)
    c0 = max(0, math.floor(cx - ex - origin[0]))
    c1 = min(shape[1], math.ceil(cx + ex - origin[0]) + 1)
    r0 = max(0, math.floor(cy - ey - origin[1]))
    r1 = min(shape[0], math.ceil(cy + ey - origin[1]) + 1)
    if c0 >= c1 or r0 >= r1:
        return out
    x = (origin[0] + np.arange(c0, c1) + 0.5 - cx)[None, :]
    y = (origin[1] + np.arange(r0, r1) + 0.5 - cy)[:, None]
    lx, ly = x * c + y * s, -x * s + y * c
    out[r0:r1, c0:c1] = (lx / a) ** 2 + (ly / b) ** 2 <= 1.0
    return out


def _rect_corners(rect: tuple[float, float, float, float, float]) -> np.ndarray:
    """Corners of a rotated rectangle: top-left, top-right, bottom-right, bottom-left."""
    cx, cy, w, h, deg = rect
    th = math.radians(deg)
    ex = np.array([math.cos(th), math.sin(th)]) * w / 2
    ey = np.array([-math.sin(th), math.cos(th)]) * h / 2
    c = np.array([cx, cy])
    return np.array([c - ex - ey, c + ex - ey, c + ex + ey, c - ex + ey])


def _convex_pixels(shape: tuple[int, int], origin: np.ndarray, corners: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, bool)
    lo = np.floor(corners.min(axis=0) - origin).astype(int)
    hi = np.ceil(corners.max(axis=0) - origin).astype(int) + 1
    c0, r0 = max(0, lo[0]), max(0, lo[1])
    c1, r1 = min(shape[1], hi[0]), min(shape[0], hi[1])
    if c0 >= c1 or r0 >= r1:
        return out
    x = (origin[0] + np.arange(c0, c1) + 0.5)[None, :]
    y = (origin[1] + np.arange(r0, r1) + 0.5)[:, None]
    inside = np.ones((r1 - r0, c1 - c0), bool)
    for (ax, ay), (bx, by) in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        # Corners run clockwise in the image (y down): inside is right of each edge.
        inside &= (bx - ax) * (y - ay) - (by - ay) * (x - ax) >= 0
    out[r0:r1, c0:c1] = inside
    return out


def _fill(parts: np.ndarray, origin: np.ndarray, points: np.ndarray, code: int) -> None:
    # OpenCV puts pixel centres at integers; fixed point keeps sub-pixel vertices.
    pts = np.round((np.asarray(points, np.float64) - origin - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(parts, [pts.reshape(-1, 1, 2)], int(code), lineType=cv2.LINE_8, shift=4)


def _limb(a: np.ndarray, b: np.ndarray, width: float) -> np.ndarray:
    d = b - a
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-9) * width / 2
    return np.array([a + n, b + n, b - n, a - n])


def _canvas(camera: _Camera, lo: np.ndarray, hi: np.ndarray) -> tuple[int, int, int, int] | None:
    """Integer box (left, top, right, bottom) around lo..hi, clipped to the frame (rows only in
    panoramas, whose columns wrap)."""
    left, right = math.floor(lo[0]) - 1, math.ceil(hi[0]) + 1
    top, bottom = max(0, math.floor(lo[1]) - 1), min(camera.height, math.ceil(hi[1]) + 1)
    if camera.panorama:
        right = min(right, left + camera.width)
    else:
        left, right = max(0, left), min(camera.width, right)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def _paint(parts: np.ndarray, palette: dict[int, tuple[float, float, float]]) -> np.ndarray:
    lut = np.zeros((256, 3), np.float32)
    for code, colour in palette.items():
        lut[code] = colour
    return lut[parts]


def _render_person(p: _Person, camera: _Camera) -> _Layer | None:
    """A person as a flat figure facing the camera at their distance; the head turns (yaw)."""
    foot = np.array([p.x, 0.0, p.z])
    top = np.array([p.x, p.height, p.z])
    if not camera.in_front(np.array([foot, top]), 0.3):
        return None
    lon = camera.longitude(foot)
    (uf, vf), (_, vt) = camera.project(np.array([foot, top]), lon)
    s = (vf - vt) / p.height  # pixels per metre at the person
    box = _canvas(
        camera,
        np.array([uf - 0.5 * s, vf - (p.height + 0.06) * s]),
        np.array([uf + 0.5 * s, vf + 0.04 * s]),
    )
    if box is None:
        return None
    left, top_row, right, bottom = box
    origin = np.array([left, top_row], float)
    parts = np.zeros((bottom - top_row, right - left), np.uint8)

    def at(x: float, y: float) -> np.ndarray:  # figure metres (x right, y up) to pixels
        return np.array([uf + s * x, vf - s * y])

    _draw_body(parts, origin, at, p, s)
    keypoints, ellipse = _draw_head(parts, origin, at(0.0, p.height - 0.12), s, p)
    if not parts.any():
        return None
    return _Layer(
        label="person",
        depth=math.hypot(p.x - camera.position[0], p.z - camera.position[2]),
        left=left,
        top=top_row,
        parts=parts,
        colours=_paint(parts, p.colours),
        keypoints=keypoints,
        ellipse=ellipse,
    )


def _draw_body(
    parts: np.ndarray,
    origin: np.ndarray,
    at: Callable[[float, float], np.ndarray],
    p: _Person,
    s: float,
) -> None:
    """Legs, shoes, torso, arms, hands and neck; seen from the side, a person strides."""
    h, cos_yaw, sin_yaw = p.height, math.cos(p.yaw), math.sin(p.yaw)
    frontal = 0.55 + 0.45 * abs(cos_yaw)
    shoulder_y, hip_y = h - 0.27 * h / 1.73, 0.52 * h
    sw, hw = 0.2 * frontal, 0.16 * frontal
    step = 0.18 * abs(sin_yaw) * p.stride
    for side in (-1, 1):
        foot_x = side * 0.08 * abs(cos_yaw) + side * step
        leg = _limb(at(side * hw * 0.5, hip_y), at(foot_x, 0.07), 0.14 * s)
        _fill(parts, origin, leg, _TROUSERS)
        toe = foot_x + 0.07 + 0.05 * sin_yaw
        shoe = [at(foot_x - 0.07, 0), at(toe, 0), at(foot_x + 0.06, 0.08), at(foot_x - 0.06, 0.08)]
        _fill(parts, origin, np.array(shoe), _SHOES)
    torso = [at(-sw, shoulder_y), at(sw, shoulder_y), at(hw, hip_y - 0.05), at(-hw, hip_y - 0.05)]
    _fill(parts, origin, np.array(torso), _SHIRT)
    for side in (-1, 1):
        hand = at(side * (sw + 0.03) - side * step * 0.6, hip_y - 0.02)
        arm = _limb(at(side * (sw - 0.035), shoulder_y - 0.02), hand, 0.085 * s)
        _fill(parts, origin, arm, _SHIRT)
        parts[_ellipse_pixels(parts.shape, origin, (*hand, 0.045 * s, 0.05 * s, 0.0))] = _SKIN_PART
    neck = [at(-0.045, h - 0.3), at(0.045, h - 0.3), at(0.045, h - 0.2), at(-0.045, h - 0.2)]
    _fill(parts, origin, np.array(neck), _SKIN_PART)


def _draw_head(
    parts: np.ndarray, origin: np.ndarray, centre: np.ndarray, s: float, p: _Person
) -> tuple[dict[str, tuple[float, float, bool]], tuple[float, float, float, float, float] | None]:
    """Hair, ears, and the face when it shows. Returns the head keypoints (x, y, whether they
    face the camera) and the face ellipse (None from behind)."""
    cos_yaw, sin_yaw = math.cos(p.yaw), math.sin(p.yaw)
    roll_deg = math.degrees(p.roll)
    cr, sr = math.cos(p.roll), math.sin(p.roll)

    def head(dx: float, up: float) -> np.ndarray:  # head metres to pixels, with the tilt
        ox, oy = dx * s, -up * s
        return centre + np.array([ox * cr - oy * sr, ox * sr + oy * cr])

    def blob(xy: np.ndarray, rx: float, ry: float) -> np.ndarray:
        return _ellipse_pixels(parts.shape, origin, (*xy, rx * s, ry * s, roll_deg))

    parts[blob(centre, 0.095, 0.12)] = _HAIR_PART
    keypoints: dict[str, tuple[float, float, bool]] = {}
    for name, ((a_left, a_up, a_front), seen_above) in _HEAD_POINTS.items():
        facing = (a_front * cos_yaw - a_left * sin_yaw) / math.hypot(a_left, a_front)
        xy = head(a_left * cos_yaw + a_front * sin_yaw, a_up)
        keypoints[name] = (float(xy[0]), float(xy[1]), facing > seen_above)
        if name.endswith("_ear") and facing > seen_above:
            parts[blob(xy, 0.02, 0.032)] = _SKIN_PART
    if cos_yaw <= -0.17:  # seen from behind: no face
        return keypoints, None
    cx, cy = head(0.04 * sin_yaw, -0.012)
    a, b = 0.072 * (0.6 + 0.4 * abs(cos_yaw)) * s, 0.092 * s
    ellipse = (float(cx), float(cy), float(a), float(b), roll_deg % 360)
    face = _ellipse_pixels(parts.shape, origin, ellipse)
    parts[face] = _FACE
    if ellipse[2] < 7:  # features only where they would be more than a few pixels
        return keypoints, ellipse
    for name, code, rx, ry in (
        ("left_eye", _EYE, 0.012, 0.008),
        ("right_eye", _EYE, 0.012, 0.008),
        ("nose", _NOSE, 0.014, 0.016),
    ):
        x, y, seen = keypoints[name]
        if seen:
            parts[blob(np.array([x, y]), rx, ry) & face] = code
    if cos_yaw > 0.3:
        mouth = blob(head(0.085 * sin_yaw, -0.06), 0.022 * cos_yaw + 0.004, 0.007)
        parts[mouth & face] = _MOUTH
    return keypoints, ellipse


def _box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )


def _quad(
    axis: int, at: float, span_b: tuple[float, float], span_c: tuple[float, float]
) -> np.ndarray:
    """A 3D rectangle in the plane `axis` = at, spanning the two other axes in order."""
    b, c = (k for k in range(3) if k != axis)
    q = np.zeros((4, 3))
    q[:, axis] = at
    q[:, b] = [span_b[0], span_b[1], span_b[1], span_b[0]]
    q[:, c] = [span_c[0], span_c[0], span_c[1], span_c[1]]
    return q


def _visible_faces(
    lo: np.ndarray, hi: np.ndarray, eye: np.ndarray
) -> list[tuple[int, int, np.ndarray]]:
    """(axis, sign, quad) of the faces of a box the eye sees (never the bottom)."""
    faces = []
    for axis in range(3):
        b, c = (k for k in range(3) if k != axis)
        for sign, at in ((-1, lo[axis]), (1, hi[axis])):
            if (axis == 1 and sign < 0) or (eye[axis] - at) * sign <= 0:
                continue
            faces.append((axis, sign, _quad(axis, at, (lo[b], hi[b]), (lo[c], hi[c]))))
    return faces


def _wheel(
    x_out: float, x_in: float, z: float, radius: float = 0.32
) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    ring = np.stack([np.zeros_like(t), radius + radius * np.sin(t), z + radius * np.cos(t)], 1)
    outer, inner = ring.copy(), ring.copy()
    outer[:, 0], inner[:, 0] = x_out, x_in
    return outer, inner


def _render_vehicle(v: _Vehicle, camera: _Camera) -> _Layer | None:
    eye = camera.position
    x0, x1, z0, z1 = v.footprint()
    lo, hi = np.array([x0, 0.3, z0]), np.array([x1, v.body_top, z1])
    # The cabin sits back from the bonnet; vans are nearly all cabin.
    front_gap, back_gap = (0.22, 0.02) if v.van else (0.38, 0.12)
    if v.heading < 0:
        front_gap, back_gap = back_gap, front_gap
    cab_lo = np.array([x0 + 0.1, v.body_top, z0 + back_gap * v.length])
    cab_hi = np.array([x1 - 0.1, v.cabin_top, z1 - front_gap * v.length])
    wheels = []
    for side, x_face in ((-1, x0), (1, x1)):
        for wz in (v.z - 0.32 * v.length, v.z + 0.32 * v.length):
            wheels.append((side, _wheel(x_face + side * 0.02, x_face - side * 0.2, wz)))
    corners = np.concatenate(
        [_box_corners(lo, hi), _box_corners(cab_lo, cab_hi)]
        + [np.concatenate(w) for _, w in wheels]
    )
    if not camera.in_front(corners, 0.3):
        return None
    lon = camera.longitude(np.array([v.x, 0.8, v.z]))
    proj = camera.project(corners, lon)
    box = _canvas(camera, proj.min(axis=0), proj.max(axis=0))
    if box is None:
        return None
    left, top, right, bottom = box
    origin = np.array([left, top], float)
    parts = np.zeros((bottom - top, right - left), np.uint8)

    def fill(points3d: np.ndarray, code: int) -> None:
        _fill(parts, origin, camera.project(points3d, lon), code)

    def draw_wheel(ring: tuple[np.ndarray, np.ndarray], hub: bool) -> None:
        hull = cv2.convexHull(camera.project(np.concatenate(ring), lon).astype(np.float32))
        _fill(parts, origin, hull.reshape(-1, 2), _TYRE)
        if hub:
            outer = ring[0]
            centre = outer.mean(axis=0)
            fill(centre + (outer - centre) * 0.55, _HUB)

    near_side = 1 if eye[0] > x1 else (-1 if eye[0] < x0 else 0)
    for side, ring in wheels:
        if side != near_side:
            draw_wheel(ring, hub=False)
    codes = {0: _SIDE, 1: _TOP, 2: _END}
    for axis, _, q in _visible_faces(lo, hi, eye):
        fill(q, codes[axis])
    for axis, sign, q in _visible_faces(cab_lo, cab_hi, eye):
        fill(q, _CABIN if axis != 1 else _TOP)
        y_glass = (cab_lo[1] + 0.05, cab_hi[1] - 0.05)
        at = q[0, axis] + sign * 0.005
        if axis == 0:  # side windows, split by the B pillar
            mid = (cab_lo[2] + cab_hi[2]) / 2
            fill(_quad(0, at, y_glass, (cab_lo[2] + 0.12, mid - 0.04)), _GLASS)
            fill(_quad(0, at, y_glass, (mid + 0.04, cab_hi[2] - 0.12)), _GLASS)
        elif axis == 2:
            fill(_quad(2, at, (cab_lo[0] + 0.08, cab_hi[0] - 0.08), y_glass), _GLASS)
    plate = None
    end = _visible_end(lo, hi, eye)
    if end is not None:
        sign, z_end = end
        light = _HEAD_LIGHT if sign == v.heading else _REAR_LIGHT
        y_light = (v.body_top - 0.28, v.body_top - 0.1)
        fill(_quad(2, z_end + sign * 0.01, (x0 + 0.08, x0 + 0.4), y_light), light)
        fill(_quad(2, z_end + sign * 0.01, (x1 - 0.4, x1 - 0.08), y_light), light)
        plate = _plate_rect(v, camera, lon, sign, z_end)
    for side, ring in wheels:
        if side == near_side:
            draw_wheel(ring, hub=True)
    colours = _paint(parts, _vehicle_palette(v))
    if plate is not None:
        _draw_plate(parts, colours, origin, plate, v)
    if not parts.any():
        return None
    return _Layer(
        label="vehicle",
        depth=_footprint_distance(camera, v.footprint()),
        left=left,
        top=top,
        parts=parts,
        colours=colours,
        rect=plate,
        text=v.plate_text if plate is not None else None,
    )


def _visible_end(lo: np.ndarray, hi: np.ndarray, eye: np.ndarray) -> tuple[int, float] | None:
    if eye[2] < lo[2]:
        return -1, float(lo[2])
    if eye[2] > hi[2]:
        return 1, float(hi[2])
    return None


def _vehicle_palette(v: _Vehicle) -> dict[int, tuple[float, float, float]]:
    paint = np.array(v.paint)

    def shade(k: float) -> tuple[float, float, float]:
        return tuple(float(c) for c in np.clip(paint * k, 0, 255))

    return {
        _TYRE: (28, 28, 30),
        _HUB: (150, 150, 156),
        _SIDE: shade(0.78),
        _END: shade(0.92),
        _TOP: shade(1.08),
        _CABIN: shade(0.86),
        _GLASS: (48, 58, 70),
        _REAR_LIGHT: (210, 30, 30),
        _HEAD_LIGHT: (245, 240, 215),
        _PLATE: (240, 200, 40) if v.plate_yellow else (236, 236, 230),
    }


def _plate_rect(
    v: _Vehicle, camera: _Camera, lon: float, sign: int, z_end: float
) -> tuple[float, float, float, float, float] | None:
    centre3 = np.array([v.x, 0.48, z_end + sign * 0.012])
    to_eye = camera.position - centre3
    facing = abs(to_eye[2]) / float(np.linalg.norm(to_eye))
    if facing < 0.25:  # seen edge-on: no readable plate
        return None
    (cx, cy), (_, cy_up) = camera.project(
        np.array([centre3, centre3 + np.array([0.0, 0.1, 0.0])]), lon
    )
    s = abs(cy - cy_up) * 10
    w, h = v.plate_size
    return (float(cx), float(cy), float(w * s * facing), float(h * s), v.plate_tilt % 360)


def _draw_plate(
    parts: np.ndarray,
    colours: np.ndarray,
    origin: np.ndarray,
    rect: tuple[float, float, float, float, float],
    v: _Vehicle,
) -> None:
    """The plate and its characters, warped into place as a rotated rectangle."""
    region = _convex_pixels(parts.shape, origin, _rect_corners(rect))
    if not region.any():
        return
    _, _, w, h, deg = rect
    background = np.array(_vehicle_palette(v)[_PLATE], np.float32)
    patch = _plate_patch(
        v.plate_text, w, h, background, band=not v.plate_yellow and v.plate_size[0] > 0.4
    )
    ph, pw = patch.shape[:2]
    th = math.radians(deg)
    ex, ey = np.array([math.cos(th), math.sin(th)]), np.array([-math.sin(th), math.cos(th)])
    linear = np.stack([ex * w / pw, ey * h / ph], axis=1)
    top_left = _rect_corners(rect)[0]
    # OpenCV samples at integer pixel centres: shift both ends by half a pixel.
    offset = top_left - origin - 0.5 + linear @ np.array([0.5, 0.5])
    matrix = np.hstack([linear, offset[:, None]])
    size = (parts.shape[1], parts.shape[0])
    warped = cv2.warpAffine(
        patch, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    parts[region] = _PLATE
    colours[region] = warped[region]


def _plate_patch(text: str, w: float, h: float, background: np.ndarray, band: bool) -> np.ndarray:
    """The plate face at about its final size, drawn large and shrunk so characters stay clean."""
    scale = 32.0 / max(h, 1e-3)
    big_w, big_h = max(8, round(w * scale)), 32
    big = np.empty((big_h, big_w, 3), np.float32)
    big[:] = background
    start = 0
    if band:
        start = round(big_w * 0.09)
        big[:, :start] = (30, 60, 160)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, 2)
    size = min((big_w - start) * 0.88 / tw, big_h * 0.62 / th)
    thickness = max(1, round(size * 2.2))
    (tw, th), _ = cv2.getTextSize(text, font, size, thickness)
    org = (start + round((big_w - start - tw) / 2), round((big_h + th) / 2))
    cv2.putText(big, text, org, font, size, (20, 20, 25), thickness, cv2.LINE_AA)
    small = (max(1, math.ceil(w)), max(1, math.ceil(h)))
    return cv2.resize(big, small, interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------
# Composing a frame


def _composite(
    background: np.ndarray, layers: list[_Layer]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint layers in order (far to near) over the background, in place. Return the image,
    who owns each pixel (the number of the layer drawn there last, from 1; 0 for the street),
    and which pixels glow at night (vehicle lights)."""
    image = background
    height, width = image.shape[:2]
    owner = np.zeros((height, width), np.int32)
    glow = np.zeros((height, width), bool)
    for number, layer in enumerate(layers, start=1):
        rows = layer.rows()
        for frame_cols, canvas_cols in layer.runs(width):
            parts = layer.parts[:, canvas_cols]
            drawn = parts > 0
            # Basic slices are views: assigning through them paints the frame.
            image[rows, frame_cols][drawn] = layer.colours[:, canvas_cols][drawn]
            owner[rows, frame_cols][drawn] = number
            glow[rows, frame_cols][drawn] = np.isin(parts[drawn], _LIGHTS)
    return image, owner, glow


def _pieces(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of a mask, within its bounding box: (labels, areas, offset x, y).

    Labels number the components 1..n; `areas[k - 1]` is the size of component k.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return np.zeros((0, 0), np.int32), np.zeros(0, int), np.zeros(2, int)
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=8)
    return labels, stats[1:, cv2.CC_STAT_AREA], np.array([cols[0], rows[0]])


def _substantial(mask: np.ndarray) -> bool:
    """Whether the mask has a connected piece of at least _MIN_PIECE pixels."""
    if np.count_nonzero(mask) < _MIN_PIECE:
        return False
    # A full 2 x 2 block is a piece of 4 (= _MIN_PIECE): far cheaper than labelling components.
    if (mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]).any():
        return True
    _, areas, _ = _pieces(mask)
    return int(areas.max()) >= _MIN_PIECE


def _objects(layers: list[_Layer], owner: np.ndarray, panorama: bool) -> list[SyntheticObject]:
    """The ground truth of composited layers: what each shows, and its face or plate."""
    height, width = owner.shape
    objects: list[SyntheticObject] = []
    for number, layer in enumerate(layers, start=1):
        shown = layer.under(owner) == number
        if not _substantial(shown):
            continue
        parent = SyntheticObject(
            label=layer.label,
            mask=_Patch(layer.top, layer.left, shown, width, height).full(),
            instance_id=len(objects) + 1,
            keypoints=_keypoints(layer, owner, number, panorama),
            depth=layer.depth,
            amodal=_Patch(layer.top, layer.left, layer.parts > 0, width, height),
        )
        objects.append(parent)
        if layer.ellipse is not None:
            label, part = "face", np.isin(layer.parts, _FACE_PARTS)
        elif layer.rect is not None:
            label, part = "license_plate", layer.parts == _PLATE
        else:
            continue
        if not _substantial(part & shown):
            continue
        objects.append(
            SyntheticObject(
                label=label,
                mask=_Patch(layer.top, layer.left, part & shown, width, height).full(),
                instance_id=len(objects) + 1,
                text=layer.text if label == "license_plate" else None,
                parent_id=parent.instance_id,
                depth=layer.depth,
                ellipse=layer.ellipse if label == "face" else None,
                rect=layer.rect if label == "license_plate" else None,
                amodal=_Patch(layer.top, layer.left, part, width, height),
            )
        )
    return objects


def _keypoints(
    layer: _Layer, owner: np.ndarray, number: int, panorama: bool
) -> dict[str, tuple[float, float, int]]:
    height, width = owner.shape
    out: dict[str, tuple[float, float, int]] = {}
    for name in KEYPOINTS if layer.keypoints else ():
        x, y, seen = layer.keypoints[name]
        if panorama:
            x %= width
        if not (0 <= x < width and 0 <= y < height):
            out[name] = (0.0, 0.0, 0)
            continue
        covered = owner[int(y), int(x)] not in (0, number)  # a nearer object was drawn there
        out[name] = (float(x), float(y), 2 if seen and not covered else 1)
    return out


def _render(cfg: SyntheticConfig, plan: _Plan) -> SyntheticImage:
    session = _session(cfg, plan.session)
    rng = _rng(cfg, _FRAME_STREAM, plan.index)
    camera = _camera(session, plan.frame, rng)
    background, lit = _background(session, camera)
    layers: list[_Layer] = []
    if plan.kind != "empty":
        seam_vehicle = session.panorama and rng.random() < 0.6
        seam_person = session.panorama and not seam_vehicle
        vehicles = _place_vehicles(camera, rng, seam_vehicle)
        persons = _place_persons(camera, rng, vehicles, seam_person)
        drawn = [_render_vehicle(v, camera) for v in vehicles]
        drawn += [_render_person(p, camera) for p in persons]
        # Far to near, so that nearer objects hide farther ones.
        # Objects too small to annotate are not drawn at all: a few pixels of them would hide
        # pixels of a farther object without being anything an annotator could label.
        kept = (d for d in drawn if d is not None and _substantial(d.parts > 0))
        layers = sorted(kept, key=lambda d: -d.depth)
    image, owner, glow = _composite(background, layers)
    objects = _objects(layers, owner, session.panorama)
    if plan.kind == "dark":
        image, noise = _night(image, lit & (owner == 0), glow), 5.0
    elif plan.kind == "blurry":
        image, noise = _defocus(image, rng), 1.0
    else:
        noise = 2.0
    image = image + _sensor_noise(rng, image.shape, noise)
    return SyntheticImage(
        index=plan.index,
        name=f"drive-{plan.session:03d}/frame-{plan.frame:04d}.jpg",
        session=f"synthetic-drive-{plan.session:03d}",
        image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
        objects=objects,
        panorama=session.panorama,
        kind=plan.kind,
        captured_at=session.start + timedelta(seconds=plan.frame * _FRAME_SECONDS),
        gps=_gps(session, float(camera.position[2])),
    )


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian noise of `sigma` levels: a random tile repeated over the frame (drawing a value
    per pixel costs more than all the rest of a frame's background)."""
    tile = rng.standard_normal((128, 128, shape[2]), dtype=np.float32) * np.float32(sigma)
    reps = (-(-shape[0] // 128), -(-shape[1] // 128), 1)
    return np.tile(tile, reps)[: shape[0], : shape[1]]


def _gps(session: _Session, z: float) -> tuple[float, float] | None:
    if session.origin is None:
        return None
    lat, lon = session.origin
    north, east = z * math.cos(session.bearing), z * math.sin(session.bearing)
    return (
        round(lat + north / 111_320.0, 7),
        round(lon + east / (111_320.0 * math.cos(math.radians(lat))), 7),
    )


# ---------------------------------------------------------------------------------------------
# Low-value frames


def _night(image: np.ndarray, lit: np.ndarray, glow: np.ndarray) -> np.ndarray:
    """Night-like: everything dim and blue, some windows and the vehicle lights still bright."""
    dim = 255.0 * 0.17 * (image / 255.0) ** 1.7 * np.array([0.8, 0.88, 1.15], np.float32)
    dim[lit] = (150, 120, 70)
    dim[glow] = image[glow]
    return dim.astype(np.float32)


def _defocus(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(4.5, 7.0) * image.shape[1] / 640
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT101)


def _shift(array: np.ndarray, dx: int, dy: int, wrap: bool) -> np.ndarray:
    """`array` (an image or a mask) moved by (dx, dy) pixels: columns wrap in panoramas; in
    frames the uncovered edge repeats the old edge, for images and masks alike."""
    if wrap:
        return np.roll(array, dx, axis=1)
    move = np.float32([[1, 0, dx], [0, 1, dy]])
    size = (array.shape[1], array.shape[0])
    source = array.view(np.uint8) if array.dtype == bool else array
    out = cv2.warpAffine(
        source, move, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
    )
    return out.view(bool) if array.dtype == bool else out


def _near_duplicate(cfg: SyntheticConfig, plan: _Plan, base: SyntheticImage) -> SyntheticImage:
    """The previous frame again, as a stopped vehicle takes it: a pixel or two to the side,
    a touch darker and softer (so review keeps the original), fresh sensor noise."""
    rng = _rng(cfg, _FRAME_STREAM, plan.index)
    wrap = base.panorama
    dx = int(rng.choice([-2, -1, 1, 2]))
    dy = 0 if wrap else int(rng.choice([-1, 0, 1]))
    image = _shift(base.image, dx, dy, wrap).astype(np.float32)
    image = cv2.GaussianBlur(image * 0.93, (0, 0), 0.6)
    image += _sensor_noise(rng, image.shape, 1.0)
    return SyntheticImage(
        index=plan.index,
        name=f"drive-{plan.session:03d}/frame-{plan.frame:04d}.jpg",
        session=base.session,
        image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
        objects=_shift_objects(base.objects, dx, dy, wrap, base.width, base.height),
        panorama=base.panorama,
        kind=plan.kind,
        captured_at=base.captured_at + timedelta(seconds=_FRAME_SECONDS),
        gps=base.gps,  # stopped
    )


def _shift_objects(
    objects: list[SyntheticObject], dx: int, dy: int, wrap: bool, width: int, height: int
) -> list[SyntheticObject]:
    kept: list[SyntheticObject] = []
    ids: dict[int, int] = {}
    for obj in objects:
        mask = _shift(obj.mask, dx, dy, wrap)
        if (obj.parent_id is not None and obj.parent_id not in ids) or not _substantial(mask):
            continue
        ids[obj.instance_id] = len(kept) + 1
        keypoints = {}
        for name, (x, y, v) in obj.keypoints.items():
            x, y = (x + dx) % width if wrap else x + dx, y + dy
            inside = v > 0 and 0 <= x < width and 0 <= y < height
            keypoints[name] = (float(x), float(y), v) if inside else (0.0, 0.0, 0)
        kept.append(
            SyntheticObject(
                label=obj.label,
                mask=mask,
                instance_id=ids[obj.instance_id],
                keypoints=keypoints,
                text=obj.text,
                parent_id=None if obj.parent_id is None else ids[obj.parent_id],
                depth=obj.depth,
                ellipse=_moved(obj.ellipse, dx, dy, wrap, width),
                rect=_moved(obj.rect, dx, dy, wrap, width),
                amodal=None if obj.amodal is None else obj.amodal.shifted(dx, dy, wrap),
            )
        )
    return kept


def _moved(
    shape: tuple[float, float, float, float, float] | None, dx: int, dy: int, wrap: bool, width: int
) -> tuple[float, float, float, float, float] | None:
    if shape is None:
        return None
    cx, cy, a, b, deg = shape
    return ((cx + dx) % width if wrap else cx + dx, cy + dy, a, b, deg)


# ---------------------------------------------------------------------------------------------
# Label Studio export


def labelstudio_task(img: SyntheticImage, image_url: str, task_id: int) -> dict[str, Any]:
    """The image's ground truth as one task of a Label Studio JSON export: one completed
    annotation whose result lists every region (see the module docstring for the mapping)."""
    width, height = img.width, img.height
    result: list[dict[str, Any]] = []
    for obj in img.objects:
        regions = _regions(obj, width, height, img.panorama)
        for region in regions:
            region.update(
                original_width=width,
                original_height=height,
                image_rotation=0,
                to_name="image",
                origin="manual",
            )
        result.extend(regions)
        result.extend(
            {
                "type": "relation",
                "from_id": regions[0]["id"],
                "to_id": other["id"],
                "direction": "bi",
                "labels": [SAME_OBJECT],
            }
            for other in regions[1:]
        )
    annotator = 1 + task_id % 3
    created = img.captured_at + timedelta(days=3, minutes=7 * task_id)
    finished = created + timedelta(seconds=20 + 6 * len(result))
    annotation = {
        "id": task_id,
        "completed_by": annotator,
        "result": result,
        "was_cancelled": False,
        "ground_truth": False,
        "created_at": _iso(finished),
        "updated_at": _iso(finished),
        "draft_created_at": _iso(created),
        "lead_time": float(20 + 6 * len(result)),
        "prediction": {},
        "result_count": len(result),
        "unique_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{image_url}#{task_id}")),
        "import_id": None,
        "last_action": None,
        "bulk_created": False,
        "task": task_id,
        "project": 1,
        "updated_by": annotator,
        "parent_prediction": None,
        "parent_annotation": None,
        "last_created_by": None,
    }
    return {
        "id": task_id,
        "data": {"image": image_url},
        "annotations": [annotation],
        "drafts": [],
        "predictions": [],
        "meta": {},
        "created_at": _iso(img.captured_at + timedelta(days=2)),
        "updated_at": _iso(finished),
        "inner_id": task_id,
        "total_annotations": 1,
        "cancelled_annotations": 0,
        "total_predictions": 0,
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": 1,
        "updated_by": annotator,
        "comment_authors": [],
        "file_upload": None,
    }


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _regions(obj: SyntheticObject, width: int, height: int, panorama: bool) -> list[dict[str, Any]]:
    values: list[tuple[str, str, dict[str, Any]]] = []  # (from_name, type, value)
    if obj.label in ("person", "vehicle"):
        for points in _polygons(obj.mask):
            value = {
                "points": [[float(x) / width * 100, float(y) / height * 100] for x, y in points],
                "closed": True,
                "polygonlabels": [obj.label],
            }
            values.append(("polygon", "polygonlabels", value))
    elif obj.label == "face" and obj.ellipse is not None:
        cx, cy, a, b, deg = obj.ellipse
        th = math.radians(deg)
        reach = math.hypot(a * math.cos(th), b * math.sin(th))
        for shift in _copies(cx - reach, cx + reach, width, panorama):
            value = {
                "x": (cx + shift) / width * 100,
                "y": cy / height * 100,
                "radiusX": a / width * 100,
                "radiusY": b / height * 100,
                "rotation": deg,
                "ellipselabels": ["face"],
            }
            values.append(("ellipse", "ellipselabels", value))
    elif obj.label == "license_plate" and obj.rect is not None:
        corners = _rect_corners(obj.rect)
        _, _, w, h, deg = obj.rect
        for shift in _copies(corners[:, 0].min(), corners[:, 0].max(), width, panorama):
            value = {
                "x": float(corners[0, 0] + shift) / width * 100,
                "y": float(corners[0, 1]) / height * 100,
                "width": w / width * 100,
                "height": h / height * 100,
                "rotation": deg,
                "rectanglelabels": ["license_plate"],
            }
            values.append(("rectangle", "rectanglelabels", value))
    for name, (x, y, v) in obj.keypoints.items():
        if v > 0:
            value = {
                "x": x / width * 100,
                "y": y / height * 100,
                "width": 0.3,
                "keypointlabels": [name],
            }
            values.append(("keypoint", "keypointlabels", value))
    return [
        {"id": f"o{obj.instance_id}-{k}", "from_name": name, "type": kind, "value": value}
        for k, (name, kind, value) in enumerate(values)
    ]


def _copies(lo: float, hi: float, width: int, panorama: bool) -> list[int]:
    """Horizontal shifts at which a shape spanning lo..hi shows in the frame: in panoramas a
    shape across the seam shows at both ends."""
    if not panorama:
        return [0]
    return [k * width for k in (0, -1, 1) if lo + k * width < width and hi + k * width > 0]


def _polygons(mask: np.ndarray) -> list[np.ndarray]:
    """One outline per connected piece of at least _MIN_PIECE pixels, largest first, as
    (N, 2) pixel-centre coordinates in continuous pixels."""
    labels, areas, offset = _pieces(mask)
    outlines = []
    for k in np.argsort(-areas, kind="stable"):
        if areas[k] < _MIN_PIECE:
            break
        piece = (labels == k + 1).astype(np.uint8)
        contours, _ = cv2.findContours(piece, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contour = max(contours, key=len).reshape(-1, 2)
        if len(contour) < 3:  # a straight run of pixels: keep every point
            contours, _ = cv2.findContours(piece, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            contour = max(contours, key=len).reshape(-1, 2)
        outlines.append(contour.astype(np.float64) + offset + 0.5)
    return outlines

"""Drawing a vehicle: body, cabin, glass, wheels, lights and its license plate."""

from __future__ import annotations

import math

import cv2
import numpy as np

from data.shapes import centred_rectangle_corners, convex_mask
from data.synthetic.camera import Camera
from data.synthetic.figures import (
    CABIN,
    END,
    GLASS,
    HEAD_LIGHT,
    HUB,
    PLATE,
    REAR_LIGHT,
    SIDE,
    TOP,
    TYRE,
    Vehicle,
)
from data.synthetic.layers import Layer, canvas_box, fill_part, paint_parts
from data.synthetic.placement import footprint_distance


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


def render_vehicle(v: Vehicle, camera: Camera) -> Layer | None:
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
    box = canvas_box(camera, proj.min(axis=0), proj.max(axis=0))
    if box is None:
        return None
    left, top, right, bottom = box
    origin = np.array([left, top], float)
    parts = np.zeros((bottom - top, right - left), np.uint8)

    def fill(points3d: np.ndarray, code: int) -> None:
        fill_part(parts, origin, camera.project(points3d, lon), code)

    def draw_wheel(ring: tuple[np.ndarray, np.ndarray], hub: bool) -> None:
        hull = cv2.convexHull(camera.project(np.concatenate(ring), lon).astype(np.float32))
        fill_part(parts, origin, hull.reshape(-1, 2), TYRE)
        if hub:
            outer = ring[0]
            centre = outer.mean(axis=0)
            fill(centre + (outer - centre) * 0.55, HUB)

    near_side = 1 if eye[0] > x1 else (-1 if eye[0] < x0 else 0)
    for side, ring in wheels:
        if side != near_side:
            draw_wheel(ring, hub=False)
    codes = {0: SIDE, 1: TOP, 2: END}
    for axis, _, q in _visible_faces(lo, hi, eye):
        fill(q, codes[axis])
    for axis, sign, q in _visible_faces(cab_lo, cab_hi, eye):
        fill(q, CABIN if axis != 1 else TOP)
        y_glass = (cab_lo[1] + 0.05, cab_hi[1] - 0.05)
        at = q[0, axis] + sign * 0.005
        if axis == 0:  # side windows, split by the B pillar
            mid = (cab_lo[2] + cab_hi[2]) / 2
            fill(_quad(0, at, y_glass, (cab_lo[2] + 0.12, mid - 0.04)), GLASS)
            fill(_quad(0, at, y_glass, (mid + 0.04, cab_hi[2] - 0.12)), GLASS)
        elif axis == 2:
            fill(_quad(2, at, (cab_lo[0] + 0.08, cab_hi[0] - 0.08), y_glass), GLASS)
    plate = None
    end = _visible_end(lo, hi, eye)
    if end is not None:
        sign, z_end = end
        light = HEAD_LIGHT if sign == v.heading else REAR_LIGHT
        y_light = (v.body_top - 0.28, v.body_top - 0.1)
        fill(_quad(2, z_end + sign * 0.01, (x0 + 0.08, x0 + 0.4), y_light), light)
        fill(_quad(2, z_end + sign * 0.01, (x1 - 0.4, x1 - 0.08), y_light), light)
        plate = _plate_rect(v, camera, lon, sign, z_end)
    for side, ring in wheels:
        if side == near_side:
            draw_wheel(ring, hub=True)
    colours = paint_parts(parts, _vehicle_palette(v))
    if plate is not None:
        _draw_plate(parts, colours, origin, plate, v)
    if not parts.any():
        return None
    return Layer(
        label="vehicle",
        depth=footprint_distance(camera, v.footprint()),
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


def _vehicle_palette(v: Vehicle) -> dict[int, tuple[float, float, float]]:
    paint = np.array(v.paint)

    def shade(k: float) -> tuple[float, float, float]:
        return tuple(float(c) for c in np.clip(paint * k, 0, 255))

    return {
        TYRE: (28, 28, 30),
        HUB: (150, 150, 156),
        SIDE: shade(0.78),
        END: shade(0.92),
        TOP: shade(1.08),
        CABIN: shade(0.86),
        GLASS: (48, 58, 70),
        REAR_LIGHT: (210, 30, 30),
        HEAD_LIGHT: (245, 240, 215),
        PLATE: (240, 200, 40) if v.plate_yellow else (236, 236, 230),
    }


def _plate_rect(
    v: Vehicle, camera: Camera, lon: float, sign: int, z_end: float
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
    v: Vehicle,
) -> None:
    """The plate and its characters, warped into place as a rotated rectangle."""
    _, _, w, h, deg = rect
    corners = centred_rectangle_corners(rect)
    height, width = parts.shape
    region = convex_mask(corners, width, height, origin=origin)
    if not region.any():
        return
    background = np.array(_vehicle_palette(v)[PLATE], np.float32)
    patch = _plate_patch(
        v.plate_text, w, h, background, band=not v.plate_yellow and v.plate_size[0] > 0.4
    )
    ph, pw = patch.shape[:2]
    th = math.radians(deg)
    ex, ey = np.array([math.cos(th), math.sin(th)]), np.array([-math.sin(th), math.cos(th)])
    linear = np.stack([ex * w / pw, ey * h / ph], axis=1)
    # OpenCV samples at integer pixel centres: shift both ends by half a pixel.
    offset = corners[0] - origin - 0.5 + linear @ np.array([0.5, 0.5])
    matrix = np.hstack([linear, offset[:, None]])
    size = (parts.shape[1], parts.shape[0])
    warped = cv2.warpAffine(
        patch, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    parts[region] = PLATE
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

"""Drawing a person: body, head, face and head keypoints, as a flat figure at its distance."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from data.shapes import ellipse_mask
from data.synthetic.camera import Camera
from data.synthetic.figures import (
    EYE,
    FACE,
    HAIR_PART,
    HEAD_POINTS,
    MOUTH,
    NOSE,
    SHIRT,
    SHOES,
    SKIN_PART,
    TROUSERS,
    Person,
)
from data.synthetic.layers import Layer, canvas_box, fill_part, paint_parts


def _ellipse(
    parts: np.ndarray, origin: np.ndarray, ellipse: tuple[float, float, float, float, float]
) -> np.ndarray:
    """The canvas pixels of an ellipse (cx, cy, rx, ry, degrees) given in frame pixels."""
    height, width = parts.shape
    return ellipse_mask(*ellipse, width, height, origin=origin)


def _limb(a: np.ndarray, b: np.ndarray, width: float) -> np.ndarray:
    d = b - a
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-9) * width / 2
    return np.array([a + n, b + n, b - n, a - n])


def render_person(p: Person, camera: Camera) -> Layer | None:
    """A person as a flat figure facing the camera at their distance; the head turns (yaw)."""
    foot = np.array([p.x, 0.0, p.z])
    top = np.array([p.x, p.height, p.z])
    if not camera.in_front(np.array([foot, top]), 0.3):
        return None
    lon = camera.longitude(foot)
    (uf, vf), (_, vt) = camera.project(np.array([foot, top]), lon)
    s = (vf - vt) / p.height  # pixels per metre at the person
    box = canvas_box(
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
    return Layer(
        label="person",
        depth=math.hypot(p.x - camera.position[0], p.z - camera.position[2]),
        left=left,
        top=top_row,
        parts=parts,
        colours=paint_parts(parts, p.colours),
        keypoints=keypoints,
        ellipse=ellipse,
    )


def _draw_body(
    parts: np.ndarray,
    origin: np.ndarray,
    at: Callable[[float, float], np.ndarray],
    p: Person,
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
        fill_part(parts, origin, leg, TROUSERS)
        toe = foot_x + 0.07 + 0.05 * sin_yaw
        shoe = [at(foot_x - 0.07, 0), at(toe, 0), at(foot_x + 0.06, 0.08), at(foot_x - 0.06, 0.08)]
        fill_part(parts, origin, np.array(shoe), SHOES)
    torso = [at(-sw, shoulder_y), at(sw, shoulder_y), at(hw, hip_y - 0.05), at(-hw, hip_y - 0.05)]
    fill_part(parts, origin, np.array(torso), SHIRT)
    for side in (-1, 1):
        hand = at(side * (sw + 0.03) - side * step * 0.6, hip_y - 0.02)
        arm = _limb(at(side * (sw - 0.035), shoulder_y - 0.02), hand, 0.085 * s)
        fill_part(parts, origin, arm, SHIRT)
        parts[_ellipse(parts, origin, (*hand, 0.045 * s, 0.05 * s, 0.0))] = SKIN_PART
    neck = [at(-0.045, h - 0.3), at(0.045, h - 0.3), at(0.045, h - 0.2), at(-0.045, h - 0.2)]
    fill_part(parts, origin, np.array(neck), SKIN_PART)


def _draw_head(
    parts: np.ndarray, origin: np.ndarray, centre: np.ndarray, s: float, p: Person
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
        return _ellipse(parts, origin, (*xy, rx * s, ry * s, roll_deg))

    parts[blob(centre, 0.095, 0.12)] = HAIR_PART
    keypoints: dict[str, tuple[float, float, bool]] = {}
    for name, ((a_left, a_up, a_front), seen_above) in HEAD_POINTS.items():
        facing = (a_front * cos_yaw - a_left * sin_yaw) / math.hypot(a_left, a_front)
        xy = head(a_left * cos_yaw + a_front * sin_yaw, a_up)
        keypoints[name] = (float(xy[0]), float(xy[1]), facing > seen_above)
        if name.endswith("_ear") and facing > seen_above:
            parts[blob(xy, 0.02, 0.032)] = SKIN_PART
    if cos_yaw <= -0.17:  # seen from behind: no face
        return keypoints, None
    cx, cy = head(0.04 * sin_yaw, -0.012)
    a, b = 0.072 * (0.6 + 0.4 * abs(cos_yaw)) * s, 0.092 * s
    ellipse = (float(cx), float(cy), float(a), float(b), roll_deg % 360)
    face = _ellipse(parts, origin, ellipse)
    parts[face] = FACE
    if ellipse[2] < 7:  # features only where they would be more than a few pixels
        return keypoints, ellipse
    for name, code, rx, ry in (
        ("left_eye", EYE, 0.012, 0.008),
        ("right_eye", EYE, 0.012, 0.008),
        ("nose", NOSE, 0.014, 0.016),
    ):
        x, y, seen = keypoints[name]
        if seen:
            parts[blob(np.array([x, y]), rx, ry) & face] = code
    if cos_yaw > 0.3:
        mouth = blob(head(0.085 * sin_yaw, -0.06), 0.022 * cos_yaw + 0.004, 0.007)
        parts[mouth & face] = MOUTH
    return keypoints, ellipse

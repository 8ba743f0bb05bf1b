"""What stands in the street: persons and vehicles as random records, their colours and the
part codes their drawings use."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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
TROUSERS, SHOES, SHIRT, SKIN_PART, HAIR_PART = 1, 2, 3, 4, 5
FACE, EYE, MOUTH, NOSE = 6, 7, 8, 9
TYRE, HUB, SIDE, END, TOP, CABIN, GLASS, REAR_LIGHT, HEAD_LIGHT, PLATE = range(10, 20)
FACE_PARTS = (FACE, EYE, MOUTH, NOSE)
LIGHTS = (REAR_LIGHT, HEAD_LIGHT)

# Head points in the head's own frame (left, up, front; metres) and how far they may turn away
# from the camera (cosine of their normal to the line of sight) and still be seen.
HEAD_POINTS = {
    "nose": ((0.0, -0.02, 0.105), 0.15),
    # The far eye hides behind the nose well before it would leave the face.
    "left_eye": ((0.033, 0.025, 0.082), 0.3),
    "right_eye": ((-0.033, 0.025, 0.082), 0.3),
    # Ears stick out: still seen from the front, and from behind.
    "left_ear": ((0.092, 0.0, -0.01), -0.35),
    "right_ear": ((-0.092, 0.0, -0.01), -0.35),
}


@dataclass(frozen=True)
class Person:
    x: float  # feet, world
    z: float
    height: float
    yaw: float  # radians; 0 faces the camera, pi shows the back
    roll: float  # head tilt, radians clockwise in the image
    stride: float  # -1..1
    colours: dict[int, tuple[float, float, float]]


@dataclass(frozen=True)
class Vehicle:
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


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def random_person(rng: np.random.Generator, x: float, z: float, yaw: float | None = None) -> Person:
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
        TROUSERS: rng.uniform(20, 120, 3) * np.array([0.8, 0.85, 1.1]),
        SHOES: rng.uniform(15, 60, 3),
        SHIRT: shirt,
        SKIN_PART: skin,
        HAIR_PART: _HAIR[rng.integers(0, len(_HAIR))],
        FACE: skin * 1.03,
        EYE: np.array([40, 32, 30]),
        MOUTH: skin * np.array([0.75, 0.5, 0.5]),
        NOSE: skin * 0.86,
    }
    return Person(
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


def random_vehicle(rng: np.random.Generator, x: float, z: float, heading: int) -> Vehicle:
    van = rng.random() < 0.2
    us_plate = rng.random() < 0.2
    pattern = _PLATE_PATTERNS[3] if us_plate else _PLATE_PATTERNS[rng.integers(0, 3)]
    return Vehicle(
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

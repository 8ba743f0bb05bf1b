"""Where persons and vehicles stand around the camera: lanes, pavements, seams, groups."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from data.synthetic.camera import Camera
from data.synthetic.figures import Person, Vehicle, log_uniform, random_person, random_vehicle
from data.synthetic.sessions import HALF_WIDTH, KERB, LANE_X, ROAD_HALF


def footprint_distance(camera: Camera, box: tuple[float, float, float, float]) -> float:
    x0, x1, z0, z1 = box
    cx, cz = float(camera.position[0]), float(camera.position[2])
    return math.hypot(max(x0 - cx, 0.0, cx - x1), max(z0 - cz, 0.0, cz - z1))


def _overlaps(a: tuple[float, ...], b: tuple[float, ...], margin: float) -> bool:
    return not (
        a[1] + margin < b[0] or b[1] + margin < a[0] or a[3] + margin < b[2] or b[3] + margin < a[2]
    )


def _seam_direction(camera: Camera) -> np.ndarray:
    """World direction of a panorama's left-right seam: straight behind the camera."""
    return -camera.rotation[:, 2] * np.array([1.0, 0.0, 1.0])


def place_vehicles(camera: Camera, rng: np.random.Generator, seam: bool) -> list[Vehicle]:
    cx, cz = float(camera.position[0]), float(camera.position[2])
    vehicles: list[Vehicle] = []
    if seam:
        # A car following the camera car: on the seam, with its front plate across it.
        back = _seam_direction(camera)
        dist = rng.uniform(7.0, 13.0)
        vehicles.append(
            random_vehicle(
                rng, cx + back[0] * dist + rng.uniform(-0.25, 0.25), cz + back[2] * dist, +1
            )
        )
    wanted = int(rng.integers(3, 9) if camera.panorama else rng.integers(1, 7))
    lanes = [(-3.1, 0), (-LANE_X, -1), (LANE_X, 1), (3.1, 0)]  # 0: parked either way
    for _ in range(wanted * 4):
        if len(vehicles) >= wanted + seam:
            break
        lane_x, heading = lanes[int(rng.integers(0, len(lanes)))]
        dist = log_uniform(rng, 5.0, 70.0)
        ahead = not camera.panorama or rng.random() < 0.55
        z = cz + (dist if ahead else -dist)
        v = random_vehicle(
            rng, lane_x + rng.normal(0.0, 0.1), z, heading or int(rng.choice([-1, 1]))
        )
        box = v.footprint()
        if footprint_distance(camera, box) < 3.5:
            continue
        if any(_overlaps(box, other.footprint(), 0.8) for other in vehicles):
            continue
        if not camera.panorama and not _in_view(camera, np.array([v.x, 0.8, v.z]), 0.0):
            continue
        vehicles.append(v)
    return vehicles


def _in_view(camera: Camera, point: np.ndarray, margin: float) -> bool:
    if not camera.in_front(point, 0.3):
        return False
    u = camera.project(point)[0, 0]
    return -margin * camera.width <= u <= (1 + margin) * camera.width


def place_persons(
    camera: Camera, rng: np.random.Generator, vehicles: list[Vehicle], seam: bool
) -> list[Person]:
    cx, cz = float(camera.position[0]), float(camera.position[2])
    boxes = [v.footprint() for v in vehicles]
    persons: list[Person] = []

    def free(x: float, z: float) -> bool:
        spot = (x - 0.25, x + 0.25, z - 0.25, z + 0.25)
        return not any(_overlaps(spot, box, 0.2) for box in boxes) and not any(
            abs(p.x - x) < 0.45 and abs(p.z - z) < 0.45 for p in persons
        )

    if seam:
        # Someone standing right behind the camera car, across the seam.
        back = _seam_direction(camera)
        dist = rng.uniform(3.5, 7.0)
        persons.append(random_person(rng, cx + back[0] * dist, cz + back[2] * dist))
    if not camera.panorama and rng.random() < 0.5:
        persons.append(_close_up(camera, rng))
    wanted = int(rng.integers(3, 11) if camera.panorama else rng.integers(1, 9))
    for _ in range(wanted * 4):
        if len(persons) >= wanted:
            break
        if rng.random() < 0.78:
            x = float(rng.choice([-1, 1]) * rng.uniform(KERB + 0.2, HALF_WIDTH - 0.3))
            dist = log_uniform(rng, 2.5, 60.0)
        else:  # crossing the road
            x = rng.uniform(-ROAD_HALF + 0.3, ROAD_HALF - 0.3)
            dist = log_uniform(rng, 3.0, 30.0)
        z = cz + (dist if (not camera.panorama or rng.random() < 0.5) else -dist)
        if math.hypot(x - cx, z - cz) < 2.2 or not free(x, z):
            continue
        if not camera.panorama and not _in_view(camera, np.array([x, 1.5, z]), 0.05):
            continue
        persons.append(random_person(rng, x, z))
        if rng.random() < 0.3:  # walking together: one partly hides the other
            x2, z2 = x + rng.uniform(-0.6, 0.6), z + rng.uniform(0.6, 2.0)
            if free(x2, z2):
                persons.append(random_person(rng, x2, z2))
    # People just behind or in front of cars, so that cars hide people and people hide cars.
    for v in vehicles:
        if rng.random() < 0.35:
            _, _, z0, z1 = v.footprint()
            near, far = (z0, z1) if abs(z0 - cz) < abs(z1 - cz) else (z1, z0)
            away = 1.0 if far > near else -1.0
            z = (far + away * rng.uniform(0.3, 1.5)) if rng.random() < 0.6 else near - away * 1.0
            x = v.x + rng.uniform(-0.8, 0.8)
            if math.hypot(x - cx, z - cz) > 2.2 and free(x, z):
                persons.append(random_person(rng, x, z))
    return persons


def _close_up(camera: Camera, rng: np.random.Generator) -> Person:
    """A pedestrian right in front of the lens: a face far larger than 96 px."""
    depth = rng.uniform(0.45, 1.0)
    u = rng.uniform(0.2, 0.8) * camera.width
    v = rng.uniform(0.2, 0.45) * camera.height  # where the head centre lands
    head = camera.position + camera.ray(u, v) * depth
    person = random_person(rng, float(head[0]), float(head[2]), yaw=rng.normal(0.0, 0.35))
    return dataclasses.replace(person, height=float(np.clip(head[1] + 0.12, 1.3, 2.1)))

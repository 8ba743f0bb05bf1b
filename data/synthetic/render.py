"""Rendering one frame of a plan: the street, its persons and vehicles, degradation, metadata."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np

from data.config import SyntheticConfig
from data.synthetic.background import cast_background
from data.synthetic.camera import make_camera
from data.synthetic.compose import composite, layer_objects, substantial
from data.synthetic.degrade import defocus, night, sensor_noise
from data.synthetic.draw_person import render_person
from data.synthetic.draw_vehicle import render_vehicle
from data.synthetic.images import SyntheticImage
from data.synthetic.layers import Layer
from data.synthetic.placement import place_persons, place_vehicles
from data.synthetic.plan import FRAME_SECONDS, FRAME_STREAM, Plan, stream_rng
from data.synthetic.sessions import Session, make_session


def render_frame(cfg: SyntheticConfig, plan: Plan) -> SyntheticImage:
    session = make_session(cfg, plan.session)
    rng = stream_rng(cfg, FRAME_STREAM, plan.index)
    camera = make_camera(session, plan.frame, rng)
    background, lit = cast_background(session, camera)
    layers: list[Layer] = []
    if plan.kind != "empty":
        seam_vehicle = session.panorama and rng.random() < 0.6
        seam_person = session.panorama and not seam_vehicle
        vehicles = place_vehicles(camera, rng, seam_vehicle)
        persons = place_persons(camera, rng, vehicles, seam_person)
        drawn = [render_vehicle(v, camera) for v in vehicles]
        drawn += [render_person(p, camera) for p in persons]
        # Far to near, so that nearer objects hide farther ones.
        # Objects too small to annotate are not drawn at all: a few pixels of them would hide
        # pixels of a farther object without being anything an annotator could label.
        kept = (d for d in drawn if d is not None and substantial(d.parts > 0))
        layers = sorted(kept, key=lambda d: -d.depth)
    image, owner, glow = composite(background, layers)
    objects = layer_objects(layers, owner, session.panorama)
    if plan.kind == "dark":
        image, noise = night(image, lit & (owner == 0), glow), 5.0
    elif plan.kind == "blurry":
        image, noise = defocus(image, rng), 1.0
    else:
        noise = 2.0
    image = image + sensor_noise(rng, image.shape, noise)
    return SyntheticImage(
        index=plan.index,
        name=f"drive-{plan.session:03d}/frame-{plan.frame:04d}.jpg",
        session=f"synthetic-drive-{plan.session:03d}",
        image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
        objects=objects,
        panorama=session.panorama,
        kind=plan.kind,
        captured_at=session.start + timedelta(seconds=plan.frame * FRAME_SECONDS),
        gps=_gps(session, float(camera.position[2])),
    )


def _gps(session: Session, z: float) -> tuple[float, float] | None:
    if session.origin is None:
        return None
    lat, lon = session.origin
    north, east = z * math.cos(session.bearing), z * math.sin(session.bearing)
    return (
        round(lat + north / 111_320.0, 7),
        round(lon + east / (111_320.0 * math.cos(math.radians(lat))), 7),
    )

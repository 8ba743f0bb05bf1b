"""A synthetic image and its objects: the exact ground truth, and the JPEG a camera would
write.

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
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from PIL import ExifTags, Image

from data.synthetic.patches import Patch

CLASSES = ("face", "person", "license_plate", "vehicle")
KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")


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
    amodal: Patch | None = field(default=None, repr=False)

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

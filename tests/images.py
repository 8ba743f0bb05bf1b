"""Image files for tests, in every format and depth collect accepts."""

from __future__ import annotations

import hashlib
import io
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from data.manifest import ManifestRecord


def texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A sharp, mid-grey RGB image with structure (not flat, not dark, not blurry)."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 110, np.uint8)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        color = tuple(int(c) for c in rng.integers(30, 230, 3))
        cv2.rectangle(img, (x, y), (x + width // 5, y + height // 6), color, -1)
    noise = rng.integers(-12, 12, img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def jpeg_bytes(
    arr: np.ndarray,
    *,
    quality: int = 90,
    captured: datetime | None = None,
    gps: bool = False,
    orientation: int | None = None,
) -> bytes:
    img = Image.fromarray(arr)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if captured is not None:
        exif.get_ifd(0x8769)[0x9003] = captured.strftime("%Y:%m:%d %H:%M:%S")
    if gps:
        exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 22.0, 0.0), 3: "E", 4: (4.0, 53.0, 0.0)})
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality, exif=exif.tobytes())
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def encode(arr: np.ndarray, ext: str) -> bytes:
    """Encode with OpenCV, which writes 16-bit PNG and TIFF (BGR order for colour)."""
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


def pil_bytes(arr: np.ndarray, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, fmt, **kwargs)
    return out.getvalue()


def store_jpeg(
    artifacts: Path, data: bytes, *, width: int, height: int, source_path: str, session: str
) -> ManifestRecord:
    """Put JPEG `data` into the raw store under `artifacts` as collect would; its record."""
    sha = hashlib.sha256(data).hexdigest()
    rel = f"images/{sha[:2]}/{sha}.jpg"
    write(artifacts / "raw" / rel, data)
    return ManifestRecord(
        sha256=sha,
        path=rel,
        source="test",
        source_path=source_path,
        session=session,
        width=width,
        height=height,
        format="JPEG",
        bit_depth=8,
        channels=3,
        size=len(data),
        source_version=f"sha256:{sha}",
        collected_at="2026-11-22T00:00:00+00:00",
        delete_after="2027-05-21T00:00:00+00:00",
    )

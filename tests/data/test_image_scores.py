"""Review's image scores: every format and depth on the right scale, and the fast path agrees."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from data.image_scores import (
    decode_working,
    draft_size,
    hamming,
    luma_scores,
    phash,
    pixel_digest,
    resize_long_side,
    score_image,
    thumbnail_jpeg,
    to_luma8,
)
from tests.images import encode, jpeg_bytes, pil_bytes, texture

WORK = 256


def gradient(width: int, height: int, low: float, high: float) -> np.ndarray:
    """A horizontal ramp from `low` to `high` (fractions of full scale): known mean, not flat."""
    return np.tile(np.linspace(low, high, width), (height, 1))


def as16(ramp: np.ndarray) -> np.ndarray:
    return np.round(ramp * 65535).astype(np.uint16)


def as8(ramp: np.ndarray) -> np.ndarray:
    return np.round(ramp * 255).astype(np.uint8)


RAMP = gradient(400, 300, 0.2, 0.6)  # mean 0.4


def rgba(arr: np.ndarray) -> np.ndarray:
    return np.dstack([arr] * 3 + [np.full_like(arr, 128)])


def palette_png(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.dstack([arr] * 3)).quantize(64).save(out, "PNG")
    return out.getvalue()


def cmyk_jpeg(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.dstack([arr] * 3)).convert("CMYK").save(out, "JPEG", quality=95)
    return out.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode(as16(RAMP), ".png"), id="png-16bit-grey"),
        pytest.param(encode(np.dstack([as16(RAMP)] * 3), ".png"), id="png-16bit-rgb"),
        pytest.param(encode(as16(RAMP), ".tiff"), id="tiff-16bit-grey"),
        pytest.param(pil_bytes(as8(RAMP), "TIFF"), id="tiff-8bit-grey"),
        pytest.param(pil_bytes(rgba(as8(RAMP)), "PNG"), id="png-rgba"),
        pytest.param(palette_png(as8(RAMP)), id="png-palette"),
        pytest.param(pil_bytes(np.dstack([as8(RAMP)] * 3), "WEBP", quality=95), id="webp"),
        pytest.param(jpeg_bytes(np.dstack([as8(RAMP)] * 3), quality=95), id="jpeg"),
        pytest.param(pil_bytes(as8(RAMP), "JPEG", quality=95), id="jpeg-grey"),
        pytest.param(cmyk_jpeg(as8(RAMP)), id="jpeg-cmyk"),
    ],
)
def test_every_format_and_depth_gives_luminance_on_the_8bit_scale(data: bytes) -> None:
    # Clipping 16-bit values at 255 (Pillow's convert("L")) would read this ramp as white.
    s = score_image(data, WORK)
    assert (s.width, s.height) == (400, 300)
    assert s.mean == pytest.approx(0.4, abs=0.02)
    assert s.overexposed == 0.0


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    img = Image.open(io.BytesIO(encode(as16(gradient(64, 8, 0.0, 1.0)), ".png")))
    assert img.mode.startswith("I")
    luma = to_luma8(img)
    assert luma.dtype == np.uint8
    assert luma[:, 0].max() == 0 and luma[:, -1].min() == 255
    assert luma[0, 32] == pytest.approx(255 * 32 / 63, abs=1)


def test_float_and_32bit_modes() -> None:
    ramp = gradient(64, 8, 0.0, 1.0).astype(np.float32)
    assert to_luma8(Image.fromarray(ramp, "F"))[0, -1] == 255
    assert to_luma8(Image.fromarray((ramp * 65535).astype(np.int32), "I"))[0, -1] == 255


@pytest.mark.parametrize("size", [(1920, 1080), (4000, 3000), (1280, 720), (300, 200), (257, 90)])
def test_jpeg_draft_shrinks_as_far_as_the_working_size_allows(size: tuple[int, int]) -> None:
    width, height = size
    img = Image.open(io.BytesIO(pil_bytes(np.zeros((height, width), np.uint8), "JPEG")))
    img.draft("L", draft_size(width, height, WORK))
    long_side = max(img.size)
    assert long_side >= min(WORK, max(size))
    # Never decoded at more than twice the working size when DCT scaling could go further.
    if max(size) >= 2 * WORK:
        assert long_side < 2 * WORK or long_side * 8 <= max(size) * 1.01


def full_decode_scores(data: bytes) -> tuple[float, float, float, int]:
    """The slow reference: full decode, then the same reduction and measures."""
    luma = resize_long_side(to_luma8(Image.open(io.BytesIO(data))), WORK)
    return (*luma_scores(luma), phash(luma))


def photo(kind: str) -> bytes:
    """A 1600x1200 JPEG (decoded at 1/4 scale by the fast path) of the given kind."""
    scene = cv2.resize(texture(400, 300, 7), (1600, 1200), interpolation=cv2.INTER_CUBIC)
    grain = np.random.default_rng(0).integers(-10, 10, scene.shape)
    scene = np.clip(scene.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    if kind == "dark":
        scene = (scene * 0.1).astype(np.uint8)
    if kind == "bright":
        scene = np.clip(scene.astype(np.int16) + 120, 0, 255).astype(np.uint8)
    if kind == "soft":  # out of focus: near the blur threshold at the working size
        scene = cv2.GaussianBlur(scene, (0, 0), 3)
    return jpeg_bytes(scene, quality=92)


@pytest.mark.parametrize("kind", ["sharp", "dark", "bright", "soft"])
def test_reduced_decode_measures_what_a_full_decode_measures(kind: str) -> None:
    data = photo(kind)
    fast = score_image(data, WORK)
    mean, overexposed, sharpness, hash_ = full_decode_scores(data)
    assert fast.mean == pytest.approx(mean, abs=0.01)
    assert fast.overexposed == pytest.approx(overexposed, abs=0.03)
    assert hamming(fast.phash, hash_) <= 4
    # DCT scaling removes the aliasing that box-filter shrinking keeps, so the fast path reads
    # detail-rich images lower; near blur thresholds (dark, soft) the two are closer.
    low = 0.5 if kind in ("sharp", "bright") else 0.7
    assert low * sharpness <= fast.sharpness <= 1.1 * sharpness


def test_soft_photo_is_near_the_default_blur_threshold() -> None:
    # Keeps the `soft` case above meaningful: it is the kind of image the threshold decides on.
    assert 20 < score_image(photo("soft"), WORK).sharpness < 80


def test_phash_ignores_small_changes_and_separates_scenes() -> None:
    base = texture(400, 300, 1)
    brighter = np.clip(base.astype(np.int16) + 12, 0, 255).astype(np.uint8)
    h = score_image(pil_bytes(base, "PNG"), WORK).phash
    assert hamming(h, score_image(jpeg_bytes(brighter, quality=70), WORK).phash) <= 4
    for seed in (2, 3, 5):
        assert hamming(h, score_image(pil_bytes(texture(400, 300, seed), "PNG"), WORK).phash) > 12


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_as_a_viewer_would(orientation: int, fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = pil_bytes(texture(120, 80, 3), fmt, exif=exif.tobytes(), quality=95)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
    # As collect records it (None: read from the file, as for external reference images).
    for recorded in (orientation, None):
        work = decode_working(data, 120, recorded).luma
        assert work.shape == upright.shape
        assert np.abs(work.astype(int) - upright.astype(int)).max() <= 1
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(data, 60, orientation)))
    small = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    small = cv2.resize(small, (thumb.width, thumb.height), interpolation=cv2.INTER_AREA)
    assert np.abs(np.asarray(thumb).astype(int) - small).mean() < 12


def test_pixel_digest_ignores_encoding_and_metadata() -> None:
    arr = texture(200, 100, 4)
    a = pil_bytes(arr, "PNG", compress_level=1)
    b = pil_bytes(arr, "PNG", compress_level=9, pnginfo=_text_chunk("note", "other metadata"))
    c = pil_bytes(arr, "TIFF")
    assert a != b
    assert pixel_digest(a) == pixel_digest(b) == pixel_digest(c)
    changed = arr.copy()
    changed[0, 0] ^= 1
    assert pixel_digest(pil_bytes(changed, "PNG")) != pixel_digest(a)


def _text_chunk(key: str, value: str) -> PngInfo:
    info = PngInfo()
    info.add_text(key, value)
    return info


def test_thumbnails_are_small_jpegs_for_every_depth() -> None:
    for data in (encode(as16(RAMP), ".png"), pil_bytes(rgba(as8(RAMP)), "PNG")):
        thumb = Image.open(io.BytesIO(thumbnail_jpeg(data)))
        assert thumb.format == "JPEG" and max(thumb.size) == 160


def test_unreadable_input_raises() -> None:
    with pytest.raises(Exception):  # noqa: B017 (any decoder error; review catches them all)
        score_image(b"not an image at all", WORK)
    truncated = jpeg_bytes(texture(400, 300, 1))[:2000]
    with pytest.raises(OSError):
        score_image(truncated, WORK)

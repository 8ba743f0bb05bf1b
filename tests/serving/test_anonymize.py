"""Hiding detections: what changes is only the regions, what is inside them is really gone, and
regions hold the whole object + margin, across a panorama's seam too."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from serving.runtime.anonymize import (
    DEFAULT_STYLES,
    MIN_MARGIN_PX,
    Style,
    anonymize,
    hidden_mask,
    region,
)
from serving.runtime.detections import Detections, mask_window
from serving.runtime.errors import ImageError
from serving.runtime.imagefile import read_image, write_image
from tests.images import encode, texture

CLASSES = ["face", "person", "license_plate", "vehicle"]
FACE, PERSON, PLATE, VEHICLE = 1, 2, 3, 4


def dets(
    boxes: list[list[float]], labels: list[int], masks: list[np.ndarray] | None = None
) -> Detections:
    return Detections(np.array(boxes, np.float32), np.ones(len(boxes)), labels, masks)


def checkerboard(width: int, height: int, square: int = 2, channels: int = 3) -> np.ndarray:
    """Black and white squares of `square` px: all detail, no mean structure."""
    ys, xs = np.mgrid[:height, :width]
    board = (((xs // square) + (ys // square)) % 2 * 255).astype(np.uint8)
    return np.repeat(board[:, :, None], channels, axis=2)


def box_pixels(box: list[float], margin: float, width: int, height: int) -> np.ndarray:
    """(height, width) bool: every pixel touching the box grown by the style's margin."""
    x0, y0, x1, y1 = box
    mx = max(margin * (x1 - x0), MIN_MARGIN_PX)
    my = max(margin * (y1 - y0), MIN_MARGIN_PX)
    ix0, iy0, ix1, iy1 = mask_window((x0 - mx, y0 - my, x1 + mx, y1 + my))
    out = np.zeros((height, width), bool)
    out[max(iy0, 0) : iy1, max(ix0, 0) : ix1] = True
    return out


# ---------------------------------------------------------------------------------------------
# Styles


def test_style_round_trips_through_a_dict() -> None:
    for style in DEFAULT_STYLES.values():
        assert Style.from_dict(style.to_dict()) == style
    assert set(DEFAULT_STYLES) == set(CLASSES)
    assert DEFAULT_STYLES["face"].shape == "ellipse" and DEFAULT_STYLES["face"].feather > 0
    assert DEFAULT_STYLES["license_plate"].shape == "box"
    assert DEFAULT_STYLES["person"].shape == DEFAULT_STYLES["vehicle"].shape == "mask"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"shape": "box", "blurr": 1}, "'blurr' not allowed; the keys are: shape, method"),
        ({"shape": "circle"}, "shape 'circle' is not one of: ellipse, mask, box"),
        ({"shape": "box", "method": "smudge"}, "method 'smudge' is not one of: blur, pixelate"),
        ({"shape": "box", "margin": -0.1}, "margin must be between 0 and 2"),
        ({"shape": "box", "margin": "0.1"}, "margin must be a number"),
        ({"shape": "box", "feather": 0.2}, "feather applies to shape 'ellipse' only"),
        ({"method": "blur"}, "needs a shape"),
    ],
)
def test_style_from_dict_rejects_what_it_does_not_know(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Style.from_dict(data)


def test_a_class_without_a_style_or_a_label_without_a_class_raises() -> None:
    image = texture(64, 64)
    with pytest.raises(ValueError, match="no anonymization style for class 'vehicle'"):
        anonymize(image, dets([[5, 5, 20, 20]], [VEHICLE]), CLASSES, {"face": Style("box")})
    with pytest.raises(ValueError, match="label 5 has no class"):
        anonymize(image, dets([[5, 5, 20, 20]], [5]), CLASSES, DEFAULT_STYLES)


def test_an_image_of_the_wrong_type_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="uint8 or uint16"):
        anonymize(np.zeros((8, 8, 3), np.float32), Detections.empty(), CLASSES, DEFAULT_STYLES)
    with pytest.raises(ImageError, match="channels"):
        anonymize(np.zeros((8, 8, 5), np.uint8), Detections.empty(), CLASSES, DEFAULT_STYLES)


# ---------------------------------------------------------------------------------------------
# Only the regions change


def test_pixels_outside_the_regions_are_untouched_through_a_png_round_trip() -> None:
    image = texture(160, 120, seed=3)
    found = dets(
        [[20, 30, 44, 60], [70, 10, 130, 110], [100, 90, 150, 104]],
        [FACE, PERSON, PLATE],
        masks=None,
    )
    out = anonymize(image, found, CLASSES, DEFAULT_STYLES)
    hidden = hidden_mask(160, 120, found, CLASSES, DEFAULT_STYLES)
    assert not np.shares_memory(out, image)
    assert np.array_equal(image, texture(160, 120, seed=3)), "the input must not change"
    assert np.array_equal(out[~hidden], image[~hidden])
    assert (out[hidden] != image[hidden]).any(axis=1).mean() > 0.5
    # The same through a PNG file: written and read back bit for bit.
    file = read_image(encode(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), ".png"))
    back = read_image(write_image(file, anonymize(file.pixels, found, CLASSES, DEFAULT_STYLES)))
    assert np.array_equal(back.pixels, out)


def test_inplace_changes_the_given_array() -> None:
    image = texture(64, 64)
    out = anonymize(image, dets([[10, 10, 30, 30]], [PLATE]), CLASSES, DEFAULT_STYLES, inplace=True)
    assert out is image


# ---------------------------------------------------------------------------------------------
# What is inside is gone


@pytest.mark.parametrize("method", ["blur", "pixelate", "fill"])
@pytest.mark.parametrize("size", [12, 40, 200])
def test_each_method_removes_fine_detail_even_from_tiny_objects(method: str, size: int) -> None:
    """A checkerboard of 2-px squares inside the object (detail much finer than a face's
    features) is gone: what remains in the box + margin varies far less than the pattern."""
    width = height = size * 3
    image = checkerboard(width, height)
    box = [size, size, 2 * size, 2 * size]
    style = Style("box", method, margin=0.1)
    out = anonymize(image, dets([box], [FACE]), CLASSES, {"face": style})
    inside = box_pixels(box, style.margin, width, height)
    values = out[inside].astype(np.float64)
    assert values.std() < 0.05 * image[inside].std(), f"{method} left detail: {values.std()}"
    if method == "fill":
        assert (values == values[0]).all()


def test_pixelate_blocks_are_constant_and_a_few_per_object() -> None:
    image = texture(300, 300, seed=5)
    box = [100, 100, 200, 160]
    out = anonymize(
        image, dets([box], [PLATE]), CLASSES, {"license_plate": Style("box", "pixelate")}
    )
    found = region(dets([box], [PLATE]), 0, Style("box", "pixelate"), 300, 300)
    window = out[found.y0 : found.y1, found.columns]
    # The shorter side is ~64 px: at most 5 blocks across it, so blocks of 13 px.
    block = math.ceil(found.size / 5)
    assert 12 <= block <= 14
    for y in range(0, window.shape[0], block):
        for x in range(0, window.shape[1], block):
            piece = window[y : y + block, x : x + block].reshape(-1, 3)
            assert (piece == piece[0]).all()


def test_sixteen_bit_images_are_hidden_in_sixteen_bits() -> None:
    image = (checkerboard(120, 90, channels=1)[:, :, 0].astype(np.uint16) * 257) // 2 + 1000
    found = dets([[40, 30, 80, 60]], [PLATE])
    out = anonymize(image, found, CLASSES, DEFAULT_STYLES)
    assert out.dtype == np.uint16 and out.shape == image.shape
    hidden = hidden_mask(120, 90, found, CLASSES, DEFAULT_STYLES)
    assert np.array_equal(out[~hidden], image[~hidden])
    inside = box_pixels([40, 30, 80, 60], 0.1, 120, 90)
    assert out[inside].std() < 0.05 * image[inside].std()
    assert out[inside].min() > 255, "values must stay on the 16-bit scale"
    # And through a 16-bit PNG.
    file = read_image(encode(image, ".png"))
    assert file.pixels.dtype == np.uint16
    assert np.array_equal(read_image(write_image(file, out)).pixels, out)


def test_overlapping_detections_are_all_hidden() -> None:
    image = checkerboard(200, 120)
    boxes = [[40, 30, 100, 90], [80, 40, 150, 100], [90, 50, 110, 70]]
    found = dets(boxes, [PERSON, VEHICLE, FACE])
    out = anonymize(image, found, CLASSES, DEFAULT_STYLES)
    for box, name in zip(boxes, ["person", "vehicle", "face"], strict=True):
        inside = box_pixels(box, DEFAULT_STYLES[name].margin, 200, 120)
        assert out[inside].std() < 0.05 * image[inside].std(), name


# ---------------------------------------------------------------------------------------------
# Region shapes


def test_the_feathered_edge_of_an_ellipse_never_reaches_into_the_object_and_margin() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    box = [60.3, 40.7, 83.9, 71.2]
    style = Style("ellipse", "fill", margin=0.1, feather=0.5)
    found = dets([box], [FACE])
    out = anonymize(image, found, CLASSES, {"face": style})
    core = box_pixels(box, style.margin, 160, 120)
    fill = out[core]
    assert (fill == fill[0]).all(), "every pixel touching the box + margin is fully hidden"
    where = region(found, 0, style, 160, 120)
    alpha = np.zeros((120, 160), np.float32)
    alpha[where.y0 : where.y1, where.columns] = where.alpha
    assert (alpha[core] == 1).all()
    ramp = (alpha > 0) & (alpha < 1)
    assert ramp.sum() > 50, "the soft edge lies outside"
    assert not (ramp & core).any()
    # The ramp blends: neither the original nor the fill everywhere.
    mixed = out[ramp].astype(int)
    assert (mixed != image[ramp]).any() and (mixed != fill[0]).any()
    assert np.array_equal(out[alpha == 0], image[alpha == 0])


def test_masks_are_followed_and_dilated_and_box_used_without_one() -> None:
    image = texture(200, 200, seed=2)
    box = [50, 40, 150, 160]
    ix0, iy0, ix1, iy1 = mask_window(box)
    mask = np.zeros((iy1 - iy0, ix1 - ix0), bool)
    mask[:, 40:60] = True  # a thin upright bar in the middle of the box
    style = Style("mask", "fill", margin=0.05)
    out = anonymize(image, dets([box], [PERSON], [mask]), CLASSES, {"person": style})
    changed = (out != image).any(axis=2)
    bar = np.zeros((200, 200), bool)
    bar[iy0:iy1, ix0 + 40 : ix0 + 60] = True
    radius = 0.05 * 120  # margin x the box's longer side
    grown = cv2.dilate(bar.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=int(radius))
    assert changed[bar].all()
    assert changed[grown.astype(bool)].mean() > 0.95  # the margin, all round
    assert not changed[iy0:iy1, ix0 : ix0 + 20].any(), "the box's corners stay"
    # No masks at all, or an empty one: the box (+ margin) is hidden.
    for masks in (None, [np.zeros_like(mask)]):
        out = anonymize(image, dets([box], [PERSON], masks), CLASSES, {"person": style})
        core = box_pixels(box, style.margin, 200, 200)
        assert (out[core] == out[core][0]).all()


def test_margins_are_at_least_two_pixels() -> None:
    image = texture(60, 60)
    box = [20, 20, 30, 30]
    out = anonymize(image, dets([box], [PLATE]), CLASSES, {"license_plate": Style("box", "fill")})
    changed = (out != image).any(axis=2)
    rows, cols = np.nonzero(changed)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (18, 31, 18, 31)


# ---------------------------------------------------------------------------------------------
# Panoramas


@pytest.mark.parametrize("shape", ["box", "ellipse", "mask"])
@pytest.mark.parametrize("method", ["blur", "pixelate"])
def test_a_region_across_the_seam_is_hidden_on_both_sides(shape: str, method: str) -> None:
    """Hiding an object across the seam gives what hiding it away from the seam gives in the
    same panorama turned (rolled) so the object is inside."""
    width, height, shift = 240, 120, 60
    image = texture(width, height, seed=7)
    box = [220.0, 40.0, 262.0, 90.0]  # columns 220..239, then 0..21
    ix0, iy0, ix1, iy1 = mask_window(box)
    mask = np.zeros((iy1 - iy0, ix1 - ix0), bool)
    cv2.ellipse(mask.view(np.uint8), (21, 25), (18, 24), 0, 0, 360, 1, -1)
    style = Style(shape, method, margin=0.1, feather=0.3 if shape == "ellipse" else 0.0)
    styles = {"person": style}
    across = dets([box], [PERSON], [mask])
    out = anonymize(image, across, CLASSES, styles, panorama=True)
    moved = [box[0] - width + shift, box[1], box[2] - width + shift, box[3]]
    inside = dets([moved], [PERSON], [mask])
    rolled = anonymize(np.roll(image, shift, axis=1), inside, CLASSES, styles, panorama=True)
    assert np.array_equal(out, np.roll(rolled, -shift, axis=1))
    hidden = hidden_mask(width, height, across, CLASSES, styles, panorama=True)
    assert hidden[:, :5].any() and hidden[:, -5:].any()
    assert not hidden[:, 60:190].any()
    assert np.array_equal(out[~hidden], image[~hidden])
    assert (out[hidden] != image[hidden]).any(axis=1).mean() > 0.5


def test_a_margin_past_the_left_edge_wraps_only_in_a_panorama() -> None:
    found = dets([[1, 40, 21, 60]], [PLATE])
    styles = {"license_plate": Style("box", "fill", margin=0.25)}  # 5 px
    wrapped = hidden_mask(200, 100, found, CLASSES, styles, panorama=True)
    assert wrapped[50, 196:].all() and not wrapped[50, 100:196].any()
    flat = hidden_mask(200, 100, found, CLASSES, styles, panorama=False)
    assert not flat[:, 100:].any() and flat[50, :26].all() and not flat[50, 26]
    # A box past the right edge of an ordinary image is cut there.
    past = hidden_mask(200, 100, dets([[190, 40, 215, 60]], [PLATE]), CLASSES, styles)
    assert past[50, 184:].all() and not past[:, :100].any()


def test_greyscale_images_are_hidden_too() -> None:
    image = checkerboard(80, 80, channels=1)[:, :, 0]
    out = anonymize(image, dets([[20, 20, 60, 60]], [FACE]), CLASSES, DEFAULT_STYLES)
    assert out.shape == image.shape
    inside = box_pixels([20, 20, 60, 60], DEFAULT_STYLES["face"].margin, 80, 80)
    assert out[inside].std() < 0.05 * image[inside].std()

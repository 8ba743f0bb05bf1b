"""Augmentation keeps boxes, masks and keypoints consistent; each case is checked against
geometry computed here with numpy, not by albumentations."""

from __future__ import annotations

import numpy as np
import pytest

from data.errors import ConfigError
from training.augment import build_augmenter

NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
SWAP = [0, 2, 1, 4, 3]
H, W = 64, 96


def _sample(height: int = H, width: int = W) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Three instances: a person with head keypoints, a plate, a person near the right edge.

    Boxes equal the masks' extents, so they are exact after any transform that moves pixels.
    """
    rng = np.random.default_rng(0)
    image = rng.integers(60, 200, size=(height, width, 3), dtype=np.uint8)
    masks = np.zeros((3, height, width), np.uint8)
    masks[0, 4:30, 6:20] = 1
    masks[0, 30:40, 10:16] = 1  # not a rectangle, so a wrong flip or rotation shows
    masks[1, 40:46, 30:50] = 1
    masks[2, 10:40, width - 16 : width - 4] = 1
    boxes = np.array(
        [[6, 4, 20, 40], [30, 40, 50, 46], [width - 16, 10, width - 4, 40]], np.float32
    )
    keypoints = np.zeros((3, 5, 3), np.float32)
    # nose, left_eye, right_eye, left_ear (absent: v=0 at (0, 0)), right_ear (occluded)
    keypoints[0] = [[12, 10, 2], [15, 8, 2], [9, 8, 2], [0, 0, 0], [7, 9, 1]]
    keypoints[2] = [
        [width - 10, 15, 2],
        [width - 7, 13, 2],
        [width - 13, 13, 2],
        [0, 0, 0],
        [0, 0, 0],
    ]
    target = {
        "boxes": boxes,
        "labels": np.array([1, 2, 1], np.int64),
        "masks": masks,
        "keypoints": keypoints,
        "instance_ids": np.array([10, 11, 12]),
    }
    return image, target


def _apply(spec: list[dict], image=None, target=None, **kwargs):
    if image is None:
        image, target = _sample()
    return build_augmenter(spec, keypoint_names=NAMES, seed=0, **kwargs)(image, target)


def _extent(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def _assert_consistent(out: dict[str, np.ndarray]) -> None:
    n = len(out["boxes"])
    assert out["labels"].shape == (n,) and out["labels"].dtype == np.int64
    assert out["masks"].shape[0] == n and out["masks"].dtype == np.uint8
    assert out["keypoints"].shape == (n, len(NAMES), 3) and out["keypoints"].dtype == np.float32
    assert out["boxes"].dtype == np.float32
    for box, mask in zip(out["boxes"], out["masks"], strict=True):
        np.testing.assert_allclose(box, _extent(mask), atol=1)


def test_horizontal_flip_mirrors_everything_and_swaps_left_right() -> None:
    image, target = _sample()
    out_image, out = _apply([{"name": "HorizontalFlip", "p": 1.0}], image, target)

    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out["masks"], target["masks"][:, :, ::-1])
    b = target["boxes"]
    np.testing.assert_allclose(
        out["boxes"], np.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], 1)
    )
    expected = target["keypoints"].copy()
    seen = expected[..., 2] > 0
    expected[..., 0][seen] = W - 1 - expected[..., 0][seen]  # COCO pixel-index convention
    expected = expected[:, SWAP]
    np.testing.assert_allclose(out["keypoints"], expected)
    # left_eye now holds the mirrored right_eye; the absent left_ear became an absent right_ear
    assert out["keypoints"][0, 1].tolist() == [W - 1 - 9, 8, 2]
    assert out["keypoints"][0, 4].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(out["labels"], target["labels"])
    np.testing.assert_array_equal(out["instance_ids"], target["instance_ids"])
    _assert_consistent(out)


def test_vertical_flip_mirrors_and_swaps_because_it_is_a_reflection() -> None:
    image, target = _sample()
    out_image, out = _apply([{"name": "VerticalFlip", "p": 1.0}], image, target)

    np.testing.assert_array_equal(out_image, image[::-1])
    np.testing.assert_array_equal(out["masks"], target["masks"][:, ::-1])
    b = target["boxes"]
    np.testing.assert_allclose(
        out["boxes"], np.stack([b[:, 0], H - b[:, 3], b[:, 2], H - b[:, 1]], 1)
    )
    expected = target["keypoints"].copy()
    seen = expected[..., 2] > 0
    expected[..., 1][seen] = H - 1 - expected[..., 1][seen]
    np.testing.assert_allclose(out["keypoints"], expected[:, SWAP])
    _assert_consistent(out)


def test_two_flips_rotate_by_180_and_do_not_swap() -> None:
    image, target = _sample()
    spec = [{"name": "HorizontalFlip", "p": 1.0}, {"name": "VerticalFlip", "p": 1.0}]
    _, out = _apply(spec, image, target)

    expected = target["keypoints"].copy()
    seen = expected[..., 2] > 0
    expected[..., 0][seen] = W - 1 - expected[..., 0][seen]
    expected[..., 1][seen] = H - 1 - expected[..., 1][seen]
    np.testing.assert_allclose(out["keypoints"], expected)
    np.testing.assert_array_equal(out["masks"], target["masks"][:, ::-1, ::-1])


def test_transpose_swaps_left_right() -> None:
    image, target = _sample()
    _, out = _apply([{"name": "Transpose", "p": 1.0}], image, target)

    np.testing.assert_array_equal(out["masks"], target["masks"].transpose(0, 2, 1))
    expected = target["keypoints"][..., [1, 0, 2]]
    np.testing.assert_allclose(out["keypoints"], expected[:, SWAP])
    _assert_consistent(out)


def test_crop_removes_an_instance_with_its_mask_and_keypoints() -> None:
    image, target = _sample()
    x0, y0, x1, y1 = 8, 2, 72, 58  # instance 2 (x >= 80) lies wholly outside
    out_image, out = _apply(
        [{"name": "Crop", "x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1}], image, target
    )

    assert out_image.shape == (y1 - y0, x1 - x0, 3)
    np.testing.assert_array_equal(out["instance_ids"], [10, 11])
    np.testing.assert_array_equal(out["labels"], [1, 2])
    np.testing.assert_array_equal(out["masks"], target["masks"][:2, y0:y1, x0:x1])
    np.testing.assert_allclose(out["boxes"][0], [0, 2, 12, 38])  # clipped to what is left
    np.testing.assert_allclose(out["boxes"][1], [22, 38, 42, 44])
    kp = out["keypoints"][0]
    assert kp[0].tolist() == [12 - x0, 10 - y0, 2]
    assert kp[1].tolist() == [15 - x0, 8 - y0, 2]
    assert kp[2].tolist() == [9 - x0, 8 - y0, 2]
    # right_ear at x=7 fell left of the crop: outside the image means v=0 at (0, 0)
    assert kp[4].tolist() == [0, 0, 0]
    assert np.all(out["keypoints"][1] == 0)
    _assert_consistent(out)


def test_min_visibility_drops_mostly_cropped_instances() -> None:
    image, target = _sample()
    # keeps 4 of instance 2's 12 columns (a third of its box)
    spec = [{"name": "Crop", "x_min": 0, "y_min": 0, "x_max": W - 12, "y_max": H}]
    _, loose = _apply(spec, image, target)
    _, strict = _apply(spec, image, target, min_visibility=0.5)

    np.testing.assert_array_equal(loose["instance_ids"], [10, 11, 12])
    np.testing.assert_array_equal(strict["instance_ids"], [10, 11])
    _assert_consistent(loose)
    _assert_consistent(strict)


def test_resize_scales_boxes_masks_and_keypoints() -> None:
    image, target = _sample()
    _, out = _apply([{"name": "Resize", "height": 2 * H, "width": 2 * W}], image, target)

    np.testing.assert_allclose(out["boxes"], 2 * target["boxes"])
    np.testing.assert_array_equal(out["masks"], target["masks"].repeat(2, 1).repeat(2, 2))
    # Pixel-index geometry maps x to (x + 0.5) * 2 - 0.5; albumentations scales x to 2x, so
    # up to half a pixel apart at this scale.
    expected = target["keypoints"].copy()
    seen = expected[..., 2] > 0
    expected[..., :2][seen] = (expected[..., :2][seen] + 0.5) * 2 - 0.5
    np.testing.assert_allclose(out["keypoints"], expected, atol=0.5 + 1e-4)
    _assert_consistent(out)


def test_rotation_by_90_degrees_matches_numpy_rot90() -> None:
    image, target = _sample(64, 64)
    out_image, out = _apply([{"name": "Rotate", "limit": [90, 90], "p": 1.0}], image, target)

    s = 64
    np.testing.assert_array_equal(out["masks"], np.rot90(target["masks"], 1, axes=(1, 2)))
    np.testing.assert_array_equal(out_image, np.rot90(image, 1))
    b = target["boxes"]  # counter-clockwise: (x, y) -> (y, S - x) for edges
    np.testing.assert_allclose(
        out["boxes"], np.stack([b[:, 1], s - b[:, 2], b[:, 3], s - b[:, 0]], 1)
    )
    expected = target["keypoints"].copy()
    seen = expected[..., 2] > 0
    x, y = expected[..., 0].copy(), expected[..., 1].copy()
    expected[..., 0] = np.where(seen, y, 0)
    expected[..., 1] = np.where(seen, s - 1 - x, 0)
    np.testing.assert_allclose(out["keypoints"], expected, atol=1e-3)  # a rotation: no swap
    _assert_consistent(out)


@pytest.mark.parametrize(
    ("spec", "mirrors"),
    [
        ([{"name": "HorizontalFlip", "p": 1.0}], True),
        ([{"name": "VerticalFlip", "p": 1.0}], True),
        ([{"name": "Affine", "translate_px": {"x": 5, "y": 3}, "p": 1.0}], False),
    ],
)
def test_keypoints_absent_on_input_stay_absent(spec: list[dict], mirrors: bool) -> None:
    # (0, 0) with v=0 would flip to (W - 1, 0), inside the image, if it were moved
    image, target = _sample()
    _, out = _apply(spec, image, target)

    before = target["keypoints"][:, SWAP] if mirrors else target["keypoints"]
    assert np.all(out["keypoints"][before[..., 2] == 0] == 0)
    np.testing.assert_array_equal(out["keypoints"][..., 2], before[..., 2])


def test_photometric_transforms_leave_geometry_untouched() -> None:
    image, target = _sample()
    spec = [
        {
            "name": "ColorJitter",
            "brightness": 0.3,
            "contrast": 0.3,
            "saturation": 0.3,
            "hue": 0.05,
            "p": 1.0,
        },
        {"name": "GaussianBlur", "blur_limit": [3, 7], "p": 1.0},
        {"name": "ImageCompression", "quality_range": [30, 60], "p": 1.0},
        {"name": "NightDarkening", "p": 1.0},
    ]
    out_image, out = _apply(spec, image, target)

    assert out_image.shape == image.shape and out_image.dtype == np.uint8
    assert not np.array_equal(out_image, image)
    for key in ("boxes", "labels", "masks", "keypoints", "instance_ids"):
        np.testing.assert_array_equal(out[key], target[key])


def test_night_darkening_darkens() -> None:
    image, target = _sample()
    out_image, _ = _apply([{"name": "NightDarkening", "p": 1.0}], image, target)

    def luminance(img: np.ndarray) -> float:
        return float((img.astype(np.float32) @ np.array([0.299, 0.587, 0.114])).mean())

    assert luminance(out_image) < 0.6 * luminance(image)
    # the blue cast: blue loses least
    assert out_image[..., 2].mean() > out_image[..., 0].mean()


def test_night_darkening_noise_has_the_configured_spread() -> None:
    # No gamma or tint: what is left is the grain, the same on all three channels.
    image = np.full((200, 300, 3), 128, np.uint8)
    empty = {
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros(0, np.int64),
        "masks": np.zeros((0, 200, 300), np.uint8),
        "keypoints": np.zeros((0, 5, 3), np.float32),
    }
    spec = [
        {
            "name": "NightDarkening",
            "gamma_range": [1.0, 1.0],
            "blue_tint_range": [0.0, 0.0],
            "noise_std_range": [6.0, 6.0],
            "p": 1.0,
        }
    ]
    out_image, _ = _apply(spec, image, empty)
    grain = out_image.astype(np.float32) - 128
    assert abs(grain.mean()) < 0.1
    assert 5.7 < grain.std() < 6.3
    np.testing.assert_array_equal(out_image[..., 0], out_image[..., 2])
    assert np.mean(np.abs(grain[..., 0]) > 12) > 0.03  # tails beyond 2 sigma, as a normal has


def test_seed_makes_the_pipeline_deterministic() -> None:
    spec = [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "RandomResizedCrop", "size": [48, 48], "scale": [0.3, 1.0]},
        {"name": "ColorJitter", "p": 0.8},
        {"name": "NightDarkening", "p": 0.5},
    ]
    image, target = _sample()

    def run(seed: int) -> list:
        aug = build_augmenter(spec, keypoint_names=NAMES, seed=seed)
        return [aug(image, target) for _ in range(4)]

    first, second, other = run(7), run(7), run(8)
    for (img_a, out_a), (img_b, out_b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(img_a, img_b)
        for key in out_a:
            np.testing.assert_array_equal(out_a[key], out_b[key])
        _assert_consistent(out_a)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    assert not np.array_equal(first[0][0], first[1][0])  # successive samples differ


def test_empty_target() -> None:
    image, _ = _sample()
    empty = {
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros(0, np.int64),
        "masks": np.zeros((0, H, W), np.uint8),
        "keypoints": np.zeros((0, 5, 3), np.float32),
    }
    out_image, out = _apply([{"name": "Resize", "height": 32, "width": 48}], image, empty)

    assert out_image.shape == (32, 48, 3)
    assert out["masks"].shape == (0, 32, 48)
    assert out["boxes"].shape == (0, 4) and out["keypoints"].shape == (0, 5, 3)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            [{"name": "HorizontalFlip"}, {"name": "GausianBlur"}],
            ["augment[1].name", "GausianBlur", "did you mean GaussianBlur"],
        ),
        ([{"name": "horizontalflip"}], ["augment[0].name", "did you mean HorizontalFlip"]),
        ([{"name": "Bogus"}], ["augment[0].name", "unknown transform", "NightDarkening"]),
        (
            [{"name": "GaussianBlur", "sigma": 2}],
            ["augment[0].sigma", "did you mean sigma_limit", "blur_limit, sigma_limit, p"],
        ),
        (
            [{"name": "ImageCompression", "quality_range": [0, 200]}],
            ["augment[0].quality_range", "[0, 200]", ">= 1 and <= 100"],
        ),
        ([{"name": "HorizontalFlip", "p": 2}], ["augment[0].p", "less than or equal to 1"]),
        ([{"name": "RandomResizedCrop"}], ["augment[0].size", "needs the argument 'size'"]),
        (
            [{"name": "NightDarkening", "gamma_range": [0.5, 1.0]}],
            ["augment[0].gamma_range", "gamma below 1 brightens"],
        ),
        ([{"p": 0.5}], ["augment[0]", "needs a 'name'"]),
        ([{"name": "OverlayElements"}], ["augment[0].name", "cannot move bboxes, keypoints"]),
        # Instance masks travel as bits of one array: nothing may blend, fill or relabel them.
        (
            [{"name": "Rotate", "mask_interpolation": 1}],
            ["augment[0].mask_interpolation = 1", "exact bits", "cv2.INTER_NEAREST"],
        ),
        (
            [{"name": "CoarseDropout", "fill_mask": 1}],
            ["augment[0].fill_mask = 1", "belongs to no instance"],
        ),
        ([{"name": "MaskDropout"}], ["augment[0].name", "mask values as object labels"]),
        (
            [{"name": "CropNonEmptyMaskIfExists", "height": 8, "width": 8, "ignore_values": [1]}],
            ["augment[0].ignore_values = [1]", "no class values"],
        ),
    ],
)
def test_bad_spec_is_a_config_error_naming_the_entry(spec: list[dict], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        build_augmenter(spec, keypoint_names=NAMES)
    for part in expected:
        assert part in str(info.value)


def test_where_names_the_config_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.augment\[0\]\.name = 'Flip'"):
        build_augmenter([{"name": "Flip"}], keypoint_names=NAMES, where="train.augment")


def test_random_pipelines_keep_keypoints_on_their_masks_and_handedness() -> None:
    # Handedness: nose->left_eye x nose->right_eye keeps its sign under rotations; a mirror
    # flips it, and the left/right swap flips it back. Applying the swap twice or never fails.
    spec = [
        {"name": "D4", "p": 1.0},
        {"name": "Affine", "rotate": [-30, 30], "scale": [0.8, 1.2], "p": 0.7},
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "RandomResizedCrop", "size": [80, 80], "scale": [0.6, 1.0]},
    ]
    image, target = _sample()
    aug = build_augmenter(spec, keypoint_names=NAMES, seed=3)

    def handedness(kp: np.ndarray) -> float:
        nose, left, right = kp[0, :2], kp[1, :2], kp[2, :2]
        (ax, ay), (bx, by) = left - nose, right - nose
        return float(np.sign(ax * by - ay * bx))

    expected = handedness(target["keypoints"][0])
    checked = 0
    for _ in range(30):
        _, out = aug(image, target)
        _assert_consistent(out)
        for kp, mask in zip(out["keypoints"], out["masks"], strict=True):
            for x, y, v in kp:
                if v > 0:  # on the instance's own mask, give or take a resampled pixel
                    r, c = round(float(y)), round(float(x))
                    assert mask[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].any()
        person = out["keypoints"][out["instance_ids"] == 10]
        if len(person) and np.all(person[0, :3, 2] > 0):
            assert handedness(person[0]) == expected
            checked += 1
    assert checked >= 10


def test_the_committed_augmentation_config_builds() -> None:
    from serving.params import load_project
    from tests.conftest import REPO

    params = load_project(REPO / "params.yaml").params
    augmenter = build_augmenter(
        params.augment.transforms,
        keypoint_names=params.taxonomy.keypoints,
        min_visibility=params.augment.min_visibility,
        seed=0,
        where="augment.transforms",
    )
    image = np.full((600, 700, 3), 128, np.uint8)
    target = {
        "boxes": np.array([[10, 20, 110, 220]], np.float32),
        "labels": np.array([2], np.int64),
        "masks": np.pad(np.ones((200, 100), np.uint8), ((20, 380), (10, 590)))[None],
        "keypoints": np.zeros((1, len(params.taxonomy.keypoints), 3), np.float32),
    }
    out_image, out = augmenter(image, target)
    assert out_image.dtype == np.uint8 and out["masks"].shape[1:] == out_image.shape[:2]

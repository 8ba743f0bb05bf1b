"""Heads from a keypoint model's persons (`serving.runtime.heads`), and the anonymizer that hides
them (`Composition.combine`, then `anonymize`): hand-built detections, no model. A face the face
class misses is still hidden when the keypoint model finds its head, from the front, from behind
(ears only), with one keypoint or none, and at a few pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.runtime.anonymize import DEFAULT_STYLES, anonymize, hidden_mask
from serving.runtime.composite import Composition, Member, default_supplies
from serving.runtime.detections import Detections
from serving.runtime.heads import HEAD, HeadSpec, head_boxes

SPEC = HeadSpec()
# The keypoint model's keypoints: the head's, in another order than HeadSpec's, and a shoulder,
# which is not part of the head.
NAMES = ("left_ear", "right_ear", "nose", "left_eye", "right_eye", "left_shoulder")
INDICES = SPEC.indices(NAMES)
SEEN, UNSEEN = 5.0, -5.0  # keypoint scores (heatmap logits) either side of the threshold
PERSON = (100.0, 100.0, 200.0, 400.0)  # a standing person: 100 px wide, 300 px tall
# A frontal face in that person's box: eyes, nose, ears (x, y), and the face's own box.
FRONT = {
    "left_eye": (140.0, 120.0),
    "right_eye": (160.0, 120.0),
    "nose": (150.0, 130.0),
    "left_ear": (130.0, 125.0),
    "right_ear": (170.0, 125.0),
}
FACE_BOX = (132.0, 108.0, 168.0, 150.0)


def keypoints(seen: dict[str, tuple[float, float]]) -> np.ndarray:
    """(K, 3) keypoints in NAMES order: the head's in `seen` visible, its others not (placed far
    from the head, so that counting them would move it), and a visible shoulder."""
    out = np.zeros((len(NAMES), 3), np.float32)
    for k, name in enumerate(NAMES):
        if name in seen:
            out[k] = (*seen[name], SEEN)
        else:
            out[k] = (5.0, 5.0, UNSEEN)
    out[NAMES.index("left_shoulder")] = (120.0, 170.0, SEEN)  # visible, but not the head's
    return out


def one_head(box: tuple[float, ...], kps: np.ndarray | None, spec: HeadSpec = SPEC) -> np.ndarray:
    """The head box of one person."""
    points = None if kps is None else kps[None]
    return head_boxes(np.array([box]), points, spec, spec.indices(NAMES))[0]


def centre(box: np.ndarray) -> tuple[float, float]:
    return float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2


def width_height(box: np.ndarray) -> tuple[float, float]:
    return float(box[2] - box[0]), float(box[3] - box[1])


def largest_gap(points: list[tuple[float, float]]) -> float:
    return max(math.dist(a, b) for a in points for b in points)


# --- the geometry --------------------------------------------------------------------------


def test_a_frontal_head_is_centred_on_its_keypoints_and_sized_from_their_spread() -> None:
    head = one_head(PERSON, keypoints(FRONT))
    points = list(FRONT.values())
    mean = np.mean(points, axis=0)
    assert centre(head) == pytest.approx(tuple(mean), abs=1e-3)
    width, height = width_height(head)
    # Twice the ear-to-ear distance, wider than half the person's 100-px box.
    assert width == pytest.approx(SPEC.spread * largest_gap(points), abs=1e-3)
    assert width > SPEC.box_share * 100
    assert height == pytest.approx(SPEC.aspect * width, abs=1e-3)
    # Every keypoint and the whole face lie inside the head box.
    assert all(head[0] < x < head[2] and head[1] < y < head[3] for x, y in points)
    assert head[0] <= FACE_BOX[0] and head[1] <= FACE_BOX[1]
    assert head[2] >= FACE_BOX[2] and head[3] >= FACE_BOX[3]


def test_a_head_seen_from_behind_is_centred_between_the_ears_and_covers_the_head() -> None:
    ears = {k: FRONT[k] for k in ("left_ear", "right_ear")}
    head = one_head(PERSON, keypoints(ears))
    (lx, ly), (rx, ry) = ears.values()
    assert centre(head) == pytest.approx(((lx + rx) / 2, (ly + ry) / 2), abs=1e-3)
    # Ear to ear is about three quarters of a head's width: the box is wider than a head.
    width, height = width_height(head)
    assert width >= abs(rx - lx) / 0.75
    assert height == pytest.approx(SPEC.aspect * width, abs=1e-3)


def test_one_visible_keypoint_gives_a_head_sized_from_the_persons_box() -> None:
    nose = {"nose": FRONT["nose"]}
    head = one_head(PERSON, keypoints(nose))
    assert centre(head) == pytest.approx(FRONT["nose"], abs=1e-3)
    person_w, person_h = PERSON[2] - PERSON[0], PERSON[3] - PERSON[1]
    assert width_height(head)[0] == pytest.approx(SPEC.box_share * min(person_w, person_h))


def test_with_no_visible_keypoint_the_head_is_at_the_top_of_the_persons_box() -> None:
    for kps in (keypoints({}), None):
        head = one_head(PERSON, kps)
        assert head[1] == pytest.approx(PERSON[1])  # the head box starts at the person's top
        assert centre(head)[0] == pytest.approx((PERSON[0] + PERSON[2]) / 2)
        width, height = width_height(head)
        assert width == pytest.approx(SPEC.box_share * (PERSON[2] - PERSON[0]))
        assert height == pytest.approx(SPEC.aspect * width)


def test_a_tiny_person_gets_a_head_of_min_px() -> None:
    tiny = (50.0, 50.0, 54.0, 62.0)  # 4 x 12 px, eyes a pixel apart
    eyes = {"left_eye": (51.5, 51.0), "right_eye": (52.5, 51.0)}
    for kps in (keypoints(eyes), keypoints({}), None):
        width, height = width_height(one_head(tiny, kps))
        assert width == pytest.approx(SPEC.min_px)
        assert height == pytest.approx(SPEC.aspect * SPEC.min_px)
    larger = HeadSpec(min_px=30)
    assert width_height(one_head(tiny, keypoints(eyes), larger))[0] == pytest.approx(30)


def test_keypoints_below_the_threshold_are_ignored() -> None:
    kps = keypoints(FRONT)
    alone = one_head(PERSON, kps)
    # A nose scoring just under the threshold, far from the rest: it neither moves nor widens
    # the head; at the threshold it counts.
    nose = NAMES.index("nose")
    kps[nose] = (190.0, 300.0, np.nextafter(np.float32(SPEC.keypoint_threshold), -np.inf))
    without = one_head(PERSON, kps)
    others = [v for k, v in FRONT.items() if k != "nose"]
    assert centre(without) == pytest.approx(tuple(np.mean(others, axis=0)), abs=1e-3)
    assert not np.allclose(without, alone)
    kps[nose, 2] = SPEC.keypoint_threshold
    at = one_head(PERSON, kps)
    assert centre(at) == pytest.approx(tuple(np.mean([*others, (190.0, 300.0)], axis=0)), abs=1e-3)
    # A stricter threshold turns the frontal face into "no visible keypoint".
    strict = HeadSpec(keypoint_threshold=SEEN + 1)
    assert one_head(PERSON, keypoints(FRONT), strict)[1] == pytest.approx(PERSON[1])


def test_head_boxes_of_several_persons_at_once_match_each_alone() -> None:
    boxes = np.array([PERSON, (10.0, 10.0, 14.0, 22.0), PERSON])
    kps = np.stack([keypoints(FRONT), keypoints({}), keypoints({"nose": FRONT["nose"]})])
    together = head_boxes(boxes, kps, SPEC, INDICES)
    assert together.shape == (3, 4) and together.dtype == np.float32
    for i in range(3):
        np.testing.assert_allclose(together[i], one_head(tuple(boxes[i]), kps[i]), atol=1e-4)
    assert head_boxes(np.zeros((0, 4)), np.zeros((0, 6, 3)), SPEC, INDICES).shape == (0, 4)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"spread": -1}, r"head spread must be a number 0\.0 to 10\.0, got -1"),
        ({"aspect": 5}, r"head aspect must be a number 0\.25 to 4\.0, got 5"),
        ({"min_px": float("nan")}, r"head min_px must be a number 0\.0 to 1000\.0, got nan"),
        ({"box_share": True}, r"head box_share must be a number, got True"),
        ({"keypoint_threshold": "1"}, r"head keypoint_threshold must be a number, got '1'"),
        ({"keypoints": []}, r"head keypoints must be a non-empty list of names"),
        ({"keypoints": "nose"}, r"head keypoints must be a non-empty list of names, got 'nose'"),
        ({"keypoints": ["nose", ""]}, r"head keypoints must be a non-empty list of names"),
        ({"keypoints": 5}, r"head keypoints must be a non-empty list of names, got 5"),
        ({"keypoints": None}, r"head keypoints must be a non-empty list of names, got None"),
        ({"radius": 3}, r"head key\(s\) \['radius'\] not allowed; the keys are: \['keypoints'"),
    ],
)
def test_a_bad_head_spec_is_refused_naming_the_key(given: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HeadSpec.from_dict({**SPEC.to_dict(), **given})


def test_a_head_spec_round_trips_and_names_keypoints_the_model_lacks() -> None:
    spec = HeadSpec(keypoints=("nose", "left_ear"), min_px=12)
    assert HeadSpec.from_dict(spec.to_dict()) == spec
    assert HeadSpec.from_dict({}) == HeadSpec()
    assert spec.indices(NAMES) == [NAMES.index("nose"), NAMES.index("left_ear")]
    with pytest.raises(ValueError, match=r"a mapping, got list"):
        HeadSpec.from_dict([])  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=r"the keypoint model has no keypoint left_ear, right_ear \(its keypoints: ",
    ):
        SPEC.indices(("nose", "left_eye", "right_eye"))


# --- through the anonymizer -----------------------------------------------------------------

MASK = Member("segmenter", ("face", "person", "license_plate", "vehicle"), "maskrcnn")
KEYPOINT = Member("poser", ("person",), "keypointrcnn", NAMES)
# Scores are float32: thresholds a float32 holds exactly, so a score "at the threshold" is.
THRESHOLDS = {"face": 0.5, "person": 0.625, "license_plate": 0.375, "vehicle": 0.25, HEAD: 0.75}
STYLES = {**DEFAULT_STYLES, HEAD: DEFAULT_STYLES["face"]}
WIDTH, HEIGHT = 300, 450


def composition(heads: bool = True, spec: HeadSpec = SPEC) -> Composition:
    members = (MASK, KEYPOINT)
    supplies = default_supplies(members, heads=heads)
    return Composition(members, supplies, THRESHOLDS, spec if heads else None)


def segmenter(*found: tuple[str, float, tuple[float, ...]]) -> Detections:
    """The Mask R-CNN's detections (class, score, box), in its labels, with filled masks."""
    boxes = np.array([box for _, _, box in found], np.float32).reshape(-1, 4)
    labels = [MASK.classes.index(cls) + 1 for cls, _, _ in found]
    masks = [np.ones((int(b[3] - b[1]), int(b[2] - b[0])), bool) for b in boxes]
    return Detections(boxes, [s for _, s, _ in found], labels, masks=masks)


def poser(*found: tuple[float, tuple[float, ...], np.ndarray]) -> Detections:
    """The Keypoint R-CNN's persons (score, box, keypoints)."""
    boxes = np.array([box for _, box, _ in found], np.float32).reshape(-1, 4)
    kps = np.array([k for _, _, k in found], np.float32).reshape(-1, len(NAMES), 3)
    return Detections(boxes, [s for s, _, _ in found], [1] * len(found), keypoints=kps)


def hidden(dets: Detections, comp: Composition) -> np.ndarray:
    return hidden_mask(WIDTH, HEIGHT, dets, comp.classes, STYLES, full=True)


def box_pixels(box: tuple[float, ...]) -> tuple[slice, slice]:
    """Rows and columns of every pixel the box touches, even in part."""
    x0, y0, x1, y1 = box
    return slice(math.floor(y0), math.ceil(y1)), slice(math.floor(x0), math.ceil(x1))


def checkerboard_face(image: np.ndarray) -> np.ndarray:
    """`image` with a black-and-white checkerboard in FACE_BOX: any blur changes every pixel."""
    rows, cols = box_pixels(FACE_BOX)
    yy, xx = np.mgrid[rows, cols]
    out = image.copy()
    out[rows, cols] = (((yy + xx) % 2) * 255).astype(np.uint8)[..., None]
    return out


@pytest.mark.parametrize("face_score", [None, 0.45])
def test_a_face_the_face_class_misses_is_hidden_by_its_head(face_score: float | None) -> None:
    # No face detection, or one under the face threshold; the keypoint model finds the person.
    faces = [] if face_score is None else [("face", face_score, FACE_BOX)]
    found = [segmenter(*faces), poser((0.9, PERSON, keypoints(FRONT)))]
    comp = composition()
    dets = comp.combine(found)
    assert [comp.classes[label - 1] for label in dets.labels] == [HEAD]
    assert hidden(dets, comp)[box_pixels(FACE_BOX)].all()

    image = checkerboard_face(np.full((HEIGHT, WIDTH, 3), 128, np.uint8))
    after = anonymize(image, dets, comp.classes, STYLES)
    rows, cols = box_pixels(FACE_BOX)
    assert (after[rows, cols] != image[rows, cols]).any(axis=2).all()

    # Without heads the same face stays in view: the heads are what hides it.
    bare = composition(heads=False)
    assert not hidden(bare.combine(found), bare)[box_pixels(FACE_BOX)].any()


def test_a_head_seen_from_behind_is_hidden() -> None:
    ears = {k: FRONT[k] for k in ("left_ear", "right_ear")}
    comp = composition()
    dets = comp.combine([segmenter(), poser((0.9, PERSON, keypoints(ears)))])
    # The back of the head: as wide as the ears over 0.75, and as tall as the aspect says.
    (lx, ly), (rx, _) = ears.values()
    head_w = (rx - lx) / 0.75
    head_h = SPEC.aspect * head_w
    back = ((lx + rx - head_w) / 2, ly - head_h / 2, (lx + rx + head_w) / 2, ly + head_h / 2)
    assert hidden(dets, comp)[box_pixels(back)].all()


def test_a_tiny_persons_head_gets_a_minimum_region() -> None:
    tiny = (50.0, 50.0, 54.0, 62.0)
    eyes = {"left_eye": (51.5, 51.0), "right_eye": (52.5, 51.0)}
    comp = composition()
    dets = comp.combine([segmenter(), poser((0.9, tiny, keypoints(eyes)))])
    shown = hidden(dets, comp)
    # At least a min_px square around the eyes is hidden fully.
    half = SPEC.min_px / 2
    square = (52.0 - half, 51.0 - half, 52.0 + half, 51.0 + half)
    assert shown[box_pixels(square)].all()
    no_minimum = composition(spec=HeadSpec(min_px=0))
    assert (
        shown.sum()
        > hidden(
            no_minimum.combine([segmenter(), poser((0.9, tiny, keypoints(eyes)))]), no_minimum
        ).sum()
    )


def test_the_keypoint_models_persons_are_not_boxed_when_the_mask_model_supplies_persons() -> None:
    comp = composition()
    assert comp.supplies["person"] == MASK.name and comp.supplies[HEAD] == KEYPOINT.name
    dets = comp.combine([segmenter(), poser((0.9, PERSON, keypoints(FRONT)))])
    assert [comp.classes[label - 1] for label in dets.labels] == [HEAD]
    shown = hidden(dets, comp)
    feet = box_pixels((110.0, 300.0, 190.0, 400.0))
    assert not shown[feet].any()  # only the head of that person is hidden
    # A keypoint model alone supplies persons, as boxes, and their heads.
    alone = Composition((KEYPOINT,), default_supplies((KEYPOINT,)), THRESHOLDS, SPEC)
    dets = alone.combine([poser((0.9, PERSON, keypoints(FRONT)))])
    assert sorted(alone.classes[label - 1] for label in dets.labels) == [HEAD, "person"]


def test_each_class_comes_only_from_its_supplier_at_its_threshold() -> None:
    plates = Member("plater", ("license_plate", "face"), "maskrcnn")
    members = (MASK, plates, KEYPOINT)
    supplies = default_supplies(members)
    assert supplies == {
        "face": MASK.name,
        "person": MASK.name,
        "license_plate": MASK.name,
        "vehicle": MASK.name,
        HEAD: KEYPOINT.name,
    }
    comp = Composition(members, {**supplies, "license_plate": plates.name}, THRESHOLDS, SPEC)
    t = THRESHOLDS
    mask_found = segmenter(
        ("face", t["face"], (10, 10, 20, 20)),  # at the threshold: kept
        ("face", t["face"] - 0.01, (30, 10, 40, 20)),  # under it: dropped
        ("person", t["person"] + 0.1, (10, 30, 40, 90)),
        ("license_plate", 0.99, (50, 10, 70, 20)),  # plates come from `plater`: dropped
        ("vehicle", t["vehicle"] - 0.01, (50, 30, 90, 60)),
    )
    plate_boxes = np.array([(80, 10, 100, 20), (110, 10, 130, 20), (140, 10, 160, 20)])
    plate_found = Detections(
        plate_boxes,
        [t["license_plate"], t["license_plate"] - 0.01, 0.99],
        [1, 1, 2],  # a plate at the threshold, one under it, and a face `plater` is not asked for
        masks=[np.ones((10, 20), bool)] * 3,
    )
    persons = poser(
        (t[HEAD], PERSON, keypoints(FRONT)),  # at the head threshold: a head
        (t[HEAD] - 0.01, (200.0, 100.0, 290.0, 400.0), keypoints(FRONT)),  # under it: none
    )
    dets = comp.combine([mask_found, plate_found, persons])
    got = sorted(
        (comp.classes[label - 1], tuple(box))
        for label, box in zip(dets.labels.tolist(), dets.boxes.tolist(), strict=True)
    )
    head = tuple(one_head(PERSON, keypoints(FRONT)).tolist())
    assert got == sorted(
        [
            ("face", (10.0, 10.0, 20.0, 20.0)),
            ("person", (10.0, 30.0, 40.0, 90.0)),
            ("license_plate", (80.0, 10.0, 100.0, 20.0)),
            (HEAD, head),
        ]
    )
    assert dets.keypoints is None


def test_persons_under_the_head_threshold_give_no_head() -> None:
    comp = composition()
    for score, heads in ((THRESHOLDS[HEAD] - 0.05, 0), (THRESHOLDS[HEAD], 1), (0.95, 1)):
        dets = comp.combine([segmenter(), poser((score, PERSON, keypoints(FRONT)))])
        assert len(dets) == heads
        assert hidden(dets, comp)[box_pixels(FACE_BOX)].all() == bool(heads)
    raised = comp.with_thresholds({HEAD: 0.95})
    assert len(raised.combine([segmenter(), poser((0.9, PERSON, keypoints(FRONT)))])) == 0

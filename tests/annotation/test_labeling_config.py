"""The labeling interface: valid XML that Label Studio parses, every class and keypoint in the
controls the converter and the synthetic export use, each label naming its tool and carrying its
class as the alias that exports hold, distinct colours."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from label_studio_sdk.label_interface import LabelInterface

from annotation.labeling_config import (
    CLASS_CONTROLS,
    SAME_OBJECT,
    UNKNOWN_CLASS_CONTROLS,
    control_for,
    labeling_config,
)
from data import synthetic
from data.config import SyntheticConfig
from data.errors import ConfigError
from data.synthetic import labelstudio as synthetic_export

CLASSES = ["face", "person", "license_plate", "vehicle"]
KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]


def labels(root: ET.Element, tag: str, name: str) -> list[str]:
    """The classes (aliases; keypoint names) of a control's labels."""
    (control,) = [c for c in root.iter(tag) if c.get("name") == name]
    assert control.get("toName") == "image"
    return [label.get("alias") or label.get("value") for label in control.iter("Label")]


def shown(root: ET.Element, name: str) -> list[str]:
    """The text of a control's labels, as the annotator sees them."""
    (control,) = [c for c in root if c.get("name") == name]
    return [label.get("value") for label in control.iter("Label")]


def test_default_taxonomy_maps_to_the_fixed_controls() -> None:
    root = ET.fromstring(labeling_config(CLASSES, KEYPOINTS))
    (image,) = root.iter("Image")
    assert image.attrib == {"name": "image", "value": "$image", "zoom": "true"}
    assert labels(root, "EllipseLabels", "ellipse") == ["face"]
    assert labels(root, "PolygonLabels", "polygon") == ["person", "license_plate", "vehicle"]
    assert labels(root, "BrushLabels", "brush") == ["person", "vehicle"]
    assert labels(root, "RectangleLabels", "rectangle") == ["license_plate"]
    assert labels(root, "KeyPointLabels", "keypoint") == KEYPOINTS
    assert [r.get("value") for r in root.iter("Relation")] == [SAME_OBJECT]
    assert SAME_OBJECT == synthetic_export.SAME_OBJECT
    # A class drawn with several tools is told apart by the tool in its text, in every row.
    assert shown(root, "polygon") == [
        "person (polygon)",
        "license_plate (polygon)",
        "vehicle (polygon)",
    ]
    assert shown(root, "brush") == ["person (brush)", "vehicle (brush)"]
    assert shown(root, "rectangle") == ["license_plate (rectangle)"]
    assert shown(root, "ellipse") == ["face (ellipse)"]
    assert shown(root, "keypoint") == KEYPOINTS
    texts = [label.get("value") for label in root.iter("Label")]
    assert len(set(texts)) == len(texts)
    hints = {c.get("name"): {label.get("hint") for label in c} for c in root if c.tag != "Image"}
    assert hints["polygon"] == {"Polygon: click around the outline and close it on the first point"}
    assert hints["brush"] == {"Brush: paint the pixels; the eraser takes them off"}
    # Every class and keypoint appears somewhere; colours tell labels apart.
    colours = {
        label.get("alias") or label.get("value"): label.get("background")
        for label in root.iter("Label")
    }
    assert set(colours) == {*CLASSES, *KEYPOINTS}
    assert len(set(colours.values())) == len(colours)
    assert all(c.startswith("#") and len(c) == 7 for c in colours.values())


def test_label_studio_parses_it_and_accepts_the_synthetic_export() -> None:
    interface = LabelInterface(labeling_config(CLASSES, KEYPOINTS))
    assert {c.name for c in interface.controls} == {
        "ellipse",
        "polygon",
        "brush",
        "rectangle",
        "keypoint",
    }
    cfg = SyntheticConfig(
        count=2, seed=2, width=160, height=120, panorama_width=256, panorama_share=0.5,
        frames_per_session=2, empty_share=0, near_duplicate_share=0, dark_share=0,
        blurry_share=0,
    )  # fmt: skip
    for img in synthetic.generate(cfg):
        task = synthetic.labelstudio_task(img, "x.jpg", 1)
        assert interface.validate_annotation(task["annotations"][0])
    # Label Studio's label is the alias, the class: what the synthetic export and exports of
    # the interface before labels named their tool both carry.
    assert interface.get_control("polygon").labels == ["person", "license_plate", "vehicle"]
    assert interface.get_control("brush").labels == ["person", "vehicle"]


def test_unknown_classes_get_every_general_shape_and_odd_names_stay_valid() -> None:
    classes = [*CLASSES, "bicycle", 'a&b "<c>"']
    root = ET.fromstring(labeling_config(classes, ["chin"]))
    for name in ("bicycle", 'a&b "<c>"'):
        assert control_for(name) == UNKNOWN_CLASS_CONTROLS
        assert name in labels(root, "PolygonLabels", "polygon")
        assert name in labels(root, "BrushLabels", "brush")
        assert name in labels(root, "RectangleLabels", "rectangle")
        assert name not in labels(root, "EllipseLabels", "ellipse")
    assert labels(root, "KeyPointLabels", "keypoint") == ["chin"]
    colours = [label.get("background") for label in root.iter("Label")]
    by_class: dict[str, str] = {}
    for label in root.iter("Label"):
        by_class.setdefault(label.get("alias") or label.get("value"), label.get("background"))
    assert len(set(by_class.values())) == len(by_class) and len(colours) > len(by_class)
    for name, controls in CLASS_CONTROLS.items():
        assert control_for(name) == controls


def test_without_keypoints_there_is_no_keypoint_control() -> None:
    root = ET.fromstring(labeling_config(["face", "license_plate"], []))
    assert not list(root.iter("KeyPointLabels")) and not list(root.iter("BrushLabels"))


@pytest.mark.parametrize(
    ("classes", "keypoints", "message"),
    [
        (["face", "face"], [], "face listed more than once"),
        (["face", ""], [], "not a name"),
        (["face"], ["nose", "nose"], "keypoints: nose listed more than once"),
        ("face", [], "list of names"),
    ],
)
def test_bad_taxonomies_are_config_errors(classes, keypoints, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        labeling_config(classes, keypoints)

"""The Label Studio labeling interface, generated from the taxonomy.

Control names are fixed, because exports, the converter (`annotation.convert`) and the
synthetic ground truth (`data.synthetic.labelstudio_task`) all refer to regions by them:

| control      | tag               | draws                                           |
|--------------|-------------------|-------------------------------------------------|
| `image`      | `Image`           | the image (`$image`), zoomable                  |
| `ellipse`    | `EllipseLabels`   | faces                                           |
| `polygon`    | `PolygonLabels`   | persons, vehicles, plates as 4-point polygons   |
| `brush`      | `BrushLabels`     | persons, vehicles (pixel masks)                 |
| `rectangle`  | `RectangleLabels` | plates, as rotatable rectangles                 |
| `keypoint`   | `KeyPointLabels`  | head keypoints, one label per keypoint name     |

Label Studio shows one row of labels per control, so a class drawn with several tools appears in
several rows. Each label therefore shows its class and the tool it draws with ("person
(polygon)", "person (brush)"; `label_names`), and hovering it says how to draw; its `alias` is the
bare class name, which is what Label Studio writes into annotations and exports and what it
matches predictions against. Exports of the earlier interface (labels without a tool) and the
synthetic export carry the same class names, so the converter reads them all alike.

Regions linked by the relation `same_object` are one object (an object split by an occluder
or by a panorama's seam, a person and its keypoints). A class the mapping does not know gets
polygon, brush and rectangle, so annotators can still label it with any shape.
"""

from __future__ import annotations

import colorsys
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from data.errors import ConfigError

IMAGE = "image"
SAME_OBJECT = "same_object"

# Control name -> Label Studio tag.
CONTROL_TAGS = {
    "ellipse": "EllipseLabels",
    "polygon": "PolygonLabels",
    "brush": "BrushLabels",
    "rectangle": "RectangleLabels",
    "keypoint": "KeyPointLabels",
}
# Which controls offer each known class: the shapes that fit it best.
CLASS_CONTROLS: dict[str, tuple[str, ...]] = {
    "face": ("ellipse",),
    "person": ("polygon", "brush"),
    "vehicle": ("polygon", "brush"),
    "license_plate": ("rectangle", "polygon"),
}
UNKNOWN_CLASS_CONTROLS = ("polygon", "brush", "rectangle")
KEYPOINT_CONTROL = "keypoint"
# Control name -> how to draw with it: the tooltip of each of its labels.
CONTROL_HINTS = {
    "ellipse": "Ellipse: drag over the face, brows to chin",
    "polygon": "Polygon: click around the outline and close it on the first point",
    "brush": "Brush: paint the pixels; the eraser takes them off",
    "rectangle": "Rectangle: drag a box, then turn it with its rotation handle",
    "keypoint": "Keypoint: click the point; relate it to its person with same_object",
}

# Colours an annotator tells apart at a glance for the known labels; others are spread around
# the hue circle.
_COLOURS = {
    "face": "#ff2d55",
    "person": "#1e90ff",
    "license_plate": "#ffd60a",
    "vehicle": "#34c759",
    "nose": "#ff9500",
    "left_eye": "#af52de",
    "right_eye": "#00c7be",
    "left_ear": "#ff3bd4",
    "right_ear": "#8e8e93",
}
_GOLDEN = 0.6180339887498949


def control_for(label: str) -> tuple[str, ...]:
    """The controls (by name) in which the class `label` can be drawn."""
    return CLASS_CONTROLS.get(label, UNKNOWN_CLASS_CONTROLS)


def labels_by_control(classes: Sequence[str], keypoints: Sequence[str]) -> dict[str, list[str]]:
    """Control name -> its labels, in taxonomy order; controls without labels are left out."""
    _check_names("classes", classes)
    _check_names("keypoints", keypoints)
    out: dict[str, list[str]] = {name: [] for name in CONTROL_TAGS}
    for label in classes:
        for control in control_for(label):
            out[control].append(label)
    out[KEYPOINT_CONTROL] = list(keypoints)
    return {name: labels for name, labels in out.items() if labels}


def labeling_config(classes: Sequence[str], keypoints: Sequence[str]) -> str:
    """The labeling interface XML for a taxonomy (`TaxonomyConfig.classes`, `.keypoints`)."""
    colours = label_colours([*classes, *keypoints])
    view = ET.Element("View")
    ET.SubElement(view, "Image", name=IMAGE, value=f"${IMAGE}", zoom="true")
    for control, labels in labels_by_control(classes, keypoints).items():
        attrs = {"name": control, "toName": IMAGE}
        if control == "brush":
            attrs["smart"] = "false"
        if control == KEYPOINT_CONTROL:
            attrs["strokeWidth"] = "2"
        if control == "rectangle":
            attrs["canRotate"] = "true"
        tag = ET.SubElement(view, CONTROL_TAGS[control], attrs)
        for label in labels:
            names = {"value": label} if control == KEYPOINT_CONTROL else label_names(label, control)
            ET.SubElement(
                tag, "Label", names, background=colours[label], hint=CONTROL_HINTS[control]
            )
    relations = ET.SubElement(view, "Relations")
    ET.SubElement(relations, "Relation", value=SAME_OBJECT)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def label_names(label: str, control: str) -> dict[str, str]:
    """The `Label` attributes of class `label` in `control`: the text shown, "<class> (<tool>)"
    (a control is named after the Label Studio tool it draws with), and the alias that
    annotations and exports carry, the class name."""
    return {"value": f"{label} ({control})", "alias": label}


def label_colours(labels: Sequence[str]) -> dict[str, str]:
    """A distinct `#rrggbb` per label: fixed ones for the known labels, hues for the rest."""
    out: dict[str, str] = {}
    used = set()
    n = 0
    for label in labels:
        colour = _COLOURS.get(label)
        while colour is None or colour in used:
            # Golden-ratio hue steps never repeat and stay far apart for small label counts.
            r, g, b = colorsys.hsv_to_rgb((0.11 + n * _GOLDEN) % 1.0, 0.75, 0.95)
            colour = f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"
            n += 1
        out[label] = colour
        used.add(colour)
    return out


def _check_names(what: str, names: Sequence[str]) -> None:
    if isinstance(names, str):
        raise ConfigError(f"taxonomy.{what} must be a list of names, not the string {names!r}")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"taxonomy.{what}: {name!r} is not a name (a non-empty string)")
    duplicates = sorted({name for name in names if list(names).count(name) > 1})
    if duplicates:
        raise ConfigError(f"taxonomy.{what}: {', '.join(duplicates)} listed more than once")

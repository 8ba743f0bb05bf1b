"""Label Studio JSON export -> COCO instances with person keypoints; the rules are in
`annotation.convert.conversion`."""

from annotation.convert.conversion import to_coco
from annotation.convert.records import Conversion, ImageRef

__all__ = ["Conversion", "ImageRef", "to_coco"]

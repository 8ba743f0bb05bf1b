"""The COCO format: categories from the taxonomy, the checks of ground truth and results files,
and RLE conversion. One owner for each; the stages import it."""

from data.coco.taxonomy import KEYPOINT_CLASS, categories

__all__ = ["KEYPOINT_CLASS", "categories"]

"""The data half of `anonlab validate`: schema, geometry, keypoint, leakage and shift checks of
`prepared/`, each reported as a `Check` (see `check_dataset`)."""

from evaluation.data_checks.dataset import check_dataset

__all__ = ["check_dataset"]

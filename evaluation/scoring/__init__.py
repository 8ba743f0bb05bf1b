"""The parts of the scorer (`evaluation.score`), one concern each: options, the COCO backend
(faster-coco-eval, accumulated as pycocotools), matching, coverage, recall per bucket, bootstrap
intervals, curves, the table."""

"""Scoring (anonymization recall, COCO AP), evaluate, validate."""

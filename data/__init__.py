"""Data stages (collect, review, prepare), image inspection, manifests, the synthetic source."""

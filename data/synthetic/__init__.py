"""The built-in `synthetic` image source: seeded street scenes with exact ground truth, and
their Label Studio export (see `data.synthetic.generate` and `data.synthetic.labelstudio`)."""

from data.synthetic.generate import generate, generate_one
from data.synthetic.labelstudio import labelstudio_task

__all__ = ["generate", "generate_one", "labelstudio_task"]

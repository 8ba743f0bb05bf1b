"""The blurring runtime: artifacts, tiled detection, anonymization, image files, batch and HTTP.

It imports nothing from data, annotation, training or evaluation, so it ships alone. torch and
torchvision are needed only for the PyTorch backend (and by export); the onnxruntime backend
runs without them.

The runtime keeps nothing on disk: onnxruntime's telemetry (which otherwise writes a device id
and an event database under ~/.cache/Microsoft and uploads process events) is switched off
here, before onnxruntime is first imported; it reads the variable once, at import.
"""

import os

os.environ["ORT_DISABLE_TELEMETRY"] = "1"

"""The blurring runtime: artifacts, tiled detection, anonymization, image files, batch and HTTP.

It imports nothing from data, annotation, training or evaluation, so it ships alone. torch and
torchvision are needed only for the PyTorch backend (and by export); the onnxruntime backend
runs without them.
"""

"""Degraded frames: night, defocus and the sensor noise every frame gets."""

from __future__ import annotations

import cv2
import numpy as np


def sensor_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian noise of `sigma` levels: a random tile repeated over the frame (drawing a value
    per pixel costs more than all the rest of a frame's background)."""
    tile = rng.standard_normal((128, 128, shape[2]), dtype=np.float32) * np.float32(sigma)
    reps = (-(-shape[0] // 128), -(-shape[1] // 128), 1)
    return np.tile(tile, reps)[: shape[0], : shape[1]]


def night(image: np.ndarray, lit: np.ndarray, glow: np.ndarray) -> np.ndarray:
    """Night-like: everything dim and blue, some windows and the vehicle lights still bright."""
    dim = 255.0 * 0.17 * (image / 255.0) ** 1.7 * np.array([0.8, 0.88, 1.15], np.float32)
    dim[lit] = (150, 120, 70)
    dim[glow] = image[glow]
    return dim.astype(np.float32)


def defocus(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(4.5, 7.0) * image.shape[1] / 640
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT101)

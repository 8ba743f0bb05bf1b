"""How the pixels are seen: upright, as a viewer shows them (EXIF orientation applied), and as
the detector's uint8 RGB. Both orientation maps are exact pixel permutations, so anonymizing
the upright view and mapping it back changes nothing else."""

from __future__ import annotations

import cv2
import numpy as np

# EXIF orientation -> how the stored pixels are turned to show them upright.
_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}
# ... and back: 6 and 8 undo each other, the others undo themselves.
_INVERSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels as a viewer shows them (EXIF orientation applied); a contiguous copy unless
    the orientation is 1 (then `pixels` itself)."""
    if orientation == 1:
        return pixels
    return np.ascontiguousarray(_UPRIGHT[_valid(orientation)](pixels))


def from_upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Upright pixels turned back to stored orientation: `from_upright(upright(p, o), o) == p`."""
    if orientation == 1:
        return pixels
    return np.ascontiguousarray(_UPRIGHT[_INVERSE[_valid(orientation)]](pixels))


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) as a viewer shows an image stored `width` x `height` with this EXIF
    orientation: 5 to 8 turn it a quarter, the others keep its size."""
    return (height, width) if _valid(orientation) >= 5 else (width, height)


def _valid(orientation: int) -> int:
    if orientation not in _UPRIGHT:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")
    return orientation


def detector_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) of any pixels here: grey repeated, alpha left out (a viewer that
    ignores it shows the colours), 16 bits cut to their top 8; `pixels` itself when they are
    uint8 RGB already."""
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8 or uint16, got {pixels.dtype}")
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    channels = pixels.shape[2]
    if channels in (1, 2):
        return cv2.cvtColor(np.ascontiguousarray(pixels[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return np.ascontiguousarray(pixels[:, :, :3])
    return pixels

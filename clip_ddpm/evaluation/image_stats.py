"""Simple statistics of uint8 images that catch what accuracy does not.

The shapes' backgrounds are neutral (grey levels, R = G = B up to noise). A generator that tints
them is visibly wrong yet can still draw the right shape in the right colour, so the study
reports how coloured the image border is: the mean saturation max(R,G,B) − min(R,G,B) of the
pixels in a frame along the edges, beside the same number for real images.
"""
from __future__ import annotations

import numpy as np


def border_saturation(images: np.ndarray, width: int = 2) -> float:
    """Mean max(R,G,B) − min(R,G,B) (0-255) over the `width`-pixel frame of uint8 [N, H, W, 3]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) <= 2 * width:
        raise ValueError(f"need uint8 [N, H, W, 3] images larger than the frame, got {images.shape}")
    pixels = images.astype(np.int16)
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    frame = np.ones(saturation.shape[1:], bool)
    frame[width:-width, width:-width] = False
    return float(saturation[:, frame].mean())

"""Writing image grids as PNG: rows and columns of equally sized uint8 images."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image


def grid_image(images: np.ndarray, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 [R, C, H, W, 3] -> one uint8 [R*(H+p)+p, C*(W+p)+p, 3] picture."""
    rows, cols, h, w, ch = images.shape
    out = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, ch), pad_value, np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = padding + r * (h + padding), padding + c * (w + padding)
            out[y:y + h, x:x + w] = images[r, c]
    return out


def save_grid(images: np.ndarray, path: str, scale: int = 1) -> None:
    """Saves a [R, C, H, W, 3] uint8 grid as PNG, enlarged by `scale` (nearest) for viewing."""
    picture = Image.fromarray(grid_image(images))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    picture.save(path)

"""Any decoded picture to the square uint8 RGB array the model trains on.

tfds and folder sources share this one geometry (the central square, resampled with an
antialiasing filter, which equals resizing the shortest side and centre-cropping), so a
dataset looks the same whichever source it came from.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

# Modes of 16-bit (and 32-bit integer) greyscale pictures, such as 16-bit PNGs. PIL's own
# conversion to RGB clips their 0..65535 values at 255, which turns them nearly white.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of `image`; transparent parts are composited onto white (as transformers'
    CLIPImageProcessor does) rather than taking arbitrary colours, and 16-bit greyscale is
    scaled to 8 bits (65535 -> 255) rather than clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GREY_MODES:
        grey = np.clip(np.round(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def fit_square(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the central square of `image`, antialiased to `size` pixels.

    Accepts a PIL image or a uint8 array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4].
    """
    if isinstance(image, np.ndarray):
        array = image if image.ndim == 3 else image[..., None]
        if array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        image = Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)),
                                mode="RGBA" if array.shape[-1] == 4 else "RGB")
    image = to_rgb(image)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    # PIL widens the bicubic kernel when shrinking, which is what antialiasing means here.
    square = image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    return np.asarray(square, dtype=np.uint8)

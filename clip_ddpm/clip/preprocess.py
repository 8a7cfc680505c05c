"""Images -> CLIP pixel values: resized (bicubic), centre crop, [0,1], mean/std.

The resize is to a shortest side (size={"shortest_edge": n}, CLIP's own), or to an exact
height and width (size={"height": h, "width": w}, which some checkpoints carry), as
transformers reads the same preprocessor_config.json.

``preprocess_images`` does exactly what transformers' ``CLIPImageProcessor`` does (PIL bicubic
on uint8, the same output-size rounding and crop offsets, the same float arithmetic), so
embeddings computed here match those of anyone using the checkpoint through transformers.
``preprocess_images_jax`` is the on-device version for images that already live on an
accelerator (generated samples), where a host round trip through PIL would stall the program;
it agrees with the PIL path to within one grey level.
Outputs are NHWC float32, the layout the Flax vision tower takes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from clip_ddpm.data.resize import to_rgb
from clip_ddpm.errors import UserError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_FILE = "preprocessor_config.json"
_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the value transformers stores as "resample"


class CLIPPreprocessError(UserError, ValueError):
    """Images or a preprocessor config that CLIP preprocessing cannot use."""


def _read_size(value: Any) -> tuple[int, tuple[int, int] | None]:
    """(shortest edge, exact (height, width) or None) of a preprocessor_config.json "size"."""
    if isinstance(value, int):
        return value, None
    if isinstance(value, Mapping):
        if value.get("shortest_edge") is not None and value.get("longest_edge") is None:
            return int(value["shortest_edge"]), None
        if value.get("height") is not None and value.get("width") is not None:
            height, width = int(value["height"]), int(value["width"])
            return min(height, width), (height, width)
    raise CLIPPreprocessError(f"preprocessor_config.json: size={value!r} is not supported; expected "
                              "{'shortest_edge': n} or {'height': h, 'width': w}.")


def _read_crop(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping) and value.get("height") is not None and value.get("height") == value.get("width"):
        return int(value["height"])
    raise CLIPPreprocessError(f"preprocessor_config.json: crop_size={value!r} is not supported; the model takes "
                              "square images, so the crop must be square.")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """The parts of transformers' ``CLIPImageProcessor`` config that CLIP checkpoints use."""

    shortest_edge: int = 224
    crop_size: int = 224
    resize_to: tuple[int, int] | None = None  # (height, width): resized to exactly this, not by its shortest side
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = _BICUBIC

    @classmethod
    def for_image_size(cls, image_size: int) -> PreprocessConfig:
        """OpenAI's preprocessing for a model that takes ``image_size`` pixels square."""
        return cls(shortest_edge=image_size, crop_size=image_size)

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            if d.get(flag) is False:
                raise CLIPPreprocessError(f"preprocessor_config.json sets {flag}=false; CLIP preprocessing "
                                          "always resizes, crops, rescales and normalises.")
        default = cls()
        shortest_edge, resize_to = _read_size(d.get("size", default.shortest_edge))
        return cls(
            shortest_edge=shortest_edge,
            resize_to=resize_to,
            crop_size=_read_crop(d.get("crop_size", default.crop_size)),  # transformers' default, 224
            image_mean=tuple(float(x) for x in d.get("image_mean", default.image_mean)),
            image_std=tuple(float(x) for x in d.get("image_std", default.image_std)),
            rescale_factor=float(d.get("rescale_factor", default.rescale_factor)),
            resample=int(d.get("resample", default.resample)),
        )

    @classmethod
    def load(cls, directory: str | os.PathLike, image_size: int) -> PreprocessConfig:
        """The checkpoint's preprocessor_config.json, else OpenAI's defaults at ``image_size``."""
        path = Path(directory) / PREPROCESSOR_FILE
        if not path.is_file():
            return cls.for_image_size(image_size)
        return cls.from_hf_dict(json.loads(path.read_text()))

    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True, "resample": self.resample,
            "size": ({"shortest_edge": self.shortest_edge} if self.resize_to is None
                     else {"height": self.resize_to[0], "width": self.resize_to[1]}),
            "do_center_crop": True, "crop_size": {"height": self.crop_size, "width": self.crop_size},
            "do_rescale": True, "rescale_factor": self.rescale_factor,
            "do_normalize": True, "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "do_convert_rgb": True,
        }

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory, PREPROCESSOR_FILE).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")


def _resized_hw(height: int, width: int, config: PreprocessConfig) -> tuple[int, int]:
    """Output size of the resize: the exact size asked for, or the shortest side made
    `config.shortest_edge` with the long side truncated, as torchvision does."""
    if config.resize_to is not None:
        return config.resize_to
    shortest = config.shortest_edge
    if width <= height:
        return int(shortest * height / width), shortest
    return shortest, int(shortest * width / height)


def _to_rgb_pil(image: Any) -> Image.Image:
    """A PIL RGB image from an array or a PIL image (transparency composited onto white)."""
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise CLIPPreprocessError(
                f"images must be uint8 (got {arr.dtype}); convert floats in [0, 1] with "
                "np.round(x * 255).astype(np.uint8), or use preprocess_images_jax.")
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise CLIPPreprocessError(f"an image must be [H, W], [H, W, 1|3|4]; got shape {arr.shape}.")
        image = Image.fromarray(arr)
    return to_rgb(image)


def _center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """Centre crop of an [H, W, C] array; a side shorter than ``size`` is zero-padded first."""
    h, w = arr.shape[:2]
    if h < size or w < size:
        ph, pw = max(size, h), max(size, w)
        padded = np.zeros((ph, pw, arr.shape[2]), arr.dtype)
        top, left = math.ceil((ph - h) / 2), math.ceil((pw - w) / 2)
        padded[top:top + h, left:left + w] = arr
        arr, h, w = padded, ph, pw
    top, left = (h - size) // 2, (w - size) // 2
    return arr[top:top + size, left:left + size]


def as_image_list(images: Any) -> list[Any]:
    """An [N, ...] array, one PIL image or a sequence of images, as a list of images."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise CLIPPreprocessError(f"images must be [N, H, W] or [N, H, W, C]; got shape {images.shape}.")
        return list(images)
    if isinstance(images, Sequence):
        return list(images)
    raise CLIPPreprocessError(f"images must be an array, a PIL image or a sequence of them; got {type(images)}.")


def preprocess_images(images: Any, config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """uint8 images (an [N, H, W, 3] array, or a list of arrays / PIL images of any sizes)
    -> float32 [N, crop, crop, 3], identical to ``CLIPImageProcessor``'s pixel values (NHWC)."""
    items = as_image_list(images)
    out = np.empty((len(items), config.crop_size, config.crop_size, 3), np.float32)
    mean = np.asarray(config.image_mean, np.float32)
    std = np.asarray(config.image_std, np.float32)
    for i, image in enumerate(items):
        pil = _to_rgb_pil(image)
        h, w = _resized_hw(pil.height, pil.width, config)
        if (h, w) != (pil.height, pil.width):
            pil = pil.resize((w, h), resample=config.resample)
        arr = _center_crop(np.asarray(pil), config.crop_size)
        # The same arithmetic as transformers: rescale in float64, then normalise in float32.
        scaled = (arr.astype(np.float64) * config.rescale_factor).astype(np.float32)
        out[i] = (scaled - mean) / std
    return out


def _resize_axis(x: jax.Array, axis: int, size: int, quantize: bool) -> jax.Array:
    """One separable bicubic pass over 0..255 values, clipped (and rounded) as PIL's 8-bit path is."""
    if x.shape[axis] == size:
        return x
    shape = list(x.shape)
    shape[axis] = size
    x = jnp.clip(jax.image.resize(x, tuple(shape), method="bicubic", antialias=True), 0.0, 255.0)
    return jnp.floor(x + 0.5) if quantize else x


def preprocess_images_jax(images: jax.Array, config: PreprocessConfig = PreprocessConfig()) -> jax.Array:
    """[N, H, W, 3] uint8 images, or floats in [0, 1] -> [N, crop, crop, 3] CLIP pixel values.

    Jittable, for images already on device (generated samples). PIL resizes 8-bit images in two
    passes, width then height, clipping and rounding to 8 bits after each; ``jax.image.resize``'s
    antialiased bicubic is the same Keys kernel, so doing the same passes here reproduces
    ``preprocess_images`` on uint8 input to within one grey level (see the tests). Float input
    is clipped between passes but not rounded, which is the better answer when no uint8 exists.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise CLIPPreprocessError(f"images must be [N, H, W, 3]; got shape {images.shape}.")
    quantize = images.dtype == jnp.uint8
    x = images.astype(jnp.float32) * (1.0 if quantize else 255.0)
    n, height, width, _ = images.shape
    h, w = _resized_hw(height, width, config)
    x = _resize_axis(_resize_axis(x, 2, w, quantize), 1, h, quantize)
    s = config.crop_size
    if h < s or w < s:
        ph, pw = max(s, h), max(s, w)
        top, left = math.ceil((ph - h) / 2), math.ceil((pw - w) / 2)
        x = jnp.pad(x, ((0, 0), (top, ph - h - top), (left, pw - w - left), (0, 0)))
        h, w = ph, pw
    top, left = (h - s) // 2, (w - s) // 2
    x = x[:, top:top + s, left:left + s] * config.rescale_factor
    mean = jnp.asarray(config.image_mean, jnp.float32)
    std = jnp.asarray(config.image_std, jnp.float32)
    return (x - mean) / std

"""Captions, prompts and images -> L2-normalised CLIP embeddings, in fixed-size jitted batches.

This is what the DDPM side uses to turn its conditioning sources into context vectors. Inputs
are cut into batches whose shapes come from a small fixed set (powers of two up to
``batch_size``), so a whole dataset is embedded with a couple of compilations and bounded memory.
``name`` and ``weights_hash`` identify the model in embedding-cache manifests.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from clip_ddpm.clip import preprocess as clip_preprocess
from clip_ddpm.clip.tokenizer import tokenize
from clip_ddpm.clip.weights import load_clip, resolve_clip_directory
from clip_ddpm.models.clip import CLIP, CLIPConfig, CLIPError, l2_normalize


def params_sha256(params: Mapping[str, Any]) -> str:
    """sha256 over every parameter's path, shape and float32 bytes, in sorted path order.

    Hashing the parameters rather than a file means the same weights get the same hash whether
    they came from the hub, a local checkpoint or memory (and whatever dtype they were stored in).
    """
    h = hashlib.sha256()
    for path, value in sorted(traverse_util.flatten_dict(dict(params)).items()):
        arr = np.asarray(value, dtype=np.float32)
        h.update("/".join(path).encode())
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _bucket(n: int, batch_size: int) -> int:
    """The padded size of a batch of ``n``: the next power of two, at most ``batch_size``."""
    return min(batch_size, 1 << max(0, (n - 1).bit_length()))


class CLIPEncoder:
    """A CLIP model ready to embed texts and images on the default device.

    Build it with ``CLIPEncoder.from_pretrained("openai/clip-vit-base-patch32")`` (or a checkpoint
    directory), or from an in-memory ``(config, params, tokenizer)``, e.g. a CLIP just trained.
    """

    def __init__(self, config: CLIPConfig, params: Mapping[str, Any], tokenizer=None, *,
                 name: str = "in-memory", preprocess: clip_preprocess.PreprocessConfig | None = None,
                 dtype: Any = jnp.float32, batch_size: int = 256, context_length: int | None = None,
                 attention_implementation: str | None = None):
        if batch_size < 1:
            raise CLIPError(f"batch_size={batch_size}; it must be positive.")
        self.config = config
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.weights_hash = params_sha256(params)
        self.preprocess = preprocess or clip_preprocess.PreprocessConfig.for_image_size(config.vision.image_size)
        if self.preprocess.crop_size != config.vision.image_size:
            raise CLIPError(f"preprocessing crops to {self.preprocess.crop_size} pixels but the model "
                            f"takes {config.vision.image_size}.")
        self.context_length = context_length or config.text.max_position_embeddings
        self._params = jax.device_put(params)  # moved once, not on every call
        module = CLIP(config, dtype=dtype, attention_implementation=attention_implementation)

        def text_fn(p, ids, mask):
            return l2_normalize(module.apply({"params": p}, ids, mask, method=CLIP.encode_text))

        def image_fn(p, pixels):
            return l2_normalize(module.apply({"params": p}, pixels, method=CLIP.encode_image))

        self._text_fn = jax.jit(text_fn)
        self._image_fn = jax.jit(image_fn)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, **kwargs: Any) -> CLIPEncoder:
        """Loads a hub id or checkpoint directory (see ``clip_weights.load_clip``)."""
        directory = resolve_clip_directory(name_or_dir)
        config, params, tokenizer = load_clip(directory)
        kwargs.setdefault("preprocess", clip_preprocess.PreprocessConfig.load(directory, config.vision.image_size))
        kwargs.setdefault("name", str(name_or_dir))
        return cls(config, params, tokenizer, **kwargs)

    @property
    def embedding_dim(self) -> int:
        return self.config.projection_dim

    def _batched(self, n: int, batch_size: int | None, run: Callable[[int, int, int], np.ndarray]) -> np.ndarray:
        size = batch_size or self.batch_size
        out = np.empty((n, self.embedding_dim), np.float32)
        for start in range(0, n, size):
            stop = min(n, start + size)
            out[start:stop] = run(start, stop, _bucket(stop - start, size))[: stop - start]
        return out

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """float32 [len(texts), projection_dim], unit norm. Over-long prompts are cut, with a warning."""
        if self.tokenizer is None:
            raise CLIPError(f"CLIP model {self.name!r} has no tokenizer, so it cannot encode text.")
        ids, mask = tokenize(self.tokenizer, texts, self.context_length)

        def run(start: int, stop: int, padded: int) -> np.ndarray:
            pad = ((0, padded - (stop - start)), (0, 0))
            b_ids = np.pad(ids[start:stop], pad, mode="edge")
            b_mask = np.pad(mask[start:stop], pad, mode="edge")
            return np.asarray(self._text_fn(self._params, b_ids, b_mask))

        return self._batched(len(ids), batch_size, run)

    def encode_images(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """uint8 images ([N, H, W, 3] array or a list of any sizes) -> float32 [N, projection_dim], unit norm."""
        items = clip_preprocess.as_image_list(images)

        def run(start: int, stop: int, padded: int) -> np.ndarray:
            pixels = clip_preprocess.preprocess_images(items[start:stop], self.preprocess)
            pixels = np.pad(pixels, ((0, padded - len(pixels)), (0, 0), (0, 0), (0, 0)), mode="edge")
            return np.asarray(self._image_fn(self._params, pixels))

        return self._batched(len(items), batch_size, run)

    def encode_pixel_values(self, pixel_values: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Like ``encode_images`` for already preprocessed NHWC float32 pixel values."""
        pixel_values = np.asarray(pixel_values, np.float32)

        def run(start: int, stop: int, padded: int) -> np.ndarray:
            pixels = np.pad(pixel_values[start:stop], ((0, padded - (stop - start)), (0, 0), (0, 0), (0, 0)),
                            mode="edge")
            return np.asarray(self._image_fn(self._params, pixels))

        return self._batched(len(pixel_values), batch_size, run)

"""Captions, prompts and images -> CLIP embeddings, in jitted batches split over the devices.

This is what everything outside CLIP training uses to embed: the embedding cache, prompt
contexts, the similarity tool and the evaluation of a trained CLIP. Parameters are placed on
the devices once (replicated over a 1-D 'data' mesh, by default this process's devices) and every
batch is split along 'data', so embedding a dataset is data-parallel with no communication but
the final gather. Inputs are cut into batches whose sizes come from a small fixed set (powers of
two up to ``batch_size``, rounded to the device count), so a whole dataset is embedded with a
couple of compilations and bounded memory; the compiled programs are shared by every encoder of
the same model. ``name`` and ``weights_hash`` identify the model in embedding-cache manifests;
``fingerprint`` adds to the weights what else decides the embeddings (the config: activation,
layer-norm eps, end-of-text id, heads, ...; and the compute dtype), and keys caches and runs.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from clip_ddpm.clip import preprocess as clip_preprocess
from clip_ddpm.clip.tokenizer import tokenize
from clip_ddpm.clip.weights import load_clip, resolve_clip_directory
from clip_ddpm.models.clip import CLIP, CLIPConfig, CLIPError, l2_normalize
from clip_ddpm.training import parallel


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


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_batch(n: int, batch_size: int, num_devices: int = 1) -> int:
    """The padded size of a batch of ``n``: the next power of two (at most ``batch_size``),
    rounded up to a multiple of ``num_devices``. A few fixed shapes keep compilations few; the
    rounding gives every device an equal slice."""
    return _round_up(min(batch_size, 1 << max(0, (n - 1).bit_length())), num_devices)


def map_in_batches(fn: Callable[..., Any], arrays: Sequence[np.ndarray], batch_size: int,
                   num_devices: int = 1) -> np.ndarray:
    """``fn`` over the rows of row-aligned ``arrays``, in batches padded (by repeating the last
    row) to the sizes of ``padded_batch``; the padding rows are dropped from the result."""
    n = len(arrays[0])
    size = _round_up(batch_size, num_devices)
    out = []
    for start in range(0, n, size):
        parts = [np.asarray(a[start:start + size]) for a in arrays]
        rows = len(parts[0])
        pad = padded_batch(rows, size, num_devices) - rows
        if pad:
            parts = [np.concatenate([p, np.repeat(p[-1:], pad, axis=0)]) for p in parts]
        out.append(np.asarray(fn(*parts))[:rows])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _text_embeddings(model: CLIP, normalize: bool, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
    features = model.apply({"params": params}, ids, mask, method=CLIP.encode_text)
    return l2_normalize(features) if normalize else features


@functools.partial(jax.jit, static_argnums=(0, 1))
def _image_embeddings(model: CLIP, normalize: bool, params: Any, pixels: jax.Array) -> jax.Array:
    features = model.apply({"params": params}, pixels, method=CLIP.encode_image)
    return l2_normalize(features) if normalize else features


def clip_fingerprint(weights_hash: str, config: CLIPConfig, compute_dtype: str) -> str:
    """sha256 of what makes a CLIP's embeddings: its weights, its config and its compute dtype.
    Equal weights under another activation, layer-norm eps, end-of-text id or head count (or in
    bfloat16 instead of float32) give other embeddings, so they are another model here."""
    identity = {"weights": weights_hash, "config": config.to_hf_dict(), "compute_dtype": compute_dtype}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


class CLIPEncoder:
    """A CLIP model ready to embed texts and images on the devices of ``mesh``.

    Build it with ``CLIPEncoder.from_pretrained("openai/clip-vit-base-patch32")`` (or a checkpoint
    directory), or from an in-memory ``(config, params, tokenizer)``, e.g. a CLIP just trained.
    ``batch_size`` is the global batch; it is rounded up to a multiple of the device count.
    The ``encode_*`` methods give unit-norm embeddings; ``features=True`` gives the projections
    as the model outputs them (their dot products are CLIP's unscaled logits).
    """

    def __init__(self, config: CLIPConfig, params: Mapping[str, Any], tokenizer=None, *,
                 name: str = "in-memory", preprocess: clip_preprocess.PreprocessConfig | None = None,
                 dtype: Any = jnp.float32, batch_size: int = 256, context_length: int | None = None,
                 attention_implementation: str | None = None, mesh: Mesh | None = None):
        if batch_size < 1:
            raise CLIPError(f"batch_size={batch_size}; it must be positive.")
        self.config = config
        self.tokenizer = tokenizer
        self.name = name
        self.weights_hash = params_sha256(params)
        self.compute_dtype = jnp.dtype(dtype).name
        self.fingerprint = clip_fingerprint(self.weights_hash, config, self.compute_dtype)
        self.preprocess = preprocess or clip_preprocess.PreprocessConfig.for_image_size(config.vision.image_size)
        if self.preprocess.crop_size != config.vision.image_size:
            raise CLIPError(f"preprocessing crops to {self.preprocess.crop_size} pixels but the model "
                            f"takes {config.vision.image_size}.")
        self.context_length = context_length or config.text.max_position_embeddings
        self.mesh = mesh if mesh is not None else parallel.make_mesh(jax.local_devices())
        self.num_devices = int(self.mesh.devices.size)
        self.batch_size = _round_up(batch_size, self.num_devices)
        self._model = CLIP(config, dtype=dtype, attention_implementation=attention_implementation)
        self._params = jax.device_put(params, parallel.replicated(self.mesh))  # placed once, here
        self._batch_sharding = parallel.data_sharded(self.mesh)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, revision: str = "", **kwargs: Any) -> CLIPEncoder:
        """Loads a hub id (at `revision`, if given) or checkpoint directory (see ``clip.weights.load_clip``)."""
        directory = resolve_clip_directory(name_or_dir, revision)
        config, params, tokenizer = load_clip(directory)
        kwargs.setdefault("preprocess", clip_preprocess.PreprocessConfig.load(directory, config.vision.image_size))
        kwargs.setdefault("name", str(name_or_dir))
        return cls(config, params, tokenizer, **kwargs)

    @property
    def embedding_dim(self) -> int:
        return self.config.projection_dim

    def _shard(self, x: np.ndarray) -> jax.Array:
        return jax.device_put(x, self._batch_sharding)

    def _in_batches(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray], batch_size: int | None) -> np.ndarray:
        out = map_in_batches(fn, arrays, batch_size or self.batch_size, self.num_devices)
        return out.reshape(len(arrays[0]), self.embedding_dim).astype(np.float32)

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None, features: bool = False) -> np.ndarray:
        """float32 [len(texts), projection_dim]. Over-long prompts are cut, with a warning."""
        if self.tokenizer is None:
            raise CLIPError(f"CLIP model {self.name!r} has no tokenizer, so it cannot encode text.")
        ids, mask = tokenize(self.tokenizer, texts, self.context_length)
        run = lambda i, m: _text_embeddings(self._model, not features, self._params,  # noqa: E731
                                            self._shard(i), self._shard(m))
        return self._in_batches(run, [ids, mask], batch_size)

    def encode_images(self, images: Any, batch_size: int | None = None, features: bool = False) -> np.ndarray:
        """uint8 images ([N, H, W, 3] array or a list of any sizes) -> float32 [N, projection_dim],
        preprocessed exactly as transformers' CLIPImageProcessor does."""
        items = clip_preprocess.as_image_list(images)
        index = np.arange(len(items))
        run = lambda rows: _image_embeddings(  # noqa: E731
            self._model, not features, self._params,
            self._shard(clip_preprocess.preprocess_images([items[i] for i in rows], self.preprocess)))
        return self._in_batches(run, [index], batch_size)

    def encode_pixel_values(self, pixel_values: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Like ``encode_images`` for already preprocessed NHWC float32 pixel values."""
        run = lambda pixels: _image_embeddings(self._model, True, self._params, self._shard(pixels))  # noqa: E731
        return self._in_batches(run, [np.asarray(pixel_values, np.float32)], batch_size)

    def embed_pixels(self, pixel_values: Any) -> jax.Array:
        """One batch of preprocessed NHWC pixel values -> unit-norm embeddings left on the devices,
        sharded along 'data' (the batch must split evenly over the devices)."""
        if len(pixel_values) % self.num_devices:
            raise ValueError(f"a batch of {len(pixel_values)} does not split over {self.num_devices} devices")
        return _image_embeddings(self._model, True, self._params, self._shard(pixel_values))

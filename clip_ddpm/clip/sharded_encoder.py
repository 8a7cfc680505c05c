"""CLIPEncoder, data-parallel: parameters replicated, every batch split along the 'data' axis.

Embedding a whole dataset is embarrassingly parallel, so the encoder's jitted towers are run
with the batch sharded over a 1-D ('data',) mesh (clip_ddpm.training.parallel) and the parameters
replicated; XLA then runs one slice of the batch per device with no communication besides the
final gather to the host. Everything else (tokenising, preprocessing, identity of the weights)
is the plain CLIPEncoder's, so both give the same embeddings.

By default the mesh holds this process's devices only: in a multi-host job each process embeds
its own slice of the dataset, which is what its per-process cache holds.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from clip_ddpm.training import parallel
from clip_ddpm.clip.encoder import CLIPEncoder
from clip_ddpm.models.clip import CLIPConfig


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_batch(n: int, batch_size: int, num_devices: int) -> int:
    """The padded size of a batch of ``n``: the next power of two (at most ``batch_size``, a
    multiple of ``num_devices``), rounded up to a multiple of ``num_devices``. A few fixed shapes
    keep compilations few; the rounding gives every device an equal slice."""
    return _round_up(min(batch_size, 1 << max(0, (n - 1).bit_length())), num_devices)


class ShardedCLIPEncoder(CLIPEncoder):
    """A CLIPEncoder whose batches are split over the devices of ``mesh``.

    ``batch_size`` is the global batch; it is rounded up to a multiple of the device count, and
    so is every padded tail batch, so each device always receives an equal slice.
    ``ShardedCLIPEncoder.from_pretrained(name_or_dir, mesh=...)`` works as for the base class.
    """

    def __init__(self, config: CLIPConfig, params: Mapping[str, Any], tokenizer=None, *,
                 mesh: Mesh | None = None, **kwargs: Any):
        super().__init__(config, params, tokenizer, **kwargs)
        self.mesh = mesh if mesh is not None else parallel.make_mesh(jax.local_devices())
        self.num_devices = int(self.mesh.devices.size)
        self.batch_size = _round_up(self.batch_size, self.num_devices)
        self._params = jax.device_put(params, parallel.replicated(self.mesh))
        batch = parallel.data_sharded(self.mesh)
        text_fn, image_fn = self._text_fn, self._image_fn

        # The base class's jitted towers, fed committed sharded inputs: jit compiles them for
        # that layout, so the same model code serves one device and many.
        self._text_fn = lambda p, ids, mask: text_fn(p, jax.device_put(ids, batch), jax.device_put(mask, batch))
        self._image_fn = lambda p, pixels: image_fn(p, jax.device_put(pixels, batch))

    def embed_pixels(self, pixel_values: Any) -> jax.Array:
        """One batch of preprocessed NHWC pixel values -> unit-norm embeddings left on the devices,
        sharded along 'data' (the batch must split evenly over the devices)."""
        if len(pixel_values) % self.num_devices:
            raise ValueError(f"a batch of {len(pixel_values)} does not split over {self.num_devices} devices")
        return self._image_fn(self._params, pixel_values)

    def _batched(self, n: int, batch_size: int | None, run: Callable[[int, int, int], np.ndarray]) -> np.ndarray:
        size = _round_up(batch_size or self.batch_size, self.num_devices)
        out = np.empty((n, self.embedding_dim), np.float32)
        for start in range(0, n, size):
            stop = min(n, start + size)
            padded = padded_batch(stop - start, size, self.num_devices)
            out[start:stop] = run(start, stop, padded)[: stop - start]
        return out

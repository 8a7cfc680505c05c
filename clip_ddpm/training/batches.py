"""Batches drawn on the devices from a dataset that lives there, in a per-epoch random order.

Both trainers keep their (small) datasets in device memory and draw every batch inside the
jitted step, so the training loop never waits on the host and the order depends only on the
key and the step: a resumed run draws exactly the batches the uninterrupted run drew.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]


def draw_batch(data: Batch, key: jax.Array, step: jax.Array, batch_size: int,
               random_flip: bool = False) -> Batch:
    """Batch number `step` of a dataset held on the devices.

    Examples are visited in a fresh random order each epoch (the remainder of an epoch is
    dropped), so every image is seen once per epoch and the order depends only on key and step.
    data["image"] is uint8 [N, H, W, 3]; other entries are aligned per-example arrays.
    """
    n = data["image"].shape[0]
    steps_per_epoch = n // batch_size
    epoch, within = step // steps_per_epoch, step % steps_per_epoch
    order_key, flip_key = jax.random.split(key)
    order = jax.random.permutation(jax.random.fold_in(order_key, epoch), n)
    index = jax.lax.dynamic_slice(order, (within * batch_size,), (batch_size,))
    batch = {name: jnp.take(values, index, axis=0) for name, values in data.items()}
    image = batch["image"].astype(jnp.float32) / 127.5 - 1.0
    if random_flip:
        flip = jax.random.bernoulli(jax.random.fold_in(flip_key, step), 0.5, (batch_size,))
        image = jnp.where(flip[:, None, None, None], image[:, :, ::-1, :], image)
    batch["image"] = image
    return batch

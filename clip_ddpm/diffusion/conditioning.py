"""What happens to a context vector between the dataset and the U-Net: pure functions.

Classifier-free guidance needs the model to learn an unconditional prediction too, so during
training contexts are dropped by a Bernoulli mask. Two ways to drop:
  * "sample": the whole context vector of an example is zeroed. The all-zeros context that the
    sampler uses as "unconditional" is then exactly what training saw.
  * "elementwise": a mask shaped like the context, as in the course. For one-hot labels the two
    agree in spirit; for dense embeddings the all-zeros context is then (almost) never seen in
    training, which is kept on purpose so the difference can be measured.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

DROP_MODES = ("sample", "elementwise")


def context_keep_mask(key: jax.Array, context_shape: tuple[int, ...], drop_prob: float,
                      mode: str = "sample") -> jax.Array:
    """1.0 where the context is kept, 0.0 where dropped: [B, 1] for "sample", [B, D] otherwise."""
    if mode not in DROP_MODES:
        raise ValueError(f"unknown context drop mode {mode!r}; expected one of {DROP_MODES}")
    shape = (context_shape[0], 1) if mode == "sample" else tuple(context_shape)
    return jax.random.bernoulli(key, 1.0 - drop_prob, shape).astype(jnp.float32)


def drop_context(key: jax.Array, context: jax.Array, drop_prob: float, mode: str = "sample") -> jax.Array:
    """The context with the classifier-free dropout mask applied."""
    if drop_prob <= 0.0:
        return context
    return context * context_keep_mask(key, context.shape, drop_prob, mode).astype(context.dtype)


def one_hot_context(labels: jax.Array, num_classes: int) -> jax.Array:
    """Class labels [B] -> one-hot contexts [B, num_classes] (the course's class conditioning)."""
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def l2_normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Unit-norm rows: CLIP embeddings are compared by cosine, so their norm carries no meaning."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)

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

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

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


# Closing the modality gap. A model trained on CLIP *image* embeddings is sampled from *text*
# embeddings, which sit in another region of the sphere (the "modality gap"). Two remedies,
# applied to the (unit) training contexts inside the jitted step, before the dropout mask:
#   "lafite"    LAFITE (Zhou et al. 2022): h' = normalize((1 - xi) h + xi eps/|eps|), eps ~ N(0, I),
#               fresh at every step, so the model learns a neighbourhood of each image embedding
#               wide enough to hold the matching text embedding. Nothing changes at sampling.
#   "gapshift"  C3 / CapDec style: subtract the mean training image embedding and renormalise; at
#               sampling subtract the mean text embedding instead, so both modalities are centred
#               on the same point; training adds Gaussian noise (std per dimension) and renormalises
#               again, so training and sampling contexts have the same unit length.
CONTEXT_TRANSFORMS = ("none", "lafite", "gapshift")


def lafite_perturb(key: jax.Array, context: jax.Array, xi: float) -> jax.Array:
    """normalize((1 - xi) h + xi eps / |eps|) with eps ~ N(0, I) drawn per row."""
    eps = jax.random.normal(key, context.shape, jnp.float32)
    return l2_normalize((1.0 - xi) * context + xi * l2_normalize(eps))


def gap_shift(context: jax.Array, mean: jax.Array) -> jax.Array:
    """normalize(h - mean): the embedding seen from its modality's centre."""
    return l2_normalize(context - mean)


def noisy_gap_shift(key: jax.Array, context: jax.Array, mean: jax.Array, noise_std: float) -> jax.Array:
    """normalize(normalize(h - mean) + noise_std * N(0, I)): the training form of "gapshift"."""
    shifted = gap_shift(context, mean)
    if noise_std <= 0.0:
        return shifted
    return l2_normalize(shifted + noise_std * jax.random.normal(key, context.shape, jnp.float32))


@dataclasses.dataclass(frozen=True)
class ContextTransform:
    """A gap-closing transform with its constants: how training contexts and sampling prompts
    are mapped before they reach the U-Net (see CONTEXT_TRANSFORMS).

    train_mean / sample_mean (gapshift only): the mean training image embedding and the mean
    text embedding of the training captions, both over the training set.
    """

    kind: str = "none"
    xi: float = 0.0
    noise_std: float = 0.0
    train_mean: np.ndarray | None = None
    sample_mean: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in CONTEXT_TRANSFORMS:
            raise ValueError(f"unknown context transform {self.kind!r}; expected one of {CONTEXT_TRANSFORMS}")
        if self.kind == "gapshift" and (self.train_mean is None or self.sample_mean is None):
            raise ValueError("the gapshift transform needs the training image and text means")

    def for_training(self, key: jax.Array, context: jax.Array) -> jax.Array:
        """The randomised form of a batch of training contexts (traced inside the step)."""
        if self.kind == "lafite":
            return lafite_perturb(key, context, self.xi)
        if self.kind == "gapshift":
            return noisy_gap_shift(key, context, jnp.asarray(self.train_mean, jnp.float32), self.noise_std)
        return context

    def for_training_grid(self, context: np.ndarray) -> np.ndarray:
        """Dataset contexts as a grid written during training sees them (noise-free)."""
        if self.kind == "gapshift":
            return np.asarray(gap_shift(jnp.asarray(context), jnp.asarray(self.train_mean, jnp.float32)))
        return np.asarray(context)

    def for_sampling(self, context: np.ndarray) -> np.ndarray:
        """Prompt contexts as the U-Net must see them at sampling."""
        if self.kind == "gapshift":
            return np.asarray(gap_shift(jnp.asarray(context), jnp.asarray(self.sample_mean, jnp.float32)))
        return np.asarray(context)

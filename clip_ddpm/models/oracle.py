"""A small convolutional classifier with one head per image attribute: the study's oracle.

Generated images are judged by a scorer that is not the model being judged: this network,
trained on real renders, reads each attribute (for the shapes: shape and colour) off an image,
and its penultimate features are the space in which distributions of images are compared
(the Fréchet distance and the diversity of the study).

It is plain: stages of two 3x3 convolutions with ReLU, 2x2 max-pooling between stages, then
global max and mean pooling, one dense feature layer and a linear head per attribute. One input
channel is computed rather than given: the saturation max(R,G,B) − min(R,G,B), which separates a
coloured figure from a grey background whatever their brightness, so the network finds the
outline of a shape from its first layer instead of having to learn colour invariance first.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def with_saturation(images: jax.Array) -> jax.Array:
    """[B, H, W, 3] in [-1, 1] -> [B, H, W, 4]: the image and its saturation (scaled to [-1, 1])."""
    saturation = jnp.max(images, axis=-1, keepdims=True) - jnp.min(images, axis=-1, keepdims=True)
    return jnp.concatenate([images, saturation - 1.0], axis=-1)


class Oracle(nn.Module):
    """images [B, H, W, 3] in [-1, 1] -> (features [B, feature_dim], logits per head)."""

    head_sizes: Sequence[int] = (6, 6)
    widths: Sequence[int] = (32, 64, 128)
    feature_dim: int = 64

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        x = with_saturation(images.astype(jnp.float32))
        for stage, width in enumerate(self.widths):
            if stage:
                x = nn.max_pool(x, (2, 2), (2, 2))
            for _ in range(2):
                x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
        x = jnp.concatenate([jnp.max(x, axis=(1, 2)), jnp.mean(x, axis=(1, 2))], axis=-1)
        features = nn.relu(nn.Dense(self.feature_dim, name="features")(x))
        logits = tuple(nn.Dense(n, name=f"head{i}")(features) for i, n in enumerate(self.head_sizes))
        return features, logits


@dataclasses.dataclass(frozen=True)
class OracleSpec:
    """The oracle's network and training recipe (hashable: one compiled step per spec and mesh)."""

    head_sizes: tuple[int, ...] = (6, 6)
    widths: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 64
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0

    def model(self) -> Oracle:
        return Oracle(head_sizes=self.head_sizes, widths=self.widths, feature_dim=self.feature_dim)


def images_to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 images -> float32 in [-1, 1], the range the oracle is trained and applied on."""
    return images.astype(jnp.float32) / 127.5 - 1.0

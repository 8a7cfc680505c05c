"""A small convolutional classifier with one head per image attribute: the study's oracle.

Generated images are judged by a scorer that is not the model being judged: this network,
trained on real renders, reads each attribute (for the shapes: shape and colour) off an image,
and its penultimate features are the space in which distributions of images are compared
(the Fréchet distance and the diversity of the study). It is deliberately plain: three stages
of two 3x3 convolutions with GroupNorm (eight channels a group) and ReLU, 2x2 max-pooling between stages, global average
pooling, one dense feature layer, then a linear head per attribute.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class Oracle(nn.Module):
    """images [B, H, W, 3] in [-1, 1] -> (features [B, feature_dim], logits per head)."""

    head_sizes: Sequence[int] = (6, 6)
    widths: Sequence[int] = (32, 64, 128)
    feature_dim: int = 64

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        x = images.astype(jnp.float32)
        for stage, width in enumerate(self.widths):
            if stage:
                x = nn.max_pool(x, (2, 2), (2, 2))
            for _ in range(2):
                x = nn.Conv(width, (3, 3), padding="SAME")(x)
                x = nn.relu(nn.GroupNorm(num_groups=max(1, width // 8))(x))
        x = jnp.mean(x, axis=(1, 2))
        features = nn.relu(nn.Dense(self.feature_dim, name="features")(x))
        logits = tuple(nn.Dense(n, name=f"head{i}")(features) for i, n in enumerate(self.head_sizes))
        return features, logits

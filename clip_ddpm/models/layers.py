"""Convolutions with two interchangeable implementations: XLA's and matmul-lowered.

XLA:CPU computes some convolution gradients far slower than matrix products, so each of the
U-Net's two convolution kinds has a matmul form: a 3x3 "same" conv as im2col + one matmul, and
the 2x2 stride-2 transposed conv as one matmul + depth-to-space. Both forms share the same
parameters and compute the same numbers; `resolve_conv_impl` picks per backend (cuDNN on GPU).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any
CONV_IMPLS = ("auto", "xla", "matmul")
_NHWC = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(conv_impl: str) -> tuple[str, str]:
    """(3x3 conv form, 2x2 transposed conv form) for a --conv_impl choice.

    'auto' keeps XLA's 3x3 convolutions everywhere (on XLA:CPU they now beat im2col) and, on CPU,
    lowers the transposed conv to a matmul: XLA:CPU's transposed-conv gradient is 10-25x slower.
    """
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    if conv_impl == "auto":
        return ("xla", "matmul") if jax.default_backend() == "cpu" else ("xla", "xla")
    return conv_impl, conv_impl


def im2col_3x3(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H, W, 9C]: the zero-padded 3x3 neighbourhood of every pixel.

    The last axis is ordered (dy, dx, c), matching an HWIO kernel reshaped to [9C, O].
    """
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate(
        [padded[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)], axis=-1)


def depth_to_space_2x2(y: jax.Array, features: int) -> jax.Array:
    """[B, H, W, 2*2*F] ordered (dy, dx, f) -> [B, 2H, 2W, F]."""
    b, h, w, _ = y.shape
    y = y.reshape(b, h, w, 2, 2, features)
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, features)


def space_to_depth_2x2(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, W/2, 4C] ordered (c, dy, dx), like PyTorch's pixel_unshuffle."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, 4 * c)


class Conv3x3(nn.Module):
    """3x3 convolution, stride 1, zero 'same' padding, with bias. Kernel is HWIO."""

    features: int
    impl: str = "xla"  # "xla" or "matmul"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (3, 3, in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if self.impl == "matmul":
            y = im2col_3x3(x) @ kernel.reshape(9 * in_features, self.features)
        else:
            y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC)
        return y + bias.astype(self.dtype)


class ConvTranspose2x2(nn.Module):
    """2x2 transposed convolution with stride 2 (exact 2x upsampling), with bias.

    out[2i + dy, 2j + dx] = x[i, j] @ kernel[dy, dx] + bias, i.e. PyTorch's ConvTranspose2d
    semantics with the kernel stored HWIO.
    """

    features: int
    impl: str = "xla"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (2, 2, in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if self.impl == "matmul":
            flat = kernel.transpose(2, 0, 1, 3).reshape(in_features, 4 * self.features)
            y = depth_to_space_2x2(x @ flat, self.features)
        else:
            # lax.conv_transpose without kernel transposition correlates with the kernel,
            # so flip it spatially to get the scatter semantics documented above.
            y = lax.conv_transpose(x, kernel[::-1, ::-1], (2, 2), "VALID", dimension_numbers=_NHWC)
        return y + bias.astype(self.dtype)

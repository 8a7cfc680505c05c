"""GroupNorm followed by its activation (GELU or ReLU), with a hand-written gradient.

What XLA's automatic differentiation makes of `flax.linen.GroupNorm` + exact GELU is a chain of
separate passes over the activation map (the erf alone is split over three loop fusions, each
recomputing the normalisation). This form reads the input twice forward (statistics, then the
normalised activation) and twice backward (per-channel sums, then the input gradient), and keeps
only the input and two [B, groups] statistics for the backward pass.

The parameters are flax's GroupNorm's (`scale`, `bias`), so a model's parameter tree is unchanged;
statistics are computed in float32 whatever the compute dtype, as flax does.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_ddpm.models.layers import Dtype

ACTIVATIONS = ("gelu", "relu", "none")
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _activate(y: jax.Array, activation: str) -> jax.Array:
    if activation == "gelu":
        return 0.5 * y * (1.0 + jax.lax.erf(y * _INV_SQRT2))  # exact GELU, PyTorch's default
    if activation == "relu":
        return jnp.maximum(y, 0.0)
    return y


def _activation_slope(y: jax.Array, activation: str) -> jax.Array:
    if activation == "gelu":
        return 0.5 * (1.0 + jax.lax.erf(y * _INV_SQRT2)) + y * _INV_SQRT_2PI * jnp.exp(-0.5 * y * y)
    if activation == "relu":
        return (y > 0).astype(y.dtype)
    return jnp.ones_like(y)


def _compute_dtype(x: jax.Array):
    """float32 for float32 and narrower inputs (bfloat16 statistics would lose the mean)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _statistics(x: jax.Array, groups: int, epsilon: float) -> tuple[jax.Array, jax.Array]:
    """Per (example, group) mean and 1/std of x [B, H, W, C], each broadcast to [B, 1, 1, C]."""
    b, h, w, c = x.shape
    xg = x.astype(_compute_dtype(x)).reshape(b, h * w, groups, c // groups)
    mean = jnp.mean(xg, axis=(1, 3))
    mean_sq = jnp.mean(jnp.square(xg), axis=(1, 3))
    rstd = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + epsilon)

    def per_channel(v):
        return jnp.repeat(v, c // groups, axis=1)[:, None, None, :]

    return per_channel(mean), per_channel(rstd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def group_norm_act(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float,
                   activation: str) -> jax.Array:
    """act(GroupNorm(x) * scale + bias) for x [B, H, W, C]; the result has x's dtype."""
    mean, rstd = _statistics(x, groups, epsilon)
    y = (x.astype(mean.dtype) - mean) * (rstd * scale) + bias
    return _activate(y, activation).astype(x.dtype)


def _forward(x, scale, bias, groups, epsilon, activation):
    mean, rstd = _statistics(x, groups, epsilon)
    y = (x.astype(mean.dtype) - mean) * (rstd * scale) + bias
    return _activate(y, activation).astype(x.dtype), (x, scale, bias, mean, rstd)


def _backward(groups, epsilon, activation, residuals, grad_out):
    x, scale, bias, mean, rstd = residuals
    b, h, w, c = x.shape
    xhat = (x.astype(mean.dtype) - mean) * rstd
    dy = grad_out.astype(mean.dtype) * _activation_slope(xhat * scale + bias, activation)
    # One pass for the per-(example, channel) sums; everything after them is [B, C]-sized.
    sum_dy = jnp.sum(dy, axis=(1, 2))
    sum_dy_xhat = jnp.sum(dy * xhat, axis=(1, 2))
    count = h * w * (c // groups)

    def group_mean(v):  # [B, C] -> [B, 1, 1, C]: the mean over each channel's group
        g = jnp.sum(v.reshape(b, groups, c // groups), axis=2) / count
        return jnp.repeat(g, c // groups, axis=1)[:, None, None, :]

    m1 = group_mean(sum_dy * scale)
    m2 = group_mean(sum_dy_xhat * scale)
    dx = rstd * (dy * scale - m1 - xhat * m2)
    return (dx.astype(x.dtype), jnp.sum(sum_dy_xhat, axis=0).astype(scale.dtype),
            jnp.sum(sum_dy, axis=0).astype(bias.dtype))


group_norm_act.defvjp(_forward, _backward)


class GroupNorm(nn.Module):
    """flax.linen.GroupNorm's parameters (`scale`, `bias`) and function, with the activation
    that follows it fused in and a hand-written gradient (see the module docstring).

    Named like flax's module, so a model's parameter paths (`GroupNorm_0/scale`) stay the same.
    """

    num_groups: int
    activation: str = "none"
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        channels = x.shape[-1]
        if channels % self.num_groups:
            raise ValueError(f"Number of groups ({self.num_groups}) does not divide the number of channels "
                             f"({channels}).")
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        return group_norm_act(x.astype(self.dtype), scale, bias, self.num_groups, self.epsilon, self.activation)

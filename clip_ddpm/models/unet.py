"""The course's context-conditioned U-Net (the notebooks' `UNet` with `c_embed_dim`), in Flax linen (NHWC).

Layout (down_chs = (c0, c1, c2), image size S, S divisible by 4, L = S/4):
  down0  ResidualConvBlock(3 -> c0): x1 = GELUConv(x), x1 + GELUConv(x1)      S
  down1  DownBlock(c0 -> c1)                                                  S/2
  down2  DownBlock(c1 -> c2)                                                  S/4
  dense  flatten -> GELU -> Dense(c1) -> ReLU -> Dense(c1) -> ReLU -> Dense(c2*L^2) -> ReLU
  up0    GELUConv(c2)                                                         S/4
  up1    UpBlock(concat(c1_emb*up0 + t1_emb, down2) -> c1)                    S/2
  up2    UpBlock(concat(c2_emb*up1 + t2_emb, down1) -> c0)                    S
  out    Conv3x3 -> GroupNorm(8) -> ReLU -> Conv3x3 over concat(up2, down0)

Layer for layer what the course builds in PyTorch (tests/test_unet_course.py copies these
parameters into such a PyTorch model and compares outputs).

The network knows nothing of noise schedules: it takes the timestep as a fraction t/T.
Parameters are float32; `dtype` is the compute dtype (bfloat16 on accelerators).
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_ddpm.models.layers import Conv3x3, ConvTranspose2x2, Dtype, space_to_depth_2x2
from clip_ddpm.models.norm import GroupNorm


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, PyTorch's nn.GELU default, as in the course."""
    return nn.gelu(x, approximate=False)


def sinusoidal_embedding(t_frac: jax.Array, dim: int) -> jax.Array:
    """[B] timestep fractions -> [B, dim] sin/cos features at geometric frequencies 1..1/10000."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = t_frac.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def norm_act(groups: int, activation: str, fused: bool, dtype: Dtype, name: str | None = None):
    """GroupNorm(groups) then the activation: one fused module with a hand-written gradient
    (models/norm.py), or flax's GroupNorm and the activation as separate operations."""
    if fused:
        return GroupNorm(groups, activation, epsilon=1e-5, dtype=dtype, name=name)
    norm = nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=dtype, name=name)
    act = {"gelu": gelu, "relu": nn.relu}[activation]
    return lambda x: act(norm(x))


class GELUConv(nn.Module):
    """Conv3x3 -> GroupNorm -> GELU."""

    features: int
    groups: int
    conv_impl: str = "xla"
    dtype: Dtype = jnp.float32
    fused_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Conv3x3(self.features, self.conv_impl, self.dtype)(x)
        return norm_act(self.groups, "gelu", self.fused_norm, self.dtype)(x)


class ResidualConvBlock(nn.Module):
    """x1 = GELUConv(x); x1 + GELUConv(x1): the residual joins the two convolutions' outputs, so
    the block needs no projection of its input when the channel count changes."""

    features: int
    groups: int = 8
    conv_impl: str = "xla"
    dtype: Dtype = jnp.float32
    fused_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x1 = GELUConv(self.features, self.groups, self.conv_impl, self.dtype, self.fused_norm)(x)
        return x1 + GELUConv(self.features, self.groups, self.conv_impl, self.dtype, self.fused_norm)(x1)


class DownBlock(nn.Module):
    """Two GELUConvs, then a 2x2 space-to-depth and a GELUConv back to `features`."""

    features: int
    groups: int = 32
    conv_impl: str = "xla"
    dtype: Dtype = jnp.float32
    fused_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = GELUConv(self.features, self.groups, self.conv_impl, self.dtype, self.fused_norm)(x)
        x = GELUConv(self.features, self.groups, self.conv_impl, self.dtype, self.fused_norm)(x)
        x = space_to_depth_2x2(x)
        return GELUConv(self.features, self.groups, self.conv_impl, self.dtype, self.fused_norm)(x)


class UpBlock(nn.Module):
    """2x2 stride-2 transposed conv over concat(x, skip), then four GELUConvs."""

    features: int
    groups: int = 32
    conv_impl: str = "xla"
    upsample_impl: str = "xla"
    dtype: Dtype = jnp.float32
    fused_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        x = jnp.concatenate([x.astype(self.dtype), skip.astype(self.dtype)], axis=-1)
        x = ConvTranspose2x2(self.features, self.upsample_impl, self.dtype)(x)
        for _ in range(4):
            x = GELUConv(self.features, self.groups, self.conv_impl, self.dtype, self.fused_norm)(x)
        return x


class EmbedBlock(nn.Module):
    """Dense -> GELU -> Dense, broadcast over the spatial axes."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, v: jax.Array) -> jax.Array:
        v = nn.Dense(self.features, dtype=self.dtype)(v.astype(self.dtype))
        v = nn.Dense(self.features, dtype=self.dtype)(gelu(v))
        return v[:, None, None, :]


class UNet(nn.Module):
    """Predicts the noise in x_t given the timestep fraction and an optional context vector.

    context_dim = 0 builds an unconditional model (no context embeddings at all).
    conv_impl / upsample_impl choose the form of the 3x3 and the transposed convolutions,
    "xla" or "matmul" (see layers.py); every combination computes the same function.
    """

    down_chs: Sequence[int] = (256, 256, 512)
    t_embed_dim: int = 8
    context_dim: int = 512
    out_channels: int = 3
    conv_impl: str = "xla"
    upsample_impl: str | None = None  # transposed-conv form; None: same as conv_impl
    dtype: Dtype = jnp.float32
    fused_norm: bool = True  # GroupNorm+activation as one op with a hand-written gradient (norm.py)

    @nn.compact
    def __call__(self, x: jax.Array, t_frac: jax.Array, context: jax.Array | None = None) -> jax.Array:
        c0, c1, c2 = self.down_chs
        size = x.shape[1]
        if size % 4 or x.shape[2] != size:
            raise ValueError(f"the U-Net needs square images with side divisible by 4, got {x.shape[1:3]}")
        latent = size // 4
        impl, dt, fused = self.conv_impl, self.dtype, self.fused_norm

        down0 = ResidualConvBlock(c0, 8, impl, dt, fused, name="down0")(x)
        down1 = DownBlock(c1, 32, impl, dt, fused, name="down1")(down0)
        down2 = DownBlock(c2, 32, impl, dt, fused, name="down2")(down1)

        z = gelu(down2.reshape(down2.shape[0], -1))  # flattened HWC (PyTorch's order is CHW)
        z = nn.relu(nn.Dense(c1, dtype=dt, name="dense_in")(z))
        z = nn.relu(nn.Dense(c1, dtype=dt, name="dense_mid")(z))
        z = nn.relu(nn.Dense(c2 * latent * latent, dtype=dt, name="dense_out")(z))
        z = z.reshape(-1, latent, latent, c2)

        t_emb = sinusoidal_embedding(t_frac, self.t_embed_dim)
        up0 = GELUConv(c2, 32, impl, dt, fused, name="up0")(z)
        h = self._condition(up0, t_emb, context, c2, "1")
        up_impl = self.upsample_impl or impl
        up1 = UpBlock(c1, 32, impl, up_impl, dt, fused, name="up1")(h, down2)
        h = self._condition(up1, t_emb, context, c1, "2")
        up2 = UpBlock(c0, 32, impl, up_impl, dt, fused, name="up2")(h, down1)

        out = jnp.concatenate([up2, down0.astype(dt)], axis=-1)
        out = Conv3x3(c0, impl, dt, name="out_conv0")(out)
        out = norm_act(8, "relu", fused, dt, name="out_norm")(out)
        out = Conv3x3(self.out_channels, impl, dt, name="out_conv1")(out)
        return out.astype(jnp.float32)

    def _condition(self, h, t_emb, context, features: int, index: str):
        """h -> c_emb * h + t_emb (just h + t_emb for an unconditional model)."""
        t = EmbedBlock(features, self.dtype, name=f"t_embed{index}")(t_emb)
        if self.context_dim == 0:
            return h + t
        if context is None or context.shape[-1] != self.context_dim:
            got = None if context is None else context.shape
            raise ValueError(f"the U-Net expects a context of width {self.context_dim}, got {got}")
        c = EmbedBlock(features, self.dtype, name=f"c_embed{index}")(context)
        return c * h + t


def count_params(params) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))

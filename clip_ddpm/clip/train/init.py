"""Mimetic initialisation of attention weights, for vision transformers trained from scratch.

A ViT knows nothing of image locality at the start and learns it slowly, which dominates
short runs on small images. Trockman & Kolter ("Mimetic Initialization of Self-Attention
Layers", ICML 2023) observed that in trained ViTs the product W_q W_k^T of each head is close
to a positive multiple of the identity and W_v W_o to a negative one, and that drawing the
weights so that these products hold from the start trains markedly faster. Here each head's
W_q, W_k is a rank-(head dim) factorisation of alpha_1 Z + beta_1 I, and the layer's W_v, W_o a
factorisation of alpha_2 Z - beta_2 I, with Z ~ N(0, 1/width). Only the weights change: the
model, and so the exported checkpoint format, is the same.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

QK_ALPHA, QK_BETA = 0.7, 0.7
VO_ALPHA, VO_BETA = 0.4, 0.4


def _factor(matrix: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
    """A, B with A @ B.T the best rank-`rank` approximation of `matrix` (split singular values)."""
    u, s, vt = jnp.linalg.svd(matrix)
    root = jnp.sqrt(s[:rank])
    return u[:, :rank] * root, vt[:rank].T * root


def mimetic_layer(key: jax.Array, width: int, heads: int) -> dict[str, jax.Array]:
    """q, k, v and out kernels ([in, out], Flax layout) of one attention layer."""
    head_dim = width // heads
    qk_key, vo_key = jax.random.split(key)
    eye = jnp.eye(width, dtype=jnp.float32)
    q_parts, k_parts = [], []
    for head_key in jax.random.split(qk_key, heads):
        z = jax.random.normal(head_key, (width, width), jnp.float32) / jnp.sqrt(width)
        q, k = _factor(QK_ALPHA * z + QK_BETA * eye, head_dim)
        q_parts.append(q)
        k_parts.append(k)
    z = jax.random.normal(vo_key, (width, width), jnp.float32) / jnp.sqrt(width)
    v, o = _factor(VO_ALPHA * z - VO_BETA * eye, width)
    return {"q_proj": jnp.concatenate(q_parts, axis=1), "k_proj": jnp.concatenate(k_parts, axis=1),
            "v_proj": v, "out_proj": o.T}


def mimetic_vision_attention(params: dict[str, Any], width: int, heads: int, key: jax.Array) -> dict[str, Any]:
    """`params` (a CLIP parameter tree) with every vision attention layer drawn mimetically."""
    layers = dict(params["vision_model"]["encoder"])
    for index, name in enumerate(sorted(layers)):
        kernels = mimetic_layer(jax.random.fold_in(key, index), width, heads)
        attention = {proj: {**layers[name]["self_attn"][proj], "kernel": kernel} for proj, kernel in kernels.items()}
        layers[name] = {**layers[name], "self_attn": attention}
    vision = {**params["vision_model"], "encoder": layers}
    return {**params, "vision_model": vision}


def sincos_2d(grid: int, width: int, temperature: float = 10_000.0) -> jax.Array:
    """[grid * grid, width] fixed 2-D sine-cosine position codes, rows in raster order.

    A quarter of the channels each holds sin(y w), cos(y w), sin(x w), cos(x w) over geometric
    frequencies w, so nearby patches get similar codes from the first step; `width` must be a
    multiple of 4.
    """
    if width % 4:
        raise ValueError(f"2-D sine-cosine codes need a width divisible by 4, got {width}")
    quarter = width // 4
    omega = 1.0 / temperature ** (jnp.arange(quarter, dtype=jnp.float32) / quarter)
    y, x = jnp.meshgrid(jnp.arange(grid, dtype=jnp.float32), jnp.arange(grid, dtype=jnp.float32), indexing="ij")
    y = y.reshape(-1, 1) * omega
    x = x.reshape(-1, 1) * omega
    return jnp.concatenate([jnp.sin(y), jnp.cos(y), jnp.sin(x), jnp.cos(x)], axis=1)


def sincos_vision_positions(params: dict[str, Any], grid: int) -> dict[str, Any]:
    """`params` with the vision position embeddings starting at 2-D sine-cosine codes.

    Mimetic attention makes a token attend to tokens like itself; with these codes "like" starts
    out as "nearby", the locality a ViT otherwise has to discover. The class token's row is zero.
    The embeddings stay trainable, so the model and its export format are unchanged.
    """
    table = params["vision_model"]["embeddings"]["position_embedding"]["embedding"]
    codes = sincos_2d(grid, table.shape[1])
    table = jnp.concatenate([jnp.zeros((1, table.shape[1]), table.dtype), codes.astype(table.dtype)])
    embeddings = {**params["vision_model"]["embeddings"], "position_embedding": {"embedding": table}}
    return {**params, "vision_model": {**params["vision_model"], "embeddings": embeddings}}

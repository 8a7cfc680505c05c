"""Noise schedules: the per-timestep constants β_t, α_t and ᾱ_t of a DDPM, as arrays of shape [T].

Pure functions and a NamedTuple, so a schedule is a pytree that jitted code can close over.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

SCHEDULES = ("linear", "cosine")


class Schedule(NamedTuple):
    """Per-timestep constants, each an array of shape [T]."""

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]


def make_schedule(kind: str = "linear", num_timesteps: int = 400,
                  beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Linear β from beta_start to beta_end (the course: 1e-4 -> 0.02, T = 400), or
    the cosine ᾱ schedule of Nichol & Dhariwal (2021) with s = 0.008 and β clipped at 0.999."""
    if kind == "linear":
        betas = jnp.linspace(beta_start, beta_end, num_timesteps, dtype=jnp.float32)
    elif kind == "cosine":
        s = 0.008
        steps = jnp.arange(num_timesteps + 1, dtype=jnp.float32)
        f = jnp.cos((steps / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2
        betas = jnp.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999).astype(jnp.float32)
    else:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULES}")
    alphas = 1.0 - betas
    return Schedule(betas=betas, alphas=alphas, alphas_cumprod=jnp.cumprod(alphas))


def per_example(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """values[t] shaped to broadcast against an image batch of rank `ndim`."""
    return broadcastable(values[t], ndim)


def broadcastable(v: jax.Array, ndim: int) -> jax.Array:
    """A per-example vector [B] reshaped to [B, 1, ..., 1] of rank `ndim`."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))



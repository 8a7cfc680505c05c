"""The forward (noising) process and the training objective of an ε-predicting DDPM."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from clip_ddpm.diffusion.schedules import Schedule, per_example


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) eps: the closed form of t+1 forward noising steps."""
    abar = per_example(schedule.alphas_cumprod, t, x0.ndim)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * eps


def eps_loss(eps_hat: jax.Array, eps: jax.Array) -> jax.Array:
    """ε-prediction mean squared error (the simple DDPM objective)."""
    return jnp.mean(jnp.square(eps_hat.astype(jnp.float32) - eps.astype(jnp.float32)))



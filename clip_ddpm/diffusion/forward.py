"""The forward (noising) process and the training objective of an ε-predicting DDPM."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from clip_ddpm.diffusion.schedules import Schedule, per_example


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) eps: the closed form of t+1 forward noising steps."""
    abar = per_example(schedule.alphas_cumprod, t, x0.ndim)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * eps


LOSS_WEIGHTINGS = ("uniform", "min_snr", "clipped_snr")


def eps_loss(eps_hat: jax.Array, eps: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """ε-prediction mean squared error (the simple DDPM objective); with per-example `weights`
    [B], the mean over examples of weight x that example's mean squared error."""
    squared = jnp.square(eps_hat.astype(jnp.float32) - eps.astype(jnp.float32))
    if weights is None:
        return jnp.mean(squared)
    return jnp.mean(weights * jnp.mean(squared, axis=tuple(range(1, squared.ndim))))


def snr(schedule: Schedule, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) of timesteps t [B]."""
    abar = schedule.alphas_cumprod[t]
    return abar / (1.0 - abar)


def loss_weights(schedule: Schedule, t: jax.Array, weighting: str = "uniform", gamma: float = 5.0) -> jax.Array | None:
    """Per-example weights of the ε loss: None (uniform, the course's objective), or Min-SNR-γ
    (Hang et al. 2023), min(SNR_t, γ) / SNR_t. The latter leaves the noisy timesteps (SNR < γ),
    where shape and colour are decided, at full weight and scales down the nearly clean ones,
    whose gradients otherwise conflict with and outweigh them; it is reported to reach the same
    quality in a fraction of the steps.

    clipped_snr, clip(SNR_t, 1, γ) / SNR_t, also floors the weight of the x0 error (the ε error
    over sqrt(SNR)) at 1 where SNR < 1 (Salimans & Ho 2022's truncation): an x0- or v-predicting
    network (diffusion.parameterization) would otherwise see the noisiest timesteps, where one
    object of one colour has to be decided, at weight SNR_t (0.018 at T-1 of the linear schedule)."""
    if weighting == "uniform":
        return None
    if weighting in ("min_snr", "clipped_snr"):
        ratio = snr(schedule, t)
        floor = 1.0 if weighting == "clipped_snr" else 0.0
        return jnp.clip(ratio, floor, gamma) / ratio
    raise ValueError(f"unknown loss weighting {weighting!r}; expected one of {LOSS_WEIGHTINGS}")



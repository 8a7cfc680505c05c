"""The reverse process: DDPM and DDIM steps, classifier-free guidance, the whole-chain sampler.

The model is called as `eps_fn(x_t, t_frac, context)` with t_frac = t / T, so the network never
sees the schedule. Every sampler is one `lax.scan` with no host round-trip.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from clip_ddpm.diffusion.parameterization import eps_from_output
from clip_ddpm.diffusion.schedules import Schedule, broadcastable, per_example

SAMPLERS = ("ddpm", "ddim")

EpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def guided_eps(eps_cond: jax.Array, eps_uncond: jax.Array, w: jax.Array | float) -> jax.Array:
    """Classifier-free guidance: ε = (1 + w)·ε_cond − w·ε_uncond (w = 0: purely conditional)."""
    w = broadcastable(jnp.asarray(w, jnp.float32), eps_cond.ndim)
    return (1.0 + w) * eps_cond - w * eps_uncond


def ddpm_posterior_mean(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps_hat: jax.Array) -> jax.Array:
    """μ(x_t, ε̂) = (x_t − β_t / sqrt(1 − ᾱ_t) · ε̂) / sqrt(α_t)."""
    beta = per_example(schedule.betas, t, x_t.ndim)
    alpha = per_example(schedule.alphas, t, x_t.ndim)
    abar = per_example(schedule.alphas_cumprod, t, x_t.ndim)
    return (x_t - beta / jnp.sqrt(1.0 - abar) * eps_hat) / jnp.sqrt(alpha)


def predicted_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps_hat: jax.Array) -> jax.Array:
    """x̂0 = (x_t − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t): the clean image the noise prediction implies."""
    abar = per_example(schedule.alphas_cumprod, t, x_t.ndim)
    return (x_t - jnp.sqrt(1.0 - abar) * eps_hat) / jnp.sqrt(abar)


def _abar_before(schedule: Schedule, t: jax.Array, ndim: int) -> jax.Array:
    """ᾱ_{t-1}, with ᾱ_{-1} = 1 (the clean image)."""
    previous = per_example(schedule.alphas_cumprod, jnp.maximum(t - 1, 0), ndim)
    return jnp.where(broadcastable(t > 0, ndim), previous, 1.0)


def ddpm_step(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps_hat: jax.Array,
              noise: jax.Array, clip_denoised: bool = False) -> jax.Array:
    """One ancestral step x_t -> x_{t-1} with σ_t² = β_t (as the course); no noise at t = 0.

    clip_denoised: take the mean of q(x_{t-1} | x_t, x̂0) with x̂0 clipped to [-1, 1], the data
    range, instead of μ(x_t, ε̂) (equal to it without the clip). Off by default, as in the course.
    """
    if clip_denoised:
        x0 = jnp.clip(predicted_x0(schedule, x_t, t, eps_hat), -1.0, 1.0)
        beta = per_example(schedule.betas, t, x_t.ndim)
        alpha = per_example(schedule.alphas, t, x_t.ndim)
        abar = per_example(schedule.alphas_cumprod, t, x_t.ndim)
        abar_prev = _abar_before(schedule, t, x_t.ndim)
        mean = (jnp.sqrt(abar_prev) * beta * x0 + jnp.sqrt(alpha) * (1.0 - abar_prev) * x_t) / (1.0 - abar)
    else:
        mean = ddpm_posterior_mean(schedule, x_t, t, eps_hat)
    sigma = jnp.sqrt(per_example(schedule.betas, t, x_t.ndim))
    return mean + jnp.where(broadcastable(t > 0, x_t.ndim), sigma, 0.0) * noise


def ddim_step(schedule: Schedule, x_t: jax.Array, t: jax.Array, t_prev: jax.Array,
              eps_hat: jax.Array, noise: jax.Array, eta: float, clip_denoised: bool = False) -> jax.Array:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021); t_prev < 0 means 'to x0'.

    eta = 0 is deterministic; eta = 1 has the DDPM posterior's variance for these two steps.
    clip_denoised: clip x̂0 to [-1, 1] and step with the noise that the clipped x̂0 implies, so
    the step is DDIM's for a model that predicted the clipped image.
    """
    abar_t = per_example(schedule.alphas_cumprod, t, x_t.ndim)
    abar_prev = jnp.where(broadcastable(t_prev >= 0, x_t.ndim),
                          per_example(schedule.alphas_cumprod, jnp.maximum(t_prev, 0), x_t.ndim), 1.0)
    x0_hat = predicted_x0(schedule, x_t, t, eps_hat)
    if clip_denoised:
        x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
        eps_hat = (x_t - jnp.sqrt(abar_t) * x0_hat) / jnp.sqrt(1.0 - abar_t)
    sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
    direction = jnp.sqrt(jnp.clip(1.0 - abar_prev - sigma ** 2, 0.0)) * eps_hat
    return jnp.sqrt(abar_prev) * x0_hat + direction + sigma * noise


def guided_prediction(eps_fn: EpsFn, x_t: jax.Array, t: jax.Array, context: jax.Array | None,
                      guidance: jax.Array, num_timesteps: int) -> jax.Array:
    """The guided network output from ONE batched network call on [x; x] with [c; 0]: ε, or
    whatever the network predicts (x0, v), since guidance is affine in it.

    With no context (an unconditional model) the network is called once, unguided.
    """
    t_frac = t.astype(jnp.float32) / num_timesteps
    if context is None:
        return eps_fn(x_t, t_frac, None)
    n = x_t.shape[0]
    both = eps_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t_frac, t_frac]),
                  jnp.concatenate([context, jnp.zeros_like(context)]))
    return guided_eps(both[:n], both[n:], guidance)


def sampling_timesteps(num_timesteps: int, sampler: str, steps: int | None) -> list[int]:
    """Descending timesteps the sampler visits: all T for DDPM; for DDIM `steps` evenly spaced
    ones from T-1 to 0 (a single step starts at T-1)."""
    if sampler == "ddpm":
        return list(range(num_timesteps - 1, -1, -1))
    if sampler == "ddim":
        steps = steps or 50
        if not 1 <= steps <= num_timesteps:
            raise ValueError(f"sampling_steps must be in [1, {num_timesteps}], got {steps}")
        # From T-1 (pure noise) down to 0; one step goes from T-1 straight to x0.
        grid = np.linspace(num_timesteps - 1, 0, steps).round().astype(int)
        return sorted({int(v) for v in grid}, reverse=True)
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")


def sample(eps_fn: EpsFn, schedule: Schedule, key: jax.Array, shape: tuple[int, ...],
           context: jax.Array | None = None, guidance: jax.Array | float = 0.0,
           sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0,
           clip_denoised: bool = False, prediction: str = "eps") -> jax.Array:
    """Runs the whole reverse process as one `lax.scan` and returns x_0 of `shape`.

    guidance may be a scalar or one w per sample, so one call draws a grid of several w.
    clip_denoised clips each step's estimate of x0 to [-1, 1] (see `ddpm_step`, `ddim_step`).
    prediction says what eps_fn's output is (ε, x0 or v; diffusion.parameterization); the guided
    output is read as the ε it implies.
    Call under `jax.jit` (with eps_fn closing over parameters) for one compiled program.
    """
    n = shape[0]
    guidance = jnp.broadcast_to(jnp.asarray(guidance, jnp.float32), (n,))
    ts = jnp.asarray(sampling_timesteps(schedule.num_timesteps, sampler, steps), jnp.int32)
    prev = jnp.concatenate([ts[1:], jnp.array([-1], jnp.int32)])
    key_init, key_loop = jax.random.split(key)
    x = jax.random.normal(key_init, shape, jnp.float32)

    def body(x, inputs):
        i, t_scalar, t_prev_scalar = inputs
        t = jnp.full((n,), t_scalar, jnp.int32)
        output = guided_prediction(eps_fn, x, t, context, guidance, schedule.num_timesteps)
        eps_hat = eps_from_output(schedule, x, t, output, prediction)
        noise = jax.random.normal(jax.random.fold_in(key_loop, i), shape, jnp.float32)
        if sampler == "ddpm":
            x = ddpm_step(schedule, x, t, eps_hat, noise, clip_denoised)
        else:
            x = ddim_step(schedule, x, t, jnp.full((n,), t_prev_scalar, jnp.int32), eps_hat, noise, eta,
                          clip_denoised)
        return x, None

    x, _ = lax.scan(body, x, (jnp.arange(ts.shape[0]), ts, prev))
    return x

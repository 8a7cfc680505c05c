"""What the network's output means: the noise ε (the course), the clean image x0, or the velocity v.

The training objective and the samplers are written in terms of ε. These pure functions read an
output of any of the three kinds as the ε it implies at (x_t, t), so the objective stays the same
function of the prediction (the ε loss, with the same per-timestep weights) and only the network's
parameterisation changes. That matters where the ε form is hardest to learn: at small t, ε is the
input's noise amplified by 1/sqrt(1 − ᾱ_t) (100x at t = 0 of the linear schedule), while x0 is
nearly the input itself; v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x0 (Salimans & Ho 2022) sits between the two.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from clip_ddpm.diffusion.schedules import Schedule, per_example

PREDICTIONS = ("eps", "x0", "v")


def eps_from_output(schedule: Schedule, x_t: jax.Array, t: jax.Array, output: jax.Array,
                    prediction: str = "eps") -> jax.Array:
    """The ε implied by the network's `output` at (x_t, t) [B].

    x0:  ε = (x_t − sqrt(ᾱ)·x0) / sqrt(1 − ᾱ)
    v:   ε = sqrt(ᾱ)·v + sqrt(1 − ᾱ)·x_t
    Both are affine in the output at fixed (x_t, t), so classifier-free guidance of the outputs
    and guidance of the implied ε give the same ε.
    """
    if prediction == "eps":
        return output
    abar = per_example(schedule.alphas_cumprod, t, x_t.ndim)
    output = output.astype(jnp.float32)
    if prediction == "x0":
        return (x_t - jnp.sqrt(abar) * output) / jnp.sqrt(1.0 - abar)
    if prediction == "v":
        return jnp.sqrt(abar) * output + jnp.sqrt(1.0 - abar) * x_t
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


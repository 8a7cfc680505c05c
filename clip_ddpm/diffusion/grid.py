"""Drawing images from a trained U-Net: one jitted reverse process for a whole grid.

A grid has one row per guidance weight w and one column per context; all rows and columns
are sampled in a single batched call (conditional and unconditional halves included).
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from clip_ddpm.data.dataset import to_uint8
from clip_ddpm.diffusion import samplers, schedules


def make_sampler(model: nn.Module, schedule: schedules.Schedule, image_shape: tuple[int, int, int],
                 sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0,
                 clip_denoised: bool = False, mesh: Mesh | None = None, prediction: str = "eps") -> Callable:
    """fn(params, key, contexts [N, D] | None, guidance [N]) -> float images [N, H, W, C] in [-1, 1].

    With a `mesh`, the N samples are split over its devices (padded to a multiple of the device
    count), so each device draws only its share of the grid; params are expected replicated on
    the mesh, and the images come back replicated, readable on every host. The noise is drawn
    at the global shape, so the samples do not depend on the number of devices.
    """

    def run(params, key, contexts, guidance):
        def eps_fn(x, t_frac, c):
            return model.apply(params, x, t_frac, c)
        shape = (guidance.shape[0],) + tuple(image_shape)
        return samplers.sample(eps_fn, schedule, key, shape, contexts, guidance, sampler, steps, eta,
                               clip_denoised, prediction)

    if mesh is None:
        return jax.jit(run)
    batch, whole = NamedSharding(mesh, PartitionSpec(mesh.axis_names)), NamedSharding(mesh, PartitionSpec())
    sharded = jax.jit(lambda params, key, contexts, guidance, n: run(params, key, contexts, guidance)[:n],
                      in_shardings=(whole, whole, batch, batch), out_shardings=whole, static_argnums=4)

    def run_sharded(params, key, contexts, guidance):
        n = guidance.shape[0]
        pad = -n % mesh.devices.size
        if pad:  # the padding rows are drawn and dropped
            guidance = jnp.concatenate([guidance, jnp.zeros((pad,), guidance.dtype)])
            if contexts is not None:
                contexts = jnp.concatenate([contexts, jnp.zeros((pad,) + contexts.shape[1:], contexts.dtype)])
        return sharded(params, key, contexts, guidance, n)

    return run_sharded


def sample_grid(sampler_fn: Callable, params, key: jax.Array, contexts: np.ndarray | None,
                guidance: Sequence[float], columns: int, repeats: int = 1) -> np.ndarray:
    """uint8 [len(guidance), columns * repeats, H, W, 3]: row r uses guidance[r]; each context
    (a column) is drawn `repeats` times side by side."""
    rows = len(guidance)
    per_row = columns * repeats
    w = jnp.repeat(jnp.asarray(guidance, jnp.float32), per_row)
    ctx = None
    if contexts is not None:
        ctx = jnp.tile(jnp.repeat(jnp.asarray(contexts, jnp.float32), repeats, axis=0), (rows, 1))
    images = np.asarray(sampler_fn(params, key, ctx, w))
    return to_uint8(images).reshape((rows, per_row) + images.shape[1:])

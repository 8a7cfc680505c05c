"""The DDPM training step and on-device batch drawing, as pure functions jitted over a mesh.

`train_step(state, batch, key, settings) -> (state, metrics)`: timesteps, noise and context-drop
masks are drawn at the global batch shape from fold_in(key, step), sharded along 'data'; the
optimiser's numbers (`OptimizerSettings`) are an argument, not constants of the program.
`make_data_train_step` puts batch drawing (`training.batches.draw_batch`) and the step in one
program, so the training loop never waits on the host.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from clip_ddpm import diffusion
from clip_ddpm.diffusion import conditioning
from clip_ddpm.diffusion.forward import loss_weights
from clip_ddpm.diffusion.parameterization import eps_from_output
from clip_ddpm.training.batches import draw_batch
from clip_ddpm.training.guard import guard_update
from clip_ddpm.training.parallel import data_sharded, replicated
from clip_ddpm.training.train_state import (
    OptimizerSettings,
    TrainState,
    apply_gradients,
    learning_rate_at,
    tree_l2_norm,
)

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the step needs to know beyond the model and optimiser."""

    context_drop_prob: float = 0.1
    context_drop: str = "sample"
    ema_decay: float = 0.999
    skip_nonfinite: bool = False  # --on_nonfinite=skip: a non-finite step leaves the state as it was
    # A gap-closing map of the contexts (conditioning.ContextTransform), applied before dropout.
    context_transform: conditioning.ContextTransform | None = None
    loss_weighting: str = "uniform"  # diffusion.forward.LOSS_WEIGHTINGS
    min_snr_gamma: float = 5.0
    prediction: str = "eps"  # what the U-Net outputs (diffusion.parameterization.PREDICTIONS)


def step_randomness(key: jax.Array, step: jax.Array, image_shape: tuple[int, ...],
                    num_timesteps: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Timesteps [B], noise [B, H, W, C] and the context-drop key of one step.

    Drawn at the global batch shape from fold_in(key, step), so every example has its own noise,
    the values do not depend on the device count (under jit no value depends on how the work is
    split), and a resumed run draws exactly what the uninterrupted run drew. What
    `jax_threefry_partitionable` adds is cost: each device generates only its own rows, with no
    communication between devices.
    """
    key_t, key_eps, key_drop = jax.random.split(jax.random.fold_in(key, step), 3)
    t = jax.random.randint(key_t, image_shape[:1], 0, num_timesteps)
    eps = jax.random.normal(key_eps, image_shape, jnp.float32)
    return t, eps, key_drop


OptimizerFactory = Callable[[OptimizerSettings], optax.GradientTransformation]


def make_train_step(model: nn.Module, schedule: diffusion.Schedule, optimizer_for: OptimizerFactory,
                    step_config: StepConfig, mesh: Mesh
                    ) -> Callable[[TrainState, Batch, jax.Array, OptimizerSettings], tuple[TrainState, Metrics]]:
    """The un-jitted step; `jit_train_step` wraps it with shardings and state donation.

    `optimizer_for(settings)` builds the optimiser inside the step from the settings it is given
    (training.train_state.make_optimizer, or any optax transformation of the same state).
    """
    batch_sharding = data_sharded(mesh)
    num_timesteps = schedule.num_timesteps

    def train_step(state: TrainState, batch: Batch, key: jax.Array,
                   settings: OptimizerSettings) -> tuple[TrainState, Metrics]:
        x0 = batch["image"]
        t, eps, key_drop = step_randomness(key, state.step, x0.shape, num_timesteps)
        t = jax.lax.with_sharding_constraint(t, batch_sharding)
        eps = jax.lax.with_sharding_constraint(eps, batch_sharding)
        x_t = diffusion.q_sample(schedule, x0, t, eps)
        context = batch.get("context")
        if context is not None:
            if step_config.context_transform is not None:
                context = step_config.context_transform.for_training(jax.random.fold_in(key_drop, 1), context)
            context = conditioning.drop_context(key_drop, context, step_config.context_drop_prob,
                                                step_config.context_drop)
            context = jax.lax.with_sharding_constraint(context, batch_sharding)
        t_frac = t.astype(jnp.float32) / num_timesteps

        weights = loss_weights(schedule, t, step_config.loss_weighting, step_config.min_snr_gamma)

        def loss_fn(params):
            output = model.apply(params, x_t, t_frac, context)
            eps_hat = eps_from_output(schedule, x_t, t, output, step_config.prediction)
            return diffusion.eps_loss(eps_hat, eps, weights)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        new_state = apply_gradients(state, grads, optimizer_for(settings), step_config.ema_decay)
        metrics = {"loss": loss, "grad_norm": tree_l2_norm(grads),
                   "param_norm": tree_l2_norm(new_state.params),
                   "learning_rate": learning_rate_at(settings, state.step)}
        return guard_update(state, new_state, metrics, step_config.skip_nonfinite)

    return train_step


def jit_train_step(train_step: Callable, mesh: Mesh) -> Callable:
    """State replicated and donated, batch sharded along 'data', key, settings and metrics replicated."""
    return jax.jit(train_step,
                   in_shardings=(replicated(mesh), data_sharded(mesh), replicated(mesh), replicated(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)),
                   donate_argnums=(0,))


def make_data_train_step(train_step: Callable, batch_size: int, random_flip: bool, mesh: Mesh,
                         to_context: Callable[[Batch], jax.Array | None]) -> Callable:
    """One jitted program per step: draw the batch on device, build its context, train.

    Returns fn(state, data, key, settings) -> (state, metrics), with the state donated.
    """
    def step(state: TrainState, data: Batch, key: jax.Array, settings: OptimizerSettings):
        data_key, noise_key = jax.random.split(key)
        batch = draw_batch(data, data_key, state.step, batch_size, random_flip)
        batch = {"image": batch["image"], "context": to_context(batch)}
        if batch["context"] is None:
            del batch["context"]
        batch = jax.lax.with_sharding_constraint(batch, data_sharded(mesh))
        return train_step(state, batch, noise_key, settings)

    return jax.jit(step, in_shardings=(replicated(mesh), None, replicated(mesh), replicated(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=(0,))

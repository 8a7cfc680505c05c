"""Training state as a plain pytree: step, parameters, their EMA, and the optimiser state.

The optimiser itself (an optax GradientTransformation) is not stored in the state, so the
state is exactly what a checkpoint holds. Nothing random lives here: every random draw is
derived from the base key and the step, so a resumed run repeats the run never stopped.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def tree_l2_norm(tree: Any) -> jax.Array:
    """Euclidean norm of all leaves together (logged as grad_norm and param_norm)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)))


def create_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """Step 0, EMA initialised to the parameters."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),
                      opt_state=optimizer.init(params))


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """min(decay, (1 + step) / (10 + step)): the EMA warms up instead of clinging to the
    random initialisation during short runs, and reaches `decay` after a few thousand steps."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def apply_gradients(state: TrainState, grads: Any, optimizer: optax.GradientTransformation,
                    ema_decay: float) -> TrainState:
    """One optimiser update followed by the EMA update."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = ema_decay_at(state.step, ema_decay)
    ema = jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
    return TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)


def make_optimizer(learning_rate: float, schedule_steps: int, warmup_steps: int, weight_decay: float,
                   grad_clip: float, weight_decay_mask: Any = None, eps: float = 1e-8
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warm-up then cosine decay to 1% of the peak over `schedule_steps` (the
    rate stays at 1% after them), after global-norm clipping.

    `weight_decay_mask` (a pytree of bools or a function of the params giving one) limits the
    decay to some parameters; None decays all of them. `eps` is Adam's epsilon.
    """
    warmup = max(0, min(warmup_steps, schedule_steps - 1))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup,
        decay_steps=max(schedule_steps, warmup + 1), end_value=learning_rate * 0.01)
    # identity() in place of no clip keeps the optimiser state's structure, so a resumed run may
    # change --grad_clip (even to or from 0) and still restore its checkpoints.
    clip = optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity()
    return optax.chain(clip, optax.adamw(schedule, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask)), schedule

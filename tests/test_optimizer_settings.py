"""The optimiser's numbers are arguments of the compiled step: the learning-rate schedule equals
optax's warm-up cosine schedule, and settings that differ only in their numbers lower to one
program."""
import jax
import jax.numpy as jnp
import optax
import pytest

from clip_ddpm import diffusion
from clip_ddpm.ddpm.step import StepConfig, jit_train_step, make_train_step
from clip_ddpm.models.unet import UNet
from clip_ddpm.training import parallel
from clip_ddpm.training.train_state import (
    OptimizerSettings,
    create_train_state,
    learning_rate_at,
    make_optimizer,
)


@pytest.mark.parametrize("peak,steps,warmup", [(1e-3, 100, 10), (2e-3, 800, 100), (0.05, 10, 0), (1e-4, 6, 50)])
def test_learning_rate_follows_optax_warmup_cosine_schedule(peak, steps, warmup):
    settings = OptimizerSettings.create(peak, steps, warmup, 0.0, 1.0)
    w = max(0, min(warmup, steps - 1))
    reference = optax.warmup_cosine_decay_schedule(0.0, peak, w, max(steps, w + 1), peak * 0.01)
    for step in [0, 1, w - 1, w, w + 1, steps // 2, steps - 1, steps, 3 * steps]:
        if step >= 0:
            assert float(learning_rate_at(settings, step)) == pytest.approx(float(reference(step)), rel=1e-5, abs=1e-12)


def test_clip_zero_leaves_gradients_as_they_are_and_a_clip_bounds_their_norm():
    """With a huge epsilon Adam's first update is lr * g / (|g| + eps), close to proportional to
    the gradient it receives, so the update's norm shows the clipped gradient's."""
    grads = {"w": jnp.full((4,), 3.0)}  # global norm 6
    params = {"w": jnp.zeros((4,))}

    def update_norm(clip):
        optimizer = make_optimizer(OptimizerSettings.create(1.0, 10, 0, 0.0, clip, eps=1e4))
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return float(optax.tree.norm(updates)) * 1e4

    assert update_norm(0.0) == pytest.approx(6.0, rel=1e-3)
    assert update_norm(10.0) == pytest.approx(6.0, rel=1e-3)
    assert update_norm(1.5) == pytest.approx(1.5, rel=1e-3)


def test_settings_that_differ_only_in_their_numbers_share_one_program():
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = UNet(down_chs=(32, 32, 32), context_dim=0)
    schedule = diffusion.make_schedule("linear", 20)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)))
    step = jit_train_step(make_train_step(model, schedule, make_optimizer, StepConfig(), mesh), mesh)
    batch = {"image": jax.ShapeDtypeStruct((4, 8, 8, 3), jnp.float32)}

    def program(settings):
        state = jax.eval_shape(lambda: create_train_state(
            jax.tree_util.tree_map(jnp.zeros_like, params), make_optimizer(settings)))
        return step.lower(state, batch, jax.random.key(0), settings).as_text()

    first = program(OptimizerSettings.create(1e-3, 6, 2, 0.0, 1.0))
    assert program(OptimizerSettings.create(1e-4, 10, 0, 0.1, 0.0, eps=1e-3)) == first

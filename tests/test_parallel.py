"""The data-parallel step: 4 devices compute what 1 device computes, and noise is per example."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clip_ddpm import diffusion
from clip_ddpm.ddpm.step import (
    StepConfig,
    draw_batch,
    jit_train_step,
    make_train_step,
    step_randomness,
)
from clip_ddpm.errors import UserError
from clip_ddpm.models.unet import UNet
from clip_ddpm.training import parallel
from clip_ddpm.training.train_state import create_train_state


def test_conftest_gives_four_devices():
    assert jax.device_count() == 4


def _run_steps(devices, num_steps=2):
    mesh = parallel.make_mesh(devices)
    model = UNet(down_chs=(32, 32, 32), context_dim=4, conv_impl="matmul")
    schedule = diffusion.make_schedule("linear", 50)
    # SGD: Adam's first update is lr * sign(g), which turns the all-reduce's rounding noise on
    # exactly-zero gradients (conv biases before a per-channel GroupNorm) into ±lr.
    optimizer = optax.sgd(0.02)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), jnp.zeros((1, 4)))
    state = jax.device_put(create_train_state(params, optimizer), parallel.replicated(mesh))
    step = jit_train_step(make_train_step(model, schedule, optimizer, lambda s: 1e-3,
                                          StepConfig(context_drop_prob=0.5), mesh), mesh)
    key = jax.random.key(7)
    batch = {"image": jax.random.uniform(jax.random.key(1), (8, 8, 8, 3), minval=-1, maxval=1),
             "context": jax.random.normal(jax.random.key(2), (8, 4))}
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, jax.device_put(batch, parallel.data_sharded(mesh)), key)
        losses.append(float(metrics["loss"]))
    return jax.device_get(state), losses


def test_four_device_step_equals_one_device_step():
    state4, losses4 = _run_steps(jax.devices())
    state1, losses1 = _run_steps(jax.devices()[:1])
    np.testing.assert_allclose(losses4, losses1, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(state4.params), jax.tree_util.tree_leaves(state1.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert int(state4.step) == 2


def test_noise_is_distinct_per_example_and_independent_of_sharding():
    key = jax.random.key(0)
    shape = (16, 4, 4, 3)
    mesh = parallel.make_mesh()
    sharded = jax.jit(lambda k, s: step_randomness(k, s, shape, 400)[:2],
                      out_shardings=(parallel.data_sharded(mesh),) * 2)(key, jnp.int32(3))
    single = step_randomness(key, jnp.int32(3), shape, 400)[:2]
    np.testing.assert_array_equal(sharded[1], single[1])
    np.testing.assert_array_equal(sharded[0], single[0])
    flat = np.asarray(single[1]).reshape(16, -1)
    distances = np.linalg.norm(flat[:, None] - flat[None], axis=-1) + np.eye(16) * 1e9
    assert distances.min() > 1.0  # no two examples (hence no two devices) share noise
    other_step = np.asarray(step_randomness(key, jnp.int32(4), shape, 400)[1])
    assert not np.allclose(other_step, single[1])


def test_draw_batch_visits_every_example_once_per_epoch():
    n, b = 12, 4
    data = {"image": np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8),
            "label": np.arange(n, dtype=np.int32)}
    key = jax.random.key(0)
    seen = [np.asarray(draw_batch(data, key, jnp.int32(s), b)["label"]) for s in range(3)]
    assert sorted(np.concatenate(seen).tolist()) == list(range(n))
    next_epoch = np.concatenate([np.asarray(draw_batch(data, key, jnp.int32(s), b)["label"]) for s in range(3, 6)])
    assert sorted(next_epoch.tolist()) == list(range(n))
    assert not np.array_equal(next_epoch, np.concatenate(seen))  # reshuffled
    image = np.asarray(draw_batch(data, key, jnp.int32(0), b)["image"])
    assert image.min() >= -1.0 and image.max() <= 1.0 and image.dtype == np.float32


def test_batch_not_divisible_by_devices_is_a_clear_error():
    with pytest.raises(UserError, match="not divisible by the 4 devices"):
        parallel.check_batch_size(6, parallel.make_mesh())

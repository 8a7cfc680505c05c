"""The data-parallel step: 4 devices compute what 1 device computes, and noise is per example."""
import re
from typing import Callable

import flax.linen as nn
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
from clip_ddpm.diffusion.grid import make_sampler
from clip_ddpm.errors import UserError
from clip_ddpm.models.unet import UNet
from clip_ddpm.training import parallel
from clip_ddpm.training.train_state import OptimizerSettings, create_train_state


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
    step = jit_train_step(make_train_step(model, schedule, lambda settings: optimizer,
                                          StepConfig(context_drop_prob=0.5), mesh), mesh)
    settings = OptimizerSettings.create(0.02, 10, 0, 0.0, 0.0)  # for the logged rate only
    key = jax.random.key(7)
    batch = {"image": jax.random.uniform(jax.random.key(1), (8, 8, 8, 3), minval=-1, maxval=1),
             "context": jax.random.normal(jax.random.key(2), (8, 4))}
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, jax.device_put(batch, parallel.data_sharded(mesh)), key, settings)
        losses.append(float(metrics["loss"]))
    return jax.device_get(state), losses


def test_four_device_step_equals_one_device_step():
    state4, losses4 = _run_steps(jax.devices())
    state1, losses1 = _run_steps(jax.devices()[:1])
    np.testing.assert_allclose(losses4, losses1, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(state4.params), jax.tree_util.tree_leaves(state1.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert int(state4.step) == 2


def test_noise_is_drawn_at_the_global_shape_distinct_per_example():
    """The step's draws are made for the whole batch, not per device: sharded over 4 devices they
    equal the single-device draw, no two examples share noise, and the next step draws anew.
    (A step that drew per device from one key would give every device the same noise.)"""
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


def _sharded_draw(partitionable: bool):
    """The step's draws over the 4-device mesh under one setting of jax_threefry_partitionable:
    (collective operations in the compiled program, the draws, the same draws on one device)."""
    shape = (16, 4, 4, 3)
    mesh = parallel.make_mesh()
    with jax.threefry_partitionable(partitionable):
        draw = jax.jit(lambda k, s: step_randomness(k, s, shape, 400)[:2],
                       out_shardings=(parallel.data_sharded(mesh),) * 2)
        hlo = draw.lower(jax.random.key(0), jnp.int32(3)).compile().as_text()
        values = draw(jax.random.key(0), jnp.int32(3))
        single = jax.jit(lambda k, s: step_randomness(k, s, shape, 400)[:2])(jax.random.key(0), jnp.int32(3))
    collectives = set(re.findall(r"\b(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)\b", hlo))
    return collectives, values, single


def test_partitionable_threefry_saves_communication_and_changes_no_sharded_value():
    """What jax_threefry_partitionable, which `configure_jax` sets, really does: each device
    generates its own rows of a sharded draw with no communication. Without it XLA gathers
    between devices. Under jit the values never depend on the sharding, with or without it."""
    parallel.configure_jax()
    ours, values, single = _sharded_draw(jax.config.jax_threefry_partitionable)
    assert ours == set()
    for a, b in zip(values, single):
        np.testing.assert_array_equal(a, b)
    other, values, single = _sharded_draw(False)
    assert other, "without the flag the sharded draw communicates"
    for a, b in zip(values, single):
        np.testing.assert_array_equal(a, b)


class _ShardingProbe(nn.Module):
    """A stand-in for the U-Net that records how its input is split over devices."""

    record: Callable

    @nn.compact
    def __call__(self, x, t_frac, context):
        jax.debug.inspect_array_sharding(x, callback=self.record)
        return nn.Dense(3)(x) + nn.Dense(3)(context)[:, None, None, :] * t_frac[:, None, None, None]


def test_training_grid_sampler_splits_the_grid_over_the_mesh():
    """With the mesh, every device runs the network on a quarter of the (padded) grid, and the
    images equal those of the unsharded sampler."""
    seen = []
    model = _ShardingProbe(seen.append)
    schedule = diffusion.make_schedule("linear", 20)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)), jnp.zeros((1,)), jnp.zeros((1, 5)))
    contexts = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    mesh = parallel.make_mesh()
    images = {}
    for name, grid_mesh in (("single", None), ("sharded", mesh)):
        sampler = make_sampler(model, schedule, (4, 4, 3), "ddim", 5, mesh=grid_mesh)
        p = params if grid_mesh is None else jax.device_put(params, parallel.replicated(mesh))
        w = jnp.repeat(jnp.array([0.0, 2.0]), 3)  # 6 samples: padded to 8 on 4 devices
        images[name] = np.asarray(sampler(p, jax.random.key(1), jnp.tile(jnp.asarray(contexts), (2, 1)), w))
    sharding = seen[-1]
    assert sharding.shard_shape((16, 4, 4, 3))[0] == 4  # [x; x] of 8 padded samples, 4 per device
    assert images["sharded"].shape == (6, 4, 4, 3)
    np.testing.assert_allclose(images["sharded"], images["single"], atol=1e-5)


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

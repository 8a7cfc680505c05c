"""Training the study's oracle: the attribute classifier of `models.oracle`, fitted to real renders.

A data-parallel loop of its own (random batches with horizontal flips, AdamW): each batch is split
over this process's devices, so on a CPU split into one device per core both cores take a share.
Applying the trained oracle is `evaluation.oracle`.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from clip_ddpm.models.oracle import OracleSpec, images_to_unit_range
from clip_ddpm.training import parallel
from clip_ddpm.training.in_flight import StepsInFlight


@functools.lru_cache(maxsize=4)
def _train_step(spec: OracleSpec, mesh: Mesh):
    """(model, optimiser, the jitted step: each batch split over `mesh`, parameters replicated)."""
    model = spec.model()
    schedule = optax.warmup_cosine_decay_schedule(0.0, spec.learning_rate, min(100, spec.steps // 10 + 1),
                                                  max(spec.steps, 2), spec.learning_rate * 0.01)
    optimizer = optax.flatten(optax.adamw(schedule, weight_decay=1e-4))  # a few ops, not a dozen per array

    def loss_fn(params, images, labels):
        _, logits = model.apply(params, images)
        losses = [optax.softmax_cross_entropy_with_integer_labels(lg, labels[:, i]).mean()
                  for i, lg in enumerate(logits)]
        return sum(losses)

    def step(params, opt_state, images, labels, key):
        x = images_to_unit_range(images)
        flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    replicated, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
    return model, optimizer, jax.jit(step, in_shardings=(replicated, replicated, sharded, sharded, replicated),
                                     out_shardings=(replicated, replicated, replicated))


def _oracle_mesh(batch_size: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """This process's devices (or those given), as many as divide the batch: on a CPU split into
    one device per core, each core takes its share of every batch (twice the steps per second on
    two cores)."""
    devices = list(jax.local_devices() if devices is None else devices)
    count = max(n for n in range(1, len(devices) + 1) if batch_size % n == 0)
    return parallel.make_mesh(devices[:count])


def train_oracle(images: np.ndarray, labels: Sequence[np.ndarray], spec: OracleSpec,
                 show_progress: bool = True) -> dict:
    """Parameters of an oracle fitted to uint8 `images` [N, H, W, 3] with one int label array per
    head (in the order of spec.head_sizes), by AdamW on random batches with horizontal flips.
    Each batch is split over this process's devices; the parameters are replicated."""
    labels = np.stack([np.asarray(lab, np.int32) for lab in labels], axis=1)
    if labels.shape[1] != len(spec.head_sizes) or len(labels) != len(images):
        raise ValueError(f"need one label array per head ({len(spec.head_sizes)}) and per image")
    mesh = _oracle_mesh(spec.batch_size)
    model, optimizer, step = _train_step(spec, mesh)
    replicated, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
    key = jax.random.key(spec.seed)
    params = jax.jit(model.init)(key, jnp.zeros((1,) + images.shape[1:], jnp.float32))
    params, opt_state = jax.device_put((params, optimizer.init(params)), replicated)
    rng = np.random.default_rng(spec.seed)
    in_flight = StepsInFlight()  # the step's all-reduce makes a deep queue deadlock-prone on a split CPU
    bar = None
    if show_progress:
        from tqdm import tqdm
        bar = tqdm(total=spec.steps, unit="step", desc="oracle", dynamic_ncols=True)
    for i in range(spec.steps):
        index = rng.integers(len(images), size=spec.batch_size)
        batch = jax.device_put((images[index], labels[index]), sharded)
        params, opt_state, loss = step(params, opt_state, *batch, jax.random.fold_in(key, i))
        in_flight.dispatched(loss)
        if bar is not None:
            bar.update(1)
            if i % 100 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
    if bar is not None:
        bar.close()
    return jax.device_get(params)

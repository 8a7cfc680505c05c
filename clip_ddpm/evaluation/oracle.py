"""Training and applying the oracle: an attribute classifier trained on real images only.

A claim about generated images needs a scorer that is not the model being judged and whose own
accuracy on real images is known. `train_oracle` fits `models.oracle.Oracle` to real renders
(of another dataset seed than the generator's, so it has never seen the generator's training
images), `oracle_outputs` gives its features and per-attribute predictions for any uint8
images, and `attribute_scores` turns predictions into the accuracies the study reports.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from clip_ddpm.models.oracle import Oracle


@dataclasses.dataclass(frozen=True)
class OracleSpec:
    """The oracle's network and training recipe (hashable: one compiled step per spec and mesh)."""

    head_sizes: tuple[int, ...] = (6, 6)
    widths: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 64
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0

    def model(self) -> Oracle:
        return Oracle(head_sizes=self.head_sizes, widths=self.widths, feature_dim=self.feature_dim)


def _to_float(images: jax.Array) -> jax.Array:
    return images.astype(jnp.float32) / 127.5 - 1.0


_STEPS_IN_FLIGHT = 8


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
        x = _to_float(images)
        flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    replicated, sharded = _shardings(mesh)
    return model, optimizer, jax.jit(step, in_shardings=(replicated, replicated, sharded, sharded, replicated),
                                     out_shardings=(replicated, replicated, replicated))


def _oracle_mesh(batch_size: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """This process's devices (or those given), as many as divide the batch: on a CPU split into
    one device per core, each core takes its share of every batch (twice the steps per second on
    two cores)."""
    devices = list(jax.local_devices() if devices is None else devices)
    count = max(n for n in range(1, len(devices) + 1) if batch_size % n == 0)
    return Mesh(np.asarray(devices[:count]), ("batch",))


def _shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
    """(replicated, split along the leading axis) over the mesh."""
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("batch"))


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
    replicated, sharded = _shardings(mesh)
    key = jax.random.key(spec.seed)
    params = jax.jit(model.init)(key, jnp.zeros((1,) + images.shape[1:], jnp.float32))
    params, opt_state = jax.device_put((params, optimizer.init(params)), replicated)
    rng = np.random.default_rng(spec.seed)
    losses: collections.deque = collections.deque()
    bar = None
    if show_progress:
        from tqdm import tqdm
        bar = tqdm(total=spec.steps, unit="step", desc="oracle", dynamic_ncols=True)
    for i in range(spec.steps):
        index = rng.integers(len(images), size=spec.batch_size)
        batch = jax.device_put((images[index], labels[index]), sharded)
        params, opt_state, loss = step(params, opt_state, *batch, jax.random.fold_in(key, i))
        # A few steps in flight at most: the step's all-reduce makes a deep queue of steps
        # deadlock-prone on a CPU split into devices (clip_ddpm.training.in_flight says why).
        losses.append(loss)
        if len(losses) > _STEPS_IN_FLIGHT:
            losses.popleft().block_until_ready()
        if bar is not None:
            bar.update(1)
            if i % 100 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
    if bar is not None:
        bar.close()
    return jax.device_get(params)


@functools.lru_cache(maxsize=4)
def _apply(spec: OracleSpec):
    model = spec.model()

    @jax.jit
    def apply(params, images):
        features, logits = model.apply(params, _to_float(images))
        return features, tuple(jnp.argmax(lg, axis=-1) for lg in logits)

    return apply


def oracle_outputs(params: dict, spec: OracleSpec, images: np.ndarray,
                   batch_size: int = 500) -> tuple[np.ndarray, list[np.ndarray]]:
    """(features float32 [N, feature_dim], one int prediction array [N] per head) of uint8 images,
    in fixed-size batches (the last one padded) so a whole study compiles this once."""
    apply = _apply(spec)
    features, predictions = [], []
    for start in range(0, len(images), batch_size):
        part = np.asarray(images[start:start + batch_size])
        rows = len(part)
        if rows < batch_size:
            part = np.concatenate([part, np.repeat(part[-1:], batch_size - rows, axis=0)])
        f, p = jax.device_get(apply(params, part))
        features.append(np.asarray(f[:rows], np.float32))
        predictions.append([np.asarray(x[:rows]) for x in p])
    if not features:
        return (np.zeros((0, spec.feature_dim), np.float32),
                [np.zeros((0,), np.int64) for _ in spec.head_sizes])
    return np.concatenate(features), [np.concatenate([p[h] for p in predictions])
                                      for h in range(len(spec.head_sizes))]


def attribute_scores(predictions: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Accuracy per attribute and "both" (every attribute right on the same image)."""
    names = list(targets)
    if not names or set(predictions) != set(names):
        raise ValueError(f"predictions {sorted(predictions)} and targets {names} must name the same attributes")
    right = {name: np.asarray(predictions[name]) == np.asarray(targets[name]) for name in names}
    sizes = {r.shape for r in right.values()}
    if len(sizes) != 1 or 0 in next(iter(sizes)):
        raise ValueError("predictions and targets must be equal, non-empty shapes")
    scores = {name: float(np.mean(r)) for name, r in right.items()}
    scores["both"] = float(np.mean(np.all(np.stack(list(right.values())), axis=0)))
    return scores

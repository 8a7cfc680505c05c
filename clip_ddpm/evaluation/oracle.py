"""Applying the oracle: an attribute classifier trained on real images only.

A claim about generated images needs a scorer that is not the model being judged and whose own
accuracy on real images is known. `training.oracle_training.train_oracle` fits the oracle to
real renders (of another dataset seed than the generator's, so it has never seen the
generator's training images); `oracle_outputs` gives its features and per-attribute predictions
for any uint8 images, and `attribute_scores` turns predictions into the accuracies the study
reports.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clip_ddpm.models.oracle import OracleSpec, images_to_unit_range

__all__ = ["OracleSpec", "attribute_scores", "oracle_outputs"]


@functools.lru_cache(maxsize=4)
def _apply(spec: OracleSpec):
    model = spec.model()

    @jax.jit
    def apply(params, images):
        features, logits = model.apply(params, images_to_unit_range(images))
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

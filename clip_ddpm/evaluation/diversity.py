"""Diversity of images drawn for one condition: their mean pairwise distance in a feature space.

A generator that answers every prompt with the same picture can still be right on every
attribute; diversity catches that. It is the mean Euclidean distance between the features of
every unordered pair of images of one group (one prompt), averaged over groups, and is read
beside the same number for real images of the same classes.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean L2 distance over the n(n-1)/2 unordered pairs of rows of [n >= 2, D]."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need [n >= 2, D] features, got shape {x.shape}")
    squared = np.sum(x ** 2, axis=1)
    gram = squared[:, None] + squared[None, :] - 2.0 * x @ x.T
    upper = np.triu_indices(len(x), k=1)
    return float(np.mean(np.sqrt(np.clip(gram[upper], 0.0, None))))


def grouped_diversity(features: np.ndarray, groups: Sequence[int]) -> float:
    """The mean over groups (those with at least two members) of their mean pairwise distance."""
    features, groups = np.asarray(features), np.asarray(groups)
    if len(features) != len(groups):
        raise ValueError(f"{len(features)} feature rows but {len(groups)} group ids")
    values = [mean_pairwise_distance(features[groups == g]) for g in np.unique(groups)
              if np.sum(groups == g) >= 2]
    if not values:
        raise ValueError("no group has two members")
    return float(np.mean(values))

"""Where the U-Net's context vectors come from, per --condition.

  none       no context: an unconditional model (context width 0).
  class      one-hot class labels, made on the device from each batch's labels.
  embedding  a precomputed float array [N, D] aligned with the dataset (e.g. CLIP embeddings).
  clip_image / clip_text  CLIP embeddings of the images / of their captions (see the CLIP cache).

A ContextSource knows the context width, which per-example arrays must live on the device
beside the images, how to turn a drawn batch into contexts, and which contexts make a grid.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from clip_ddpm.data import ImageDataset
from clip_ddpm.diffusion.conditioning import one_hot_context
from clip_ddpm.errors import UserError
from clip_ddpm.training.parallel import gather_from_processes


@dataclasses.dataclass(frozen=True)
class ContextSource:
    kind: str  # "none", "class" or "vectors"
    dim: int
    num_classes: int = 0
    vectors: np.ndarray | None = None  # [N, D] for "vectors"
    clip_weights_hash: str = ""  # the CLIP that made `vectors`, for clip_image / clip_text
    clip_fingerprint: str = ""  # its weights, config and compute dtype together

    def device_fields(self, dataset: ImageDataset) -> dict[str, np.ndarray]:
        """Per-example arrays that travel to the device with the images."""
        fields = {"image": dataset.images}
        if self.kind == "class":
            fields["label"] = dataset.labels.astype(np.int32)
        elif self.kind == "vectors":
            fields["context"] = self.vectors
        return fields

    def batch_context(self, batch: dict[str, jax.Array]) -> jax.Array | None:
        """Contexts of a drawn batch (traced inside the jitted step)."""
        if self.kind == "class":
            return one_hot_context(batch["label"], self.num_classes)
        if self.kind == "vectors":
            return batch["context"]
        return None

    def grid_contexts(self, dataset: ImageDataset, columns: int) -> tuple[np.ndarray | None, list[str]]:
        """Contexts for the columns of a sample grid, with a title for each column.

        Classes: the first `columns` classes. Vectors: the vector of the first image of each of
        the first `columns` classes, titled by that image's caption. With several processes,
        each holding a slice of the dataset, "first" is in the global order, so every process
        picks the same vectors (a title another process's image gave is the class name).
        """
        if self.kind == "none":
            return None, ["unconditional"] * columns
        classes = list(range(min(columns, dataset.num_classes)))
        if not classes:  # no grid (--sample_columns=0)
            return np.zeros((0, self.dim), np.float32), []
        if self.kind == "class":
            return np.eye(self.num_classes, dtype=np.float32)[classes], [dataset.class_names[c] for c in classes]
        first = [np.flatnonzero(dataset.labels == c) for c in classes]
        local_first = np.asarray([hits[0] if len(hits) else -1 for hits in first], np.int64)
        width = self.vectors.shape[1]
        local_vectors = np.stack([self.vectors[i] if i >= 0 else np.zeros(width, np.float32) for i in local_first])
        found = gather_from_processes(local_first >= 0)  # [processes, classes]
        vectors = gather_from_processes(local_vectors)  # [processes, classes, width]
        chosen, titles = [], []
        for c in classes:
            holders = np.flatnonzero(found[:, c])
            if not len(holders):
                continue
            chosen.append(vectors[holders[0], c])
            mine = holders[0] == jax.process_index()
            titles.append(dataset.captions[local_first[c]] if mine else dataset.class_names[c])
        return np.stack(chosen).astype(np.float32), titles


def read_context_array(path: str, allow_single: bool = False) -> np.ndarray:
    """A finite float32 [N, D] array from a .npy file (a single [D] vector too, if allowed)."""
    if not os.path.isfile(path):
        raise UserError(f"--context_file {path} does not exist")
    try:
        vectors = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise UserError(f"--context_file {path} is not a readable .npy array: {error}") from None
    if allow_single and vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2:
        raise UserError(f"--context_file {path} must be 2-D [examples, width], got shape {vectors.shape}")
    if not np.all(np.isfinite(vectors)):
        raise UserError(f"--context_file {path} contains non-finite values")
    return vectors.astype(np.float32)


def load_context_file(path: str, num_examples: int) -> np.ndarray:
    """Training contexts from .npy: one row per dataset example."""
    vectors = read_context_array(path)
    if vectors.shape[0] != num_examples:
        raise UserError(f"--context_file {path} has {vectors.shape[0]} rows but the dataset has "
                        f"{num_examples} examples")
    return vectors


def context_source_for(condition: str, dataset: ImageDataset, context_file: str = "",
                       vectors: np.ndarray | None = None) -> ContextSource:
    """The ContextSource of a --condition; CLIP conditions pass their cached `vectors`."""
    if condition == "none":
        return ContextSource("none", 0)
    if condition == "class":
        return ContextSource("class", dataset.num_classes, num_classes=dataset.num_classes)
    if condition == "embedding":
        vectors = load_context_file(context_file, len(dataset))
    if vectors is None:
        raise UserError(f"--condition={condition} needs precomputed context vectors")
    return ContextSource("vectors", int(vectors.shape[1]), vectors=np.asarray(vectors, np.float32))

"""The one in-memory form every image source returns.

Each source (procedural shapes, tensorflow-datasets, a folder) decodes once into uint8 arrays;
training keeps them on the accelerator and draws batches there, so no host round-trip happens
inside the training loop. Captions ride along so that text-conditioned variants and the CLIP
embedding cache need nothing else from the source.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Images with labels and captions, all aligned on the first axis.

    images: uint8 [N, H, W, 3].
    labels: int32 [N], index into class_names.
    class_names: one readable name per class ("red circle", "daisy", ...).
    captions: one caption per image.
    name: stable identifier of the source and split (used by embedding-cache manifests).
    attributes: optional extra int32 [N] label arrays (e.g. "shape", "colour").
    attribute_names: for each attribute, the readable name of each value.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    captions: tuple[str, ...]
    name: str
    attributes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    attribute_names: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N,H,W,3], got {self.images.dtype} {self.images.shape}")
        if len(self.labels) != n or len(self.captions) != n:
            raise ValueError(
                f"labels ({len(self.labels)}) and captions ({len(self.captions)}) must match images ({n})")
        for key, values in self.attributes.items():
            if len(values) != n:
                raise ValueError(f"attribute {key!r} has {len(values)} values for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: np.ndarray, name_suffix: str = "") -> "ImageDataset":
        """The examples at `index` (boolean mask or integer indices), same classes."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return dataclasses.replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            captions=tuple(self.captions[i] for i in index),
            name=self.name + name_suffix,
            attributes={k: v[index] for k, v in self.attributes.items()},
        )


def to_model_range(images_uint8):
    """uint8 [0, 255] -> float [-1, 1], the range the diffusion model works in."""
    return images_uint8.astype("float32") / 127.5 - 1.0


def to_uint8(images):
    """float [-1, 1] -> uint8 [0, 255], clipping what the sampler overshoots."""
    return np.clip(np.round((np.asarray(images, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)

"""The images a run trains or evaluates on, as its flags describe them (both trainers)."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from clip_ddpm.data import ImageDataset, load_dataset
from clip_ddpm.errors import UserError
from clip_ddpm.training.run_config import RunConfig


def load_split(config: RunConfig, split: str = "train", num_images: int = 0, whole: bool = False) -> ImageDataset:
    """Split `split` of --dataset: this process's slice of it, or with `whole` every example
    (for evaluation on one host). `num_images` sizes a procedural source (0: --dataset_size for
    the training split, else the source's default)."""
    import jax

    options: dict[str, Any] = {}
    if config.dataset == "shapes":
        size = num_images or (config.dataset_size if split == "train" else 0)
        if size:
            options["num_images"] = size
        if config.holdout_pairs:
            options["holdout_pairs"] = tuple(config.holdout_pairs)
    elif config.dataset.startswith("tfds:") and config.tfds_data_dir:
        options["data_dir"] = config.tfds_data_dir
    elif config.dataset.startswith("folder:") and config.test_fraction:
        options["test_fraction"] = config.test_fraction
    index, count = (0, 1) if whole else (jax.process_index(), jax.process_count())
    return load_dataset(config.dataset, split=split, image_size=config.image_size, seed=config.seed,
                        process_index=index, process_count=count, **options)


def same_examples_at_size(config: RunConfig, dataset: ImageDataset, image_size: int, split: str = "train",
                          num_images: int = 0, whole: bool = False) -> ImageDataset:
    """`dataset`, loaded by `load_split(config, split, num_images, whole)`, again at `image_size`
    pixels: for a model that reads the same examples at another resolution than the run trains
    on, as a CLIP embedding the training images of a low-resolution DDPM. Refused, not mixed,
    when the examples at the two sizes differ."""
    if dataset.image_size == image_size:
        return dataset
    other = load_split(dataclasses.replace(config, image_size=image_size), split, num_images, whole)
    if not (np.array_equal(other.labels, dataset.labels) and list(other.captions) == list(dataset.captions)):
        raise UserError(f"{dataset.name} loaded at {image_size} px does not list the same examples "
                        f"as at {dataset.image_size} px, so it cannot stand in for it")
    return other

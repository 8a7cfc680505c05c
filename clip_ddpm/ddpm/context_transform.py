"""The run's gap-closing context transform (--context_transform): built from the training set,
kept in the run directory, and applied again to prompts at sampling.

"gapshift" needs two means over the training set: of the training contexts (CLIP image
embeddings) and of the CLIP text embeddings of the training captions. They are stored in
`workdir/context_transform.npz` beside flags.txt, so `python -m clip_ddpm.sample --prompt=...`
centres a prompt exactly as the model's training contexts were centred, without loading the
dataset again.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from clip_ddpm.data import ImageDataset
from clip_ddpm.ddpm.config import Config
from clip_ddpm.ddpm.contexts import ContextSource
from clip_ddpm.diffusion.conditioning import ContextTransform
from clip_ddpm.errors import UserError

TRANSFORM_FILENAME = "context_transform.npz"


def build_context_transform(config: Config, dataset: ImageDataset, source: ContextSource) -> ContextTransform:
    """The transform of --context_transform for this run's training contexts."""
    if config.context_transform == "none":
        return ContextTransform()
    if config.context_transform == "lafite":
        return ContextTransform("lafite", xi=config.lafite_xi)
    from clip_ddpm.clip.embedding_cache import clip_context_vectors

    other = "clip_text" if config.condition == "clip_image" else "clip_image"
    other_vectors, _ = clip_context_vectors(dataclasses.replace(config, condition=other), dataset,
                                            trained_clip=(source.clip_weights_hash, source.clip_fingerprint))
    own_mean = np.mean(source.vectors, axis=0).astype(np.float32)
    other_mean = np.mean(other_vectors, axis=0).astype(np.float32)
    # Prompts are text: they are centred on the text mean, whatever the training modality.
    text_mean = other_mean if config.condition == "clip_image" else own_mean
    return ContextTransform("gapshift", noise_std=config.gap_noise_std, train_mean=own_mean,
                            sample_mean=text_mean)


def save_context_transform(workdir: str, transform: ContextTransform) -> None:
    """Writes the transform's constants (atomically) when it has any."""
    if transform.kind != "gapshift":
        return
    path = os.path.join(workdir, TRANSFORM_FILENAME)
    temporary = path + ".tmp.npz"
    np.savez(temporary, kind=transform.kind, noise_std=transform.noise_std,
             train_mean=transform.train_mean, sample_mean=transform.sample_mean)
    os.replace(temporary, path)


def load_context_transform(workdir: str, config: Config) -> ContextTransform:
    """The transform a trained run applies to prompts (the identity for none and lafite)."""
    if config.context_transform != "gapshift":
        return ContextTransform(config.context_transform, xi=config.lafite_xi)
    path = os.path.join(workdir, TRANSFORM_FILENAME)
    if not os.path.isfile(path):
        raise UserError(f"{workdir} was trained with --context_transform=gapshift but {TRANSFORM_FILENAME} "
                        "is missing: its prompts cannot be centred like its training contexts")
    with np.load(path, allow_pickle=False) as saved:
        return ContextTransform("gapshift", noise_std=float(saved["noise_std"]),
                                train_mean=np.asarray(saved["train_mean"], np.float32),
                                sample_mean=np.asarray(saved["sample_mean"], np.float32))

"""The study's variants: one DDPM recipe, seven sources of context.

Every variant trains the same U-Net with the same steps, batch and seeds (the --ddpm_* flags)
and differs only in the fields below. Each is an ordinary run directory,
W/variants/NAME/seedS, that `python -m clip_ddpm.sample` reloads like any other run.
"""
from __future__ import annotations

import dataclasses
import os

VARIANTS: dict[str, dict[str, object]] = {
    # CLIP text embeddings of the captions: uses the labels, the upper reference.
    "text": {"condition": "clip_text"},
    # CLIP image embeddings: no labels (the course's experiment).
    "image": {"condition": "clip_image"},
    # Image embeddings with LAFITE's noise, so the model learns a neighbourhood of each one.
    "image_noise": {"condition": "clip_image", "context_transform": "lafite"},
    # Image embeddings centred on the image mean (prompts on the text mean), plus noise.
    "image_gapshift": {"condition": "clip_image", "context_transform": "gapshift"},
    # One-hot labels (the course's Part 4), sampled from labels, not prompts.
    "class": {"condition": "class"},
    # No context: the floor.
    "none": {"condition": "none"},
    # Image embeddings with the course's element-wise dropout mask (the dropout ablation).
    "image_elementwise": {"condition": "clip_image", "context_drop": "elementwise"},
}
PROMPT_VARIANTS = frozenset(name for name, fields in VARIANTS.items()
                            if str(fields["condition"]).startswith("clip"))
LANGUAGE_FREE = frozenset({"image", "image_noise", "image_gapshift", "image_elementwise"})


def base_name(variant: str) -> str:
    """"image_noise@0.2" -> "image_noise"."""
    return variant.split("@", 1)[0]


def is_language_free(variant: str) -> bool:
    return base_name(variant) in LANGUAGE_FREE


def uses_prompts(variant: str) -> bool:
    return base_name(variant) in PROMPT_VARIANTS


def run_dir(study_dir: str, variant: str, seed: int) -> str:
    return os.path.join(study_dir, "variants", variant.replace("@", "_xi"), f"seed{seed}")


def variant_config(ddpm, study_dir: str, variant: str, seed: int, clip_model: str, cache_dir: str):
    """The DDPM Config of one variant and seed: the shared recipe with this variant's context."""
    fields = dict(VARIANTS[base_name(variant)])
    if "@" in variant:
        fields["lafite_xi"] = float(variant.split("@", 1)[1])
    fields.setdefault("context_transform", "none")
    fields.setdefault("context_drop", ddpm.context_drop)
    clip = clip_model if str(fields["condition"]).startswith("clip") else ""
    return dataclasses.replace(ddpm, workdir=run_dir(study_dir, variant, seed), seed=seed,
                               clip_model=clip, clip_cache_dir=ddpm.clip_cache_dir or cache_dir,
                               **fields).validate()

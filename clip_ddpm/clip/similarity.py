"""How well does each text describe each image, according to a CLIP: the similarity matrices.

This is the check to run before trusting a CLIP to steer a diffusion model: if the right caption
does not score highest here, guidance by it will not work either. `run_similarity` is what
`python -m clip_ddpm.similarity` does: compare, print the table(s), save the heat map if asked.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import TextIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from clip_ddpm.errors import UserError
from clip_ddpm.evaluation.similarity_report import draw_heatmap, format_table


class SimilarityError(UserError, ValueError):
    """Inputs the similarity tool cannot use (missing or unreadable images, no texts, ...)."""


@dataclasses.dataclass(frozen=True)
class SimilarityResult:
    """cosine[i, j] = cos(image i, text j); raw[i, j] = their unnormalised dot product."""

    image_labels: tuple[str, ...]
    texts: tuple[str, ...]
    cosine: np.ndarray
    raw: np.ndarray


def read_images(paths: Sequence[str]) -> list[Image.Image]:
    """The images at `paths` as loaded PIL images; a missing or undecodable file is a SimilarityError."""
    for path in paths:
        if not os.path.isfile(path):
            raise SimilarityError(f"--image {path}: no such file")
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image.copy())
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
            raise SimilarityError(f"--image {path} is not a readable image ({type(error).__name__})") from None
    return images


def image_labels(paths: Sequence[str]) -> tuple[str, ...]:
    """File names, or the paths as given where two files share a name."""
    names = [os.path.basename(p) for p in paths]
    return tuple(names) if len(set(names)) == len(names) else tuple(paths)


def clip_features(clip_model: str, images: Sequence[Image.Image],
                  texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Projected, unnormalised CLIP embeddings: images float32 [I, D], texts float32 [T, D].

    Images are prepared exactly as transformers' CLIPImageProcessor does (transparency on white,
    bicubic shortest-side resize, centre crop, the checkpoint's mean and std).
    """
    from clip_ddpm.clip.encoder import CLIPEncoder

    encoder = CLIPEncoder.from_pretrained(clip_model)
    if encoder.tokenizer is None:
        raise SimilarityError(f"CLIP model {clip_model!r} has no tokenizer files, so it cannot encode --text")
    return encoder.encode_images(list(images), features=True), encoder.encode_texts(list(texts), features=True)


def similarity_matrices(image_features: np.ndarray, text_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine [I, T], raw dot products [I, T]) of unnormalised embeddings, computed in float64."""
    a = np.asarray(image_features, np.float64)
    b = np.asarray(text_features, np.float64)
    unit_a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    unit_b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return unit_a @ unit_b.T, a @ b.T


def compare(clip_model: str, image_paths: Sequence[str], texts: Sequence[str],
            images: Sequence[Image.Image] | None = None) -> SimilarityResult:
    """Embeds the images (read from `image_paths` unless given) and texts with `clip_model`,
    and compares every pair."""
    if not image_paths:
        raise SimilarityError("give at least one --image")
    if not texts or not all(t.strip() for t in texts):
        raise SimilarityError("give at least one non-empty --text")
    images = read_images(image_paths) if images is None else images
    cosine, raw = similarity_matrices(*clip_features(clip_model, images, texts))
    return SimilarityResult(image_labels(image_paths), tuple(texts), cosine, raw)


def _check_heatmap_path(path: str, overwrite: bool) -> None:
    if not path.lower().endswith(".png"):
        raise SimilarityError(f"--heatmap must end in .png, got {path}")
    if os.path.exists(path) and not overwrite:
        raise SimilarityError(f"{path} exists; pass --overwrite to replace it or choose another --heatmap")


def run_similarity(clip_model: str, image_paths: Sequence[str], texts: Sequence[str], raw: bool = False,
                   heatmap: str = "", overwrite: bool = False, out: TextIO | None = None) -> SimilarityResult:
    """What the command does: compare, print the table(s), save the heat map if asked."""
    out = out or sys.stdout
    if not clip_model:
        raise SimilarityError("--clip_model is required")
    if heatmap:
        _check_heatmap_path(heatmap, overwrite)  # before the slow part, not after it
    images = read_images(image_paths)
    result = compare(clip_model, image_paths, texts, images)
    print("cosine similarity (rows: images, columns: texts)", file=out)
    print(format_table(result.cosine, result.image_labels, result.texts), file=out)
    if raw:
        print("\nraw dot products of the unnormalised embeddings", file=out)
        print(format_table(result.raw, result.image_labels, result.texts), file=out)
    if heatmap:
        thumbnails = [np.asarray(image.convert("RGB")) for image in images]
        picture = draw_heatmap(result.cosine, result.image_labels, result.texts, thumbnails)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(heatmap)), exist_ok=True)
            picture.save(heatmap)
        except OSError as error:
            raise SimilarityError(f"cannot write --heatmap {heatmap}: {error.strerror or error}") from None
        print(f"\nwrote {heatmap}", file=out)
    return result

"""How well an image-text embedding space serves generation from text: the modality gap and
how much more a matching caption resembles its image than a caption of another class does.

A DDPM trained on image embeddings and sampled from text embeddings can only read from a prompt
what the text embedding shares with the image embeddings of its class. Two numbers bound that:
the distance between the two modalities' mean embeddings (Liang et al. 2022's "modality gap";
0 for a space where text and image embeddings are spread alike), and the mean cosine of
matching versus mismatched image-caption pairs. Pure numpy on host arrays.
"""
from __future__ import annotations

import numpy as np

from clip_ddpm.evaluation.metrics import normalize


def modality_gap(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> float:
    """‖mean(unit image embeddings) − mean(unit text embeddings)‖."""
    return float(np.linalg.norm(normalize(image_embeddings).mean(0) - normalize(text_embeddings).mean(0)))


def pair_cosines(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                 labels: np.ndarray) -> dict[str, float]:
    """Mean cosine of each image with its own caption ("matching") and over every image-caption
    pair whose classes differ ("mismatched"), computed exactly from per-class sums."""
    images, texts = normalize(image_embeddings), normalize(text_embeddings)
    labels = np.asarray(labels)
    if len(images) != len(texts) or len(images) != len(labels):
        raise ValueError("image i is paired with caption i: the counts must match")
    matching = float(np.mean(np.sum(images * texts, axis=1)))
    total = float(images.sum(0) @ texts.sum(0))
    same, same_pairs = 0.0, 0
    for k in np.unique(labels):
        rows = labels == k
        same += float(images[rows].sum(0) @ texts[rows].sum(0))
        same_pairs += int(rows.sum()) ** 2
    other_pairs = len(labels) ** 2 - same_pairs
    if other_pairs == 0:
        raise ValueError("every example has the same class: there are no mismatched pairs")
    return {"matching": matching, "mismatched": (total - same) / other_pairs}

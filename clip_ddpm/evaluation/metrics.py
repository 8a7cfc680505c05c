"""Scores computed from embeddings: zero-shot classification and retrieval.

Every function here is pure numpy on host arrays, so it serves any embedding source (the CLIP
trained here, a hub CLIP, samples of the DDPM) and is checked against hand-computed values.
Embeddings are compared by cosine similarity; inputs need not be normalised.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x scaled to unit L2 norm along `axis` (float64, for exact host-side scoring)."""
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def class_text_embeddings(prompt_embeddings: np.ndarray) -> np.ndarray:
    """[classes, templates, D] prompt embeddings -> [classes, D] unit class embeddings.

    CLIP's prompt ensembling: each prompt embedding is normalised, the templates of a class are
    averaged, and the mean is normalised again. Averaging in embedding space (rather than
    averaging per-template predictions) costs one similarity matrix and is what CLIP reported
    to work best.
    """
    prompt_embeddings = np.asarray(prompt_embeddings)
    if prompt_embeddings.ndim != 3:
        raise ValueError(f"prompt embeddings must be [classes, templates, D], got {prompt_embeddings.shape}")
    return normalize(normalize(prompt_embeddings).mean(axis=1))


def zero_shot_predictions(image_embeddings: np.ndarray, class_embeddings: np.ndarray) -> np.ndarray:
    """int [N]: the class whose text embedding is most similar to each image (cosine)."""
    similarity = normalize(image_embeddings) @ normalize(class_embeddings).T
    return np.argmax(similarity, axis=-1)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of predictions equal to labels."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.size == 0:
        raise ValueError(f"need equal, non-empty shapes; got {predictions.shape} and {labels.shape}")
    return float(np.mean(predictions == labels))


def attribute_accuracies(predicted_classes: np.ndarray, labels: np.ndarray,
                         class_attributes: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Accuracy of each attribute (e.g. shape, colour) read off a class prediction.

    `class_attributes[name][k]` is the value of attribute `name` for class k. An image counts
    as right for an attribute when its predicted class carries the true class's value, so a
    "red circle" predicted as "blue circle" is right on shape and wrong on colour. The key
    "class" gives the accuracy on the full class (every attribute right).
    """
    predicted_classes, labels = np.asarray(predicted_classes), np.asarray(labels)
    out = {"class": accuracy(predicted_classes, labels)}
    for name, values in class_attributes.items():
        values = np.asarray(values)
        out[name] = accuracy(values[predicted_classes], values[labels])
    return out


def recall_at_1(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                image_keys: np.ndarray | None = None, text_keys: np.ndarray | None = None) -> float:
    """Image -> text retrieval recall@1: how often an image's most similar text is a right one.

    By default image i's only right text is text i (its own caption). With `image_keys` and
    `text_keys`, a retrieved text is right when its key equals the image's key; passing class
    labels scores retrieval of any caption of the right class, which is the fair measure when
    many captions describe the same thing.
    """
    image_embeddings, text_embeddings = np.asarray(image_embeddings), np.asarray(text_embeddings)
    if image_keys is None and text_keys is None:
        if len(image_embeddings) != len(text_embeddings):
            raise ValueError("without keys, image i is paired with text i: the counts must match")
        image_keys = text_keys = np.arange(len(image_embeddings))
    elif image_keys is None or text_keys is None:
        raise ValueError("pass both image_keys and text_keys, or neither")
    nearest = np.argmax(normalize(image_embeddings) @ normalize(text_embeddings).T, axis=-1)
    return accuracy(np.asarray(text_keys)[nearest], np.asarray(image_keys))


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for the default z): how far an accuracy
    measured on `trials` images may be from the model's own, from the count alone. Unlike the
    normal approximation it stays inside [0, 1] and is not empty at 0 or `trials` successes."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1; got {successes}, {trials}")
    p, z2 = successes / trials, z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))

"""Zero-shot classification and caption retrieval of a CLIP on a captioned image dataset.

Images and texts are embedded in fixed-size jitted batches (the model and preprocessing are
static arguments, so evaluating several parameter sets of one model compiles once); the
scores themselves come from `clip_ddpm.evaluation.metrics`. Images are preprocessed on the device with
`preprocess_images_jax`, as in training.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from clip_ddpm.evaluation import metrics
from clip_ddpm.clip.preprocess import PreprocessConfig, preprocess_images_jax
from clip_ddpm.clip.tokenizer import tokenize
from clip_ddpm.data import captions as caption_lib
from clip_ddpm.data import shapes
from clip_ddpm.data.dataset import ImageDataset
from clip_ddpm.models.clip import CLIP, l2_normalize


@functools.partial(jax.jit, static_argnums=(0, 1))
def _image_embeddings(model: CLIP, preprocess: PreprocessConfig, params: Any, images: jax.Array) -> jax.Array:
    pixels = preprocess_images_jax(images, preprocess)
    return l2_normalize(model.apply({"params": params}, pixels, method=CLIP.encode_image))


@functools.partial(jax.jit, static_argnums=(0,))
def _text_embeddings(model: CLIP, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return l2_normalize(model.apply({"params": params}, ids, mask, method=CLIP.encode_text))


def _in_batches(fn, arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    """fn over rows of `arrays` in batches of exactly `batch_size` (the last padded), one shape."""
    n = len(arrays[0])
    out = []
    for start in range(0, n, batch_size):
        parts = [a[start:start + batch_size] for a in arrays]
        pad = batch_size - len(parts[0])
        parts = [np.concatenate([p, np.repeat(p[-1:], pad, axis=0)]) if pad else p for p in parts]
        out.append(np.asarray(fn(*parts))[:batch_size - pad])
    return np.concatenate(out)


class Embedder:
    """Embeds images and texts with one CLIP model and any of its parameter sets."""

    def __init__(self, model: CLIP, preprocess: PreprocessConfig, tokenizer, context_length: int,
                 batch_size: int = 256):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.context_length, self.batch_size = context_length, batch_size

    def images(self, params: Any, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> unit float32 [N, D]."""
        fn = functools.partial(_image_embeddings, self.model, self.preprocess, params)
        return _in_batches(fn, [np.asarray(images)], self.batch_size)

    def texts(self, params: Any, texts: Sequence[str]) -> np.ndarray:
        """Strings -> unit float32 [N, D] (tokenized to the model's context length)."""
        ids, mask = tokenize(self.tokenizer, list(texts), self.context_length)
        return _in_batches(functools.partial(_text_embeddings, self.model, params), [ids, mask],
                           self.batch_size)


def prompt_templates_for(dataset: ImageDataset) -> list[tuple[str, ...]]:
    """Zero-shot prompts, one tuple (a prompt per class, in label order) per template."""
    if is_shapes(dataset):
        return [shapes.class_prompts(t) for t in shapes.PROMPT_TEMPLATES]
    return [caption_lib.class_prompts(dataset.class_names, t) for t in caption_lib.DEFAULT_TEMPLATES]


def is_shapes(dataset: ImageDataset) -> bool:
    return tuple(dataset.class_names) == shapes.CLASS_NAMES


def class_attributes(dataset: ImageDataset) -> dict[str, np.ndarray]:
    """Per-class attribute values, for scoring each factor of a class prediction.

    Shapes classes are (shape, colour) pairs with label = shape * len(COLOURS) + colour; other
    datasets have no factored classes.
    """
    if not is_shapes(dataset):
        return {}
    labels = np.arange(len(shapes.CLASS_NAMES))
    return {"shape": labels // len(shapes.COLOURS), "colour": labels % len(shapes.COLOURS)}


def evaluate_clip(embedder: Embedder, params: Any, dataset: ImageDataset) -> dict[str, float]:
    """Zero-shot accuracies (class and, for shapes, shape and colour) and image->text recall@1.

    Class text embeddings are prompt ensembles (the mean over `prompt_templates_for`). Recall
    is measured against the dataset's own captions in two ways: "recall@1" counts a retrieved
    caption right when it is the image's caption word for word (duplicates are the same text);
    "recall@1_class" when it is any caption of an image of the same class.
    """
    image_embeds = embedder.images(params, dataset.images)
    templates = prompt_templates_for(dataset)
    prompts = [prompt for template in templates for prompt in template]
    prompt_embeds = embedder.texts(params, prompts).reshape(len(templates), dataset.num_classes, -1)
    class_embeds = metrics.class_text_embeddings(prompt_embeds.transpose(1, 0, 2))
    predicted = metrics.zero_shot_predictions(image_embeds, class_embeds)
    attributes = class_attributes(dataset)
    scores = metrics.attribute_accuracies(predicted, dataset.labels, attributes)
    out = {f"zero_shot_{name}": value for name, value in scores.items()}
    out["chance_class"] = 1.0 / dataset.num_classes
    out.update({f"chance_{name}": 1.0 / len(set(values.tolist())) for name, values in attributes.items()})

    caption_embeds = embedder.texts(params, dataset.captions)
    caption_keys = np.asarray(dataset.captions, dtype=object)
    out["recall@1"] = metrics.recall_at_1(image_embeds, caption_embeds, caption_keys, caption_keys)
    out["recall@1_class"] = metrics.recall_at_1(image_embeds, caption_embeds, dataset.labels, dataset.labels)
    # A caption drawn at random is of the image's class with probability sum_k p_k^2.
    out["chance_recall@1_class"] = float(np.sum((np.bincount(dataset.labels) / len(dataset)) ** 2))
    return out


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per metric, one column per evaluated parameter set."""
    columns = list(results)
    names = [n for n in results[columns[0]] if not n.startswith("chance")]
    chance = results[columns[0]]
    width = max(len(n) for n in names) + 2
    lines = [f"{'metric':<{width}}" + "".join(f"{c:>10}" for c in columns) + f"{'chance':>10}"]
    for name in names:
        key = "chance_" + name.removeprefix("zero_shot_")
        row = "".join(f"{results[c][name]:>10.3f}" for c in columns)
        lines.append(f"{name:<{width}}{row}" + (f"{chance[key]:>10.3f}" if key in chance else f"{'':>10}"))
    return "\n".join(lines)

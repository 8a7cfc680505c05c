"""Zero-shot classification and caption retrieval of a CLIP on a captioned image dataset.

Images and texts are embedded by a `CLIPEncoder`, exactly as the embedding cache and prompt
sampling embed them (encoders of one model share their compiled programs, so evaluating several
parameter sets compiles once); the scores themselves come from `evaluation.metrics`.
"""
from __future__ import annotations

import numpy as np

from clip_ddpm.clip.encoder import CLIPEncoder
from clip_ddpm.data import captions as caption_lib
from clip_ddpm.data import shapes
from clip_ddpm.data.dataset import ImageDataset
from clip_ddpm.evaluation import metrics


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


def evaluate_clip(encoder: CLIPEncoder, dataset: ImageDataset) -> dict[str, float]:
    """Zero-shot accuracies (class and, for shapes, shape and colour) and image->text recall@1.

    Class text embeddings are prompt ensembles (the mean over `prompt_templates_for`). Recall
    is measured against the dataset's own captions in two ways: "recall@1" counts a retrieved
    caption right when it is the image's caption word for word (duplicates are the same text);
    "recall@1_class" when it is any caption of an image of the same class.
    """
    image_embeds = encoder.encode_images(dataset.images)
    templates = prompt_templates_for(dataset)
    prompts = [prompt for template in templates for prompt in template]
    prompt_embeds = encoder.encode_texts(prompts).reshape(len(templates), dataset.num_classes, -1)
    class_embeds = metrics.class_text_embeddings(prompt_embeds.transpose(1, 0, 2))
    predicted = metrics.zero_shot_predictions(image_embeds, class_embeds)
    attributes = class_attributes(dataset)
    scores = metrics.attribute_accuracies(predicted, dataset.labels, attributes)
    out = {f"zero_shot_{name}": value for name, value in scores.items()}
    out["chance_class"] = 1.0 / dataset.num_classes
    out.update({f"chance_{name}": 1.0 / len(set(values.tolist())) for name, values in attributes.items()})

    caption_embeds = encoder.encode_texts(dataset.captions)
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

"""Phase 2: the judge of generated images, with its own accuracy on real images.

For the shapes it is the oracle: a CNN trained on real renders of another dataset seed, with
a shape and a colour head, kept in W/oracle. For a dataset of named classes without such an
oracle (flowers) it is zero-shot classification over the class names by a CLIP, preferably an
independent one, and its features are that CLIP's image embeddings.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from clip_ddpm.data import ImageDataset

from .files import read_json, write_json

ORACLE_DIR = "oracle"


@dataclasses.dataclass
class Judge:
    name: str  # how the report names it
    attributes: tuple[str, ...]  # what it reads off an image, e.g. ("shape", "colour")
    class_attributes: dict[str, np.ndarray]  # attribute value of each class label
    outputs: Callable[[np.ndarray], tuple[np.ndarray, dict[str, np.ndarray]]]  # uint8 images -> (features, predictions)
    real_accuracy: dict[str, float]  # on held-out real images: per attribute and "both"
    feature_space: str  # what the FD and diversity are measured in

    def targets(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        return {a: self.class_attributes[a][np.asarray(labels)] for a in self.attributes}


def shapes_oracle(study, image_size: int, real: ImageDataset, progress) -> Judge:
    """The shapes oracle, trained once per study and kept in W/oracle."""
    from flax import serialization

    from clip_ddpm.data import load_dataset
    from clip_ddpm.data.shapes import COLOURS, SHAPES
    from clip_ddpm.evaluation.oracle import OracleSpec, attribute_scores, oracle_outputs
    from clip_ddpm.training.oracle_training import train_oracle

    spec = OracleSpec(head_sizes=(len(SHAPES), len(COLOURS)), widths=tuple(study.oracle_widths),
                      feature_dim=study.oracle_feature_dim, steps=study.oracle_steps,
                      batch_size=study.oracle_batch_size, learning_rate=study.oracle_learning_rate,
                      seed=study.oracle_data_seed)
    folder = os.path.join(study.workdir, ORACLE_DIR)
    params_path, info_path = os.path.join(folder, "params.msgpack"), os.path.join(folder, "oracle.json")
    info = read_json(info_path)
    if info is not None and os.path.isfile(params_path):
        progress.note(f"oracle: trained earlier, loaded from {folder}")
        with open(params_path, "rb") as handle:
            params = serialization.msgpack_restore(handle.read())
    else:
        train = load_dataset("shapes", "train", image_size, seed=study.oracle_data_seed,
                             num_images=study.oracle_images)
        progress.note(f"oracle: training on {len(train)} renders of dataset seed {study.oracle_data_seed}")
        params = train_oracle(train.images, [train.attributes["shape"], train.attributes["colour"]], spec)
        os.makedirs(folder, exist_ok=True)
        with open(params_path + ".tmp", "wb") as handle:
            handle.write(serialization.msgpack_serialize(params))
        os.replace(params_path + ".tmp", params_path)
        _, (shape, colour) = oracle_outputs(params, spec, real.images)
        accuracy = attribute_scores({"shape": shape, "colour": colour},
                                    {"shape": real.attributes["shape"], "colour": real.attributes["colour"]})
        info = {"accuracy_on_real": accuracy, "real_images": len(real), "real_set": real.name,
                "training_images": len(train), "training_set": train.name}
        write_json(info_path, info)

    def outputs(images: np.ndarray):
        features, (shape, colour) = oracle_outputs(params, spec, images)
        return features, {"shape": shape, "colour": colour}

    labels = np.arange(len(SHAPES) * len(COLOURS))
    return Judge("oracle CNN", ("shape", "colour"),
                 {"shape": labels // len(COLOURS), "colour": labels % len(COLOURS)}, outputs,
                 info["accuracy_on_real"], "oracle features")


def clip_zero_shot_judge(encoder, clip_name: str, real: ImageDataset, independent: bool) -> Judge:
    """Zero-shot classification over the class names (prompt ensemble of the dataset's
    templates) with `encoder`; its image embeddings are the feature space."""
    from clip_ddpm.clip.train.evaluation import prompt_templates_for
    from clip_ddpm.evaluation import metrics
    from clip_ddpm.evaluation.oracle import attribute_scores

    templates = prompt_templates_for(real)
    prompts = [p for template in templates for p in template]
    embeds = encoder.encode_texts(prompts).reshape(len(templates), real.num_classes, -1)
    class_embeds = metrics.class_text_embeddings(embeds.transpose(1, 0, 2))

    def outputs(images: np.ndarray):
        features = encoder.encode_images(images)
        return features, {"class": metrics.zero_shot_predictions(features, class_embeds)}

    _, predictions = outputs(real.images)
    accuracy = attribute_scores(predictions, {"class": real.labels})
    kind = "independent" if independent else "conditioning"
    return Judge(f"zero-shot {kind} CLIP ({clip_name})", ("class",), {"class": np.arange(real.num_classes)},
                 outputs, accuracy, f"{kind} CLIP image embeddings")

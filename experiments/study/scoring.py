"""Phases 4 and 5: sample every variant from the prompt sets and score the samples.

Validation prompts are drawn at every guidance weight w; each variant's w is the one with the
best mean validation accuracy over seeds; the test prompts are then drawn at that w only, so the
reported numbers never took part in choosing it. Per (variant, seed) the images and scores are
kept in W/variants/NAME/seedS/study/, and a resumed study reuses them.

Scores of one set of samples: the judge's accuracy per attribute and on all of them ("both"),
the Fréchet distance of the judge's features to the real test images, the saturation of the
image border (the shapes' backgrounds are grey), the CLIP score (100 x the
mean clipped cosine of image and prompt) with each scoring CLIP, the diversity (mean pairwise
feature distance within a prompt) and, with held-out pairs, the accuracy on seen and unseen
classes apart.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from clip_ddpm.evaluation.diversity import grouped_diversity
from clip_ddpm.evaluation.frechet import frechet_distance
from clip_ddpm.evaluation.image_stats import border_saturation
from clip_ddpm.evaluation.metrics import normalize
from clip_ddpm.evaluation.oracle import attribute_scores

from .files import read_json, write_json
from .judge import Judge
from .prompts import PromptSet
from .sampler import TrainedRun, contexts_for, draw


@dataclasses.dataclass
class Scorers:
    """What judges a set of samples."""

    judge: Judge
    real_features: np.ndarray  # judge features of the real test images (the FD reference)
    clips: dict  # label -> CLIPEncoder ("conditioning CLIP", "independent CLIP")
    holdout_classes: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Rows:
    """The images to draw: prompt index, class label and guidance weight of each."""

    prompt: np.ndarray
    label: np.ndarray
    guidance: np.ndarray


def rows_for(prompts: PromptSet, samples: int, guidance: Sequence[float]) -> Rows:
    """Row order (w, prompt, sample): every prompt `samples` times at every w."""
    per_w = np.repeat(np.arange(len(prompts.texts)), samples)
    return Rows(prompt=np.tile(per_w, len(guidance)),
                label=np.asarray(prompts.labels)[np.tile(per_w, len(guidance))],
                guidance=np.repeat(np.asarray(guidance, np.float32), len(per_w)))


def clip_score(encoder, images: np.ndarray, texts: Sequence[str], prompt_index: np.ndarray) -> float:
    """100 x mean over images of max(cos(image, its prompt), 0)."""
    image_embeds = normalize(encoder.encode_images(images))
    text_embeds = normalize(encoder.encode_texts(list(texts)))
    cosines = np.sum(image_embeds * text_embeds[np.asarray(prompt_index)], axis=1)
    return float(100.0 * np.mean(np.clip(cosines, 0.0, None)))


def score_images(scorers: Scorers, images: np.ndarray, labels: np.ndarray, prompt_index: np.ndarray,
                 texts: Sequence[str]) -> dict[str, float]:
    features, predictions = scorers.judge.outputs(images)
    targets = scorers.judge.targets(labels)
    out = {f"accuracy_{name}": value for name, value in attribute_scores(predictions, targets).items()}
    out["fd"] = frechet_distance(features, scorers.real_features)
    out["border_saturation"] = border_saturation(images)
    if np.max(np.bincount(prompt_index)) >= 2:
        out["diversity"] = grouped_diversity(features, prompt_index)
    for label, encoder in scorers.clips.items():
        out[f"clip_score_{label}"] = clip_score(encoder, images, texts, prompt_index)
    if scorers.holdout_classes:
        held = np.isin(labels, scorers.holdout_classes)
        correct = np.all([predictions[a] == targets[a] for a in scorers.judge.attributes], axis=0)
        out["accuracy_both_seen"] = float(np.mean(correct[~held])) if np.any(~held) else float("nan")
        out["accuracy_both_unseen"] = float(np.mean(correct[held])) if np.any(held) else float("nan")
    out["images"] = int(len(images))
    return out


def _study_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "study")


def sample_and_score(run: TrainedRun, prompts: PromptSet, samples: int, guidance: Sequence[float],
                     scorers: Scorers, settings, name: str) -> dict:
    """Scores per w (as a string key) of `prompts` drawn from `run`; cached in the run's study folder.

    An unconditional run is drawn once (w does not apply): its scores are filed under w = 0.
    """
    if run.info.condition == "none":
        guidance = [0.0]
    path = os.path.join(_study_dir(run.workdir), f"{name}.json")
    saved = read_json(path)
    if saved is not None and saved.get("guidance") == [float(w) for w in guidance] and saved.get("step") == run.step:
        return saved
    rows = rows_for(prompts, samples, guidance)
    contexts = contexts_for(run, prompts)
    if contexts is not None:
        contexts = contexts[rows.prompt]
    images = draw(run, contexts, rows.guidance, settings.sampler, settings.sampling_steps,
                  settings.sampling_batch, settings.sample_seed)
    os.makedirs(_study_dir(run.workdir), exist_ok=True)
    np.savez_compressed(os.path.join(_study_dir(run.workdir), f"{name}.npz"), images=images,
                        prompt=rows.prompt, label=rows.label, guidance=rows.guidance,
                        texts=np.asarray(prompts.texts))
    scores = {}
    for w in guidance:
        rows_w = rows.guidance == np.float32(w)
        scores[_w_key(w)] = score_images(scorers, images[rows_w], rows.label[rows_w], rows.prompt[rows_w],
                                         prompts.texts)
    result = {"guidance": [float(w) for w in guidance], "step": run.step, "scores": scores}
    write_json(path, result)
    return result


def _w_key(w: float) -> str:
    return f"{float(w):g}"


def real_references(scorers: Scorers, real_images: np.ndarray, real_labels: np.ndarray,
                    train_images: np.ndarray, prompts: PromptSet, samples: int, count: int) -> dict[str, float]:
    """The same scores for real images: judge accuracy on the real test images, FD of `count`
    training images to the test images, diversity of `samples` test images per class, and the
    CLIP score of the test images with their class's first test prompt."""
    out = {f"accuracy_{k}": v for k, v in scorers.judge.real_accuracy.items()}
    train_features, _ = scorers.judge.outputs(train_images[:count])
    out["fd"] = frechet_distance(train_features, scorers.real_features)
    out["border_saturation"] = border_saturation(real_images)
    keep = np.concatenate([np.flatnonzero(real_labels == k)[:samples] for k in np.unique(real_labels)])
    out["diversity"] = grouped_diversity(scorers.real_features[keep], real_labels[keep])
    first = {label: i for i, label in reversed(list(enumerate(prompts.labels)))}
    has_prompt = np.array([label in first for label in real_labels])
    prompt_index = np.array([first[label] for label in real_labels[has_prompt]])
    for label, encoder in scorers.clips.items():
        out[f"clip_score_{label}"] = clip_score(encoder, real_images[has_prompt], prompts.texts, prompt_index)
    out["fd_images"] = int(min(count, len(train_images)))
    out["real_images"] = int(len(real_images))
    return out


def choose_guidance(validation: dict[str, list[dict]], metric: str = "accuracy_both") -> dict[str, float]:
    """Per variant: the w whose validation score, averaged over seeds, is highest (the smaller w
    on a tie). `validation[variant]` lists each seed's sample_and_score result."""
    chosen = {}
    for variant, per_seed in validation.items():
        weights = per_seed[0]["guidance"]
        means = [np.mean([seed["scores"][_w_key(w)][metric] for seed in per_seed]) for w in weights]
        chosen[variant] = float(weights[int(np.argmax(means))])
    return chosen

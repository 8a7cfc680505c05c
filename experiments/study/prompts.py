"""The study's prompt sets: every class (for the shapes, every (shape, colour) pair) in phrasings
that neither the training captions nor the zero-shot prompts use.

Two disjoint sets: "validation" chooses the guidance weight of each variant, "test" is what the
results are reported on. A prompt knows its class, so samples drawn from it can be scored.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from clip_ddpm.data import captions as caption_lib
from clip_ddpm.data import shapes
from clip_ddpm.errors import UserError


@dataclasses.dataclass(frozen=True)
class PromptSet:
    name: str  # "validation" or "test"
    texts: tuple[str, ...]
    labels: tuple[int, ...]  # the class of each prompt
    templates: tuple[str, ...]


def known_templates(is_shapes: bool) -> frozenset[str]:
    """The phrasings the CLIP and the captions already use (study prompts must avoid them)."""
    if is_shapes:
        return frozenset(shapes.CAPTION_TEMPLATES) | frozenset(shapes.PROMPT_TEMPLATES)
    from clip_ddpm.data.tfds_data import SOURCES

    return frozenset(caption_lib.DEFAULT_TEMPLATES).union(*(source.templates for source in SOURCES.values()))


def fill(template: str, class_name: str, is_shapes: bool) -> str:
    """One prompt: shapes templates take {colour} and {shape}; others {a} or {name}."""
    if is_shapes:
        colour, shape = class_name.split(" ", 1)
        return caption_lib.with_articles(template.format(colour=colour, shape=shape))
    return caption_lib.fill(template, class_name)


def prompt_set(name: str, templates: Sequence[str], class_names: Sequence[str], is_shapes: bool,
               classes: Sequence[int] | None = None) -> PromptSet:
    """Every class (or `classes`) in every template, template-major."""
    used = sorted(set(templates) & known_templates(is_shapes))
    if used:
        raise UserError(f"{name} prompt phrasing {used[0]!r} is a training-caption or zero-shot template; "
                        "the study's prompts must be new phrasings")
    classes = list(range(len(class_names))) if classes is None else list(classes)
    texts, labels = [], []
    for template in templates:
        try:
            texts += [fill(template, class_names[k], is_shapes) for k in classes]
        except (KeyError, IndexError, ValueError):
            fields = "{colour} and {shape}" if is_shapes else "{a} or {name}"
            raise UserError(f"{name} prompt phrasing {template!r} must use {fields}") from None
        labels += classes
    return PromptSet(name, tuple(texts), tuple(labels), tuple(templates))

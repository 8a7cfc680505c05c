"""Captions and zero-shot prompts made from class names, shared by the tfds and folder sources.

Labelled photo datasets come without text, yet the text-conditioned variants and the CLIP
embedding cache need one caption per image. A handful of templates in the style of CLIP's
zero-shot prompts gives some linguistic variety without inventing content; the template of an
example is chosen from a stable key (a tfds id, a file path) with a fixed hash, so the caption of
an image does not depend on the process slicing, the read order or Python's hash salt.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence

# "{a}" is the class name with its indefinite article ("an iris"), "{name}" the bare name.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of {a}",
    "a picture of {a}",
    "{a}",
    "a close-up photo of {a}",
    "an image of {a}",
    "a cropped photo of {a}",
    "a good photo of the {name}",
    "a bright photo of {a}",
)

_VOWEL_START = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])(?!(?:uni|use|eu|one)\w*)")


def with_articles(text: str) -> str:
    """Turns "a" into "an" before a vowel sound ("a orange" -> "an orange")."""
    return _VOWEL_START.sub(lambda m: m.group(1) + "n ", text)


def readable_name(raw: str, renames: Mapping[str, str] | None = None) -> str:
    """A class name fit for a caption: underscores to spaces, single spaces, then `renames`.

    `renames` maps a cleaned name to a better one (e.g. "roses" -> "rose"); plurals are fixed
    by such explicit lists because no rule gets "iris", "cosmos" and "roses" all right.
    """
    name = " ".join(raw.replace("_", " ").split())
    if renames:
        name = renames.get(name, name)
    return name


def fill(template: str, name: str) -> str:
    """`template` with the class `name` put in ("{a}" gets the article, "{name}" does not)."""
    return with_articles(template.format(a=f"a {name}", name=name))


def caption(name: str, key: str, templates: Sequence[str] = DEFAULT_TEMPLATES) -> str:
    """The caption of one example of class `name`, its template fixed by the example's `key`."""
    return fill(templates[zlib.crc32(key.encode("utf-8")) % len(templates)], name)


def class_prompts(class_names: Sequence[str], template: str = "a photo of {a}") -> tuple[str, ...]:
    """One zero-shot prompt per class, in label order (for CLIP zero-shot classification)."""
    return tuple(fill(template, name) for name in class_names)

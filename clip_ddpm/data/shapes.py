"""Procedural captioned shapes: the embedded default dataset that needs no download.

One coloured shape per image on a neutral background, with a caption that names its colour,
shape (or a synonym) and often its size and background. Colour and shape are independent
factors, so (shape, colour) pairs can be held out of training to test compositional
generalisation, and both factors are returned as attribute labels for scoring samples.

Everything is drawn from numpy generators keyed by (seed, split), so a split is a pure function
of its parameters: the same on every host and every run, and the train, test, holdout and
validation streams never coincide. Shapes are rendered with signed distance functions, whose value in pixels gives
each pixel's edge coverage directly: anti-aliased edges at the cost of one evaluation per pixel.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clip_ddpm.data import DatasetError
from clip_ddpm.data.captions import with_articles
from clip_ddpm.data.dataset import ImageDataset
from clip_ddpm.data.process_slice import process_bounds, process_suffix

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "hexagon")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (35, 160, 60), "blue": (35, 80, 215),
    "yellow": (240, 210, 30), "purple": (135, 50, 175), "orange": (245, 135, 25),
}
# Neutral backgrounds only, so no background can match (or be named like) a shape colour.
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (238, 238, 238), "light grey": (190, 190, 190), "grey": (128, 128, 128),
    "dark grey": (64, 64, 64), "black": (22, 22, 22),
}
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_RGB)
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk", "disc", "dot"),
    "square": ("square", "block"),
    "triangle": ("triangle", "triangular shape"),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign"),
    "hexagon": ("hexagon", "hexagonal shape"),
}
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
# Label = shape index * len(COLOURS) + colour index.
CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for s in SHAPES for c in COLOURS)

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape}",
    "a {colour} {shape}",
    "{colour} {shape} on a {bg} background",
    "a picture of a {colour} {shape}",
    "a {size} {colour} {shape} on a {bg} background",
    "a photo of a {size} {colour} {shape}",
    "a {shape} in {colour}",
    "a {colour} {shape} against a {bg} background",
    "there is a {size} {colour} {shape} in the picture",
    "a {bg} background with a {colour} {shape}",
    "the {shape} is {colour}",
    "a drawing of a {size} {colour} {shape}",
)
# Zero-shot prompts in the caption style; average their embeddings for a prompt ensemble.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape}", "a picture of a {colour} {shape}", "a photo of a {colour} {shape}",
    "{colour} {shape}",
)
DEFAULT_NUM_IMAGES: dict[str, int] = {"train": 10000, "test": 1000, "holdout": 1000, "validation": 1000}
_STREAM = {"train": 0, "test": 1, "holdout": 2, "validation": 3}

_RADIUS = {0: (0.16, 0.22), 1: (0.30, 0.38)}  # fraction of the image side, by size index
_MAX_TILT = np.deg2rad(15.0)  # small rotations only: a square never turns into a diamond
_COLOUR_JITTER = 12.0


def class_prompts(template: str = "a {colour} {shape}") -> tuple[str, ...]:
    """One zero-shot prompt per class, in label order ({colour} and {shape} are filled in)."""
    return tuple(with_articles(template.format(colour=c, shape=s)) for s in SHAPES for c in COLOURS)


def class_index(name: str) -> int:
    """Label of a class name such as "red circle" (underscores and case are forgiven)."""
    clean = " ".join(name.replace("_", " ").lower().split())
    if clean not in CLASS_NAMES:
        raise DatasetError(f"unknown shapes class {name!r}: expected '<colour> <shape>' such as "
                           f"'red circle', colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)}")
    return CLASS_NAMES.index(clean)


def load(split: str = "train", image_size: int = 32, seed: int = 0, num_images: int | None = None,
         holdout_pairs: Sequence[str] | str = (), process_index: int = 0,
         process_count: int = 1) -> ImageDataset:
    """Renders split `split` ("train", "test", "holdout" or "validation") of the shapes dataset.

    "validation" is fresh renders of the training distribution, for choices made after training
    (such as which parameters to export) that must not look at the test images.
    holdout_pairs: class names ("red circle", ... or one comma-separated string) kept out of
      "train", "test" and "validation"; split "holdout" holds only them.
    With process_count > 1 only this process's contiguous slice of the global split is rendered.
    """
    if split not in _STREAM:
        raise DatasetError(f"shapes has splits {', '.join(_STREAM)}, not {split!r}")
    if image_size < 16:
        raise DatasetError(f"shapes needs image_size >= 16 to stay recognisable, got {image_size}")
    held = _holdout_classes(holdout_pairs)
    if split == "holdout":
        if not held:
            raise DatasetError("shapes split 'holdout' needs holdout_pairs (e.g. 'red circle')")
        classes = np.array(held)
    else:
        classes = np.array([k for k in range(len(CLASS_NAMES)) if k not in held])
        if not len(classes):
            raise DatasetError("holdout_pairs leaves no class for training")
    n = DEFAULT_NUM_IMAGES[split] if num_images is None else int(num_images)
    rng = np.random.default_rng([seed, _STREAM[split]])
    params = _draw_params(rng, n, classes, image_size)
    start, stop = process_bounds(n, process_index, process_count)
    params = {k: v[start:stop] for k, v in params.items()}

    name = f"shapes-{split}-{image_size}px-seed{seed}-n{n}"
    if held:
        name += "-holdout-" + "+".join(CLASS_NAMES[k].replace(" ", "_") for k in held)
    shape = params["label"] // len(COLOURS)
    colour = params["label"] % len(COLOURS)
    return ImageDataset(
        images=_render(params, image_size),
        labels=params["label"].astype(np.int32),
        class_names=CLASS_NAMES,
        captions=_captions(params),
        name=name + process_suffix(process_index, process_count),
        attributes={"shape": shape.astype(np.int32), "colour": colour.astype(np.int32),
                    "size": params["size"].astype(np.int32), "background": params["bg"].astype(np.int32)},
        attribute_names={"shape": SHAPES, "colour": COLOURS, "size": SIZES, "background": BACKGROUNDS},
    )


def _holdout_classes(pairs: Sequence[str] | str) -> tuple[int, ...]:
    if isinstance(pairs, str):
        pairs = [p for p in pairs.split(",") if p.strip()]
    return tuple(sorted({class_index(p) for p in pairs}))


def _draw_params(rng: np.random.Generator, n: int, classes: np.ndarray,
                 image_size: int) -> dict[str, np.ndarray]:
    """All random choices of a whole split, drawn in a fixed order so any slice is reproducible."""
    order = rng.permutation(n)
    slots = np.arange(n)
    label = classes[slots % len(classes)][order]  # classes as balanced as n allows
    size = ((slots // len(classes)) % 2)[order]  # and each class half small, half large
    lo = np.where(size == 1, _RADIUS[1][0], _RADIUS[0][0])
    hi = np.where(size == 1, _RADIUS[1][1], _RADIUS[0][1])
    radius = rng.uniform(lo, hi) * image_size
    margin = _EXTENT[label // len(COLOURS)] * radius + 0.5
    centre = rng.uniform(margin[:, None], image_size - margin[:, None], size=(n, 2))
    colour_rgb = np.array([COLOUR_RGB[c] for c in COLOURS], np.float32)[label % len(COLOURS)]
    return {
        "label": label, "size": size, "radius": radius, "cx": centre[:, 0], "cy": centre[:, 1],
        "tilt": rng.uniform(-_MAX_TILT, _MAX_TILT, n),
        "rgb": colour_rgb + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, (n, 3)),
        "bg": rng.integers(len(BACKGROUNDS), size=n),
        "grad_amp": rng.uniform(0.0, 30.0, n), "grad_dir": rng.uniform(0.0, 2 * np.pi, n),
        "noise_std": rng.uniform(0.0, 4.0, n), "noise_seed": rng.integers(2**62, size=n),
        "template": rng.integers(len(CAPTION_TEMPLATES), size=n),
        "shape_word": rng.integers(1 << 30, size=n), "size_word": rng.integers(1 << 30, size=n),
    }


def _captions(p: dict[str, np.ndarray]) -> tuple[str, ...]:
    out = []
    for i in range(len(p["label"])):
        shape = SHAPES[p["label"][i] // len(COLOURS)]
        size = SIZES[p["size"][i]]
        words = dict(
            colour=COLOURS[p["label"][i] % len(COLOURS)],
            shape=SHAPE_SYNONYMS[shape][p["shape_word"][i] % len(SHAPE_SYNONYMS[shape])],
            size=SIZE_SYNONYMS[size][p["size_word"][i] % len(SIZE_SYNONYMS[size])],
            bg=BACKGROUNDS[p["bg"][i]])
        out.append(with_articles(CAPTION_TEMPLATES[p["template"][i]].format(**words)))
    return tuple(out)


# Signed distance functions in shape-local units (shape radius 1, v pointing up); negative inside.

def _star_sdf(u, v, points: int, outer: float, inner: float, phase: float):
    """Distance to a star with `points` tips; inner = outer*cos(pi/points) gives a regular polygon.

    The angle is folded into half a sector, where the outline is one straight edge from a tip to
    the neighbouring inner corner, so the sign is exact and the magnitude is right near edges.
    """
    sector = 2 * np.pi / points
    rho = np.hypot(u, v)
    phi = np.mod(np.arctan2(v, u) - phase, sector)
    phi = np.minimum(phi, sector - phi)
    qx, qy = rho * np.cos(phi) - outer, rho * np.sin(phi)
    ex, ey = inner * np.cos(sector / 2) - outer, inner * np.sin(sector / 2)
    length = np.hypot(ex, ey)
    return (qx * ey - qy * ex) / length


def _box_sdf(u, v, half_w: float, half_h: float):
    qx, qy = np.abs(u) - half_w, np.abs(v) - half_h
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _regular(points: int, outer: float, phase: float):
    return lambda u, v: _star_sdf(u, v, points, outer, outer * np.cos(np.pi / points), phase)


_SDF = {
    "circle": lambda u, v: np.hypot(u, v) - 0.92,
    "square": _regular(4, 1.10, np.pi / 4),
    "triangle": lambda u, v: _star_sdf(u, v + 0.2, 3, 1.1, 0.55, np.pi / 2),  # centred on its box
    "star": lambda u, v: _star_sdf(u, v, 5, 1.12, 0.48, np.pi / 2),
    "cross": lambda u, v: np.minimum(_box_sdf(u, v, 0.3, 0.95), _box_sdf(u, v, 0.95, 0.3)),
    "hexagon": _regular(6, 1.0, 0.0),
}
# Farthest outline point from the centre (local units), to keep every shape inside the image.
_EXTENT = np.array([0.92, 1.10, 1.22, 1.12, 1.0, 1.0])


def _render(p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Draws the images of `p` in chunks of about a million pixels to bound memory."""
    n = len(p["label"])
    images = np.empty((n, size, size, 3), np.uint8)
    chunk = max(1, (1 << 20) // (size * size))
    for start in range(0, n, chunk):
        part = {k: v[start:start + chunk] for k, v in p.items()}
        images[start:start + chunk] = _render_chunk(part, size)
    return images


def _render_chunk(p: dict[str, np.ndarray], size: int) -> np.ndarray:
    f32 = lambda a: np.asarray(a, np.float32)[:, None, None]  # noqa: E731  (per-image scalar)
    grid = np.arange(size, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - f32(p["cx"])
    dy = grid[None, :, None] - f32(p["cy"])
    cos, sin, radius = f32(np.cos(p["tilt"])), f32(np.sin(p["tilt"])), f32(p["radius"])
    u = (cos * dx + sin * dy) / radius
    v = (sin * dx - cos * dy) / radius  # image rows grow downwards; v grows upwards
    dist = np.empty_like(u)
    shape = p["label"] // len(COLOURS)
    for k, name in enumerate(SHAPES):
        mask = shape == k
        if mask.any():
            dist[mask] = _SDF[name](u[mask], v[mask])
    coverage = np.clip(0.5 - dist * radius, 0.0, 1.0)[..., None]

    offset = grid / size - 0.5
    gradient = f32(p["grad_amp"]) * (f32(np.cos(p["grad_dir"])) * offset[None, None, :]
                                     + f32(np.sin(p["grad_dir"])) * offset[None, :, None])
    background = np.array([BACKGROUND_RGB[b] for b in BACKGROUNDS], np.float32)[p["bg"]]
    background = background[:, None, None, :] + gradient[..., None]
    image = background + coverage * (np.asarray(p["rgb"], np.float32)[:, None, None, :] - background)
    for i, (seed, std) in enumerate(zip(p["noise_seed"], p["noise_std"])):
        image[i] += std * np.random.default_rng(seed).standard_normal((size, size, 1), np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)

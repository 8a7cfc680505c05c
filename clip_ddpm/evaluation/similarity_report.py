"""A matrix with named rows and columns, shown two ways: an aligned text table and a heat map.

Pure presentation for `clip_ddpm.similarity` (nothing here knows about CLIP): the heat map is
drawn with PIL alone, with the values printed in the cells, optional image thumbnails beside
the rows and the column titles written vertically so long prompts fit.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Dark blue -> teal -> yellow, a perceptually ordered ramp (low -> high).
RAMP = np.array([(48, 18, 59), (40, 100, 190), (30, 170, 150), (140, 210, 80), (250, 230, 40)], np.float32)
_WIDE_TITLE = 24


def format_table(matrix: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str],
                 digits: int = 4) -> str:
    """The matrix as right-aligned columns under their titles, one row per line.

    Column titles longer than a few words are replaced by t1, t2, ... and listed underneath,
    so the numbers stay in narrow columns whatever the prompts are.
    """
    matrix = np.asarray(matrix)
    if matrix.shape != (len(row_labels), len(column_labels)):
        raise ValueError(f"matrix {matrix.shape} does not match {len(row_labels)} rows x "
                         f"{len(column_labels)} columns")
    legend = any(len(c) > _WIDE_TITLE for c in column_labels)
    titles = [f"t{j + 1}" for j in range(len(column_labels))] if legend else list(column_labels)
    cells = [[f"{v:.{digits}f}" for v in row] for row in matrix]
    widths = [max([len(t)] + [len(r[j]) for r in cells]) for j, t in enumerate(titles)]
    label_width = max([0] + [len(r) for r in row_labels])
    lines = ["  ".join([" " * label_width] + [t.rjust(w) for t, w in zip(titles, widths)])]
    for label, row in zip(row_labels, cells):
        lines.append("  ".join([label.ljust(label_width)] + [c.rjust(w) for c, w in zip(row, widths)]))
    if legend:
        lines += [""] + [f"t{j + 1}: {c}" for j, c in enumerate(column_labels)]
    return "\n".join(lines)


def _colour(value: float, low: float, high: float) -> tuple[int, int, int]:
    x = 0.5 if high <= low else (value - low) / (high - low)
    position = float(np.clip(x, 0.0, 1.0)) * (len(RAMP) - 1)
    i = min(int(position), len(RAMP) - 2)
    rgb = RAMP[i] + (position - i) * (RAMP[i + 1] - RAMP[i])
    return tuple(int(round(c)) for c in rgb)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def draw_heatmap(matrix: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str],
                 thumbnails: Sequence[np.ndarray] | None = None, cell: int = 72, digits: int = 3) -> Image.Image:
    """An RGB picture of the matrix: one coloured cell per value (colour scaled between the
    matrix's own minimum and maximum), the value written in it, rows and columns titled."""
    matrix = np.asarray(matrix, np.float64)
    rows, cols = matrix.shape
    font = ImageFont.load_default()
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_width = max([0] + [_text_size(scratch, r, font)[0] for r in row_labels]) + 8
    thumb = cell if thumbnails is not None else 0
    title_height = max([0] + [_text_size(scratch, c, font)[0] for c in column_labels]) + 8
    left, top = row_width + thumb, title_height
    picture = Image.new("RGB", (left + cols * cell + 1, top + rows * cell + 1), "white")
    draw = ImageDraw.Draw(picture)
    low, high = (float(matrix.min()), float(matrix.max())) if matrix.size else (0.0, 1.0)
    for j, title in enumerate(column_labels):
        width, height = _text_size(draw, title, font)
        label = Image.new("RGB", (width + 4, height + 6), "white")
        ImageDraw.Draw(label).text((2, 1), title, fill="black", font=font)
        label = label.rotate(90, expand=True)
        picture.paste(label, (left + j * cell + (cell - label.width) // 2, top - 4 - label.height))
    for i, title in enumerate(row_labels):
        y = top + i * cell
        draw.text((4, y + (cell - _text_size(draw, title, font)[1]) // 2), title, fill="black", font=font)
        if thumbnails is not None:
            image = Image.fromarray(np.asarray(thumbnails[i], np.uint8)).convert("RGB")
            image.thumbnail((cell - 4, cell - 4))
            picture.paste(image, (row_width + (cell - image.width) // 2, y + (cell - image.height) // 2))
        for j in range(cols):
            x = left + j * cell
            colour = _colour(matrix[i, j], low, high)
            draw.rectangle((x, y, x + cell, y + cell), fill=colour, outline="white")
            text = f"{matrix[i, j]:.{digits}f}"
            width, height = _text_size(draw, text, font)
            ink = "black" if sum(colour) > 380 else "white"
            draw.text((x + (cell - width) // 2, y + (cell - height) // 2), text, fill=ink, font=font)
    return picture

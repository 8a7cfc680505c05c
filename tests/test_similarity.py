"""The similarity tool against cosines computed by hand from transformers' PyTorch CLIPModel."""
from __future__ import annotations

import io
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from clip_fixtures import make_tiny_clip
from PIL import Image

from clip_ddpm.clip.similarity import SimilarityError, read_images, run_similarity
from clip_ddpm.errors import UserError
from clip_ddpm.evaluation import similarity_report

TEXTS = ["a red circle on a blue background", "a photo of a cat sitting on a mat"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sim") / "clip"
    model = make_tiny_clip(directory, seed=2)
    return directory, model


@pytest.fixture()
def image_files(tmp_path):
    rng = np.random.default_rng(7)
    paths = []
    for name, (h, w), mode in [("a.png", (30, 44), "RGB"), ("b.jpg", (64, 64), "RGB"), ("c.png", (50, 20), "RGBA")]:
        pixels = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
        path = tmp_path / name
        Image.fromarray(pixels, mode).save(path)
        paths.append(str(path))
    return paths


def _features(x) -> np.ndarray:
    """transformers 5 may wrap the projected features in an output object."""
    x = getattr(x, "pooler_output", x) if not isinstance(x, torch.Tensor) else x
    return x.detach().numpy().astype(np.float64)


def _reference(model, directory, paths, texts):
    """cosine and raw dot-product matrices from the PyTorch model, computed by hand."""
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(str(directory))
    images = [Image.open(p) for p in paths]
    with torch.no_grad():
        pixels = torch.tensor(processor(images=images, return_tensors="np")["pixel_values"])
        image = _features(model.get_image_features(pixel_values=pixels))
        tokens = tokenizer(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        text = _features(model.get_text_features(**tokens))
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    return unit(image) @ unit(text).T, image @ text.T


def _printed_tables(text: str) -> list[np.ndarray]:
    """Every table in the output, as the float matrix its rows show."""
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        numbers = re.findall(r"(?<!\S)-?\d+\.\d{4}(?!\S)", line)
        if numbers:
            rows.append([float(n) for n in numbers])
        elif rows:
            tables.append(np.array(rows))
            rows = []
    return tables


def test_matrix_matches_transformers_and_heatmap_is_written(tiny, image_files, tmp_path):
    directory, model = tiny
    heatmap = tmp_path / "maps" / "sim.png"
    out = io.StringIO()
    result = run_similarity(str(directory), image_files, TEXTS, raw=True, heatmap=str(heatmap), out=out)
    cosine, raw = _reference(model, directory, image_files, TEXTS)

    assert result.cosine.shape == (3, 2) and result.image_labels == ("a.png", "b.jpg", "c.png")
    np.testing.assert_allclose(result.cosine, cosine, rtol=0, atol=2e-5)
    np.testing.assert_allclose(result.raw, raw, rtol=1e-4, atol=1e-5)
    printed = out.getvalue()
    tables = _printed_tables(printed)
    assert len(tables) == 2 and tables[0].shape == (3, 2) and tables[1].shape == (3, 2), printed
    np.testing.assert_allclose(tables[0], cosine, rtol=0, atol=6e-5)
    np.testing.assert_allclose(tables[1], raw, rtol=0, atol=6e-5 * max(1.0, np.abs(raw).max()))
    assert [line.split()[0] for line in printed.splitlines()[2:5]] == ["a.png", "b.jpg", "c.png"]
    assert "t1: " + TEXTS[0] in printed and "t2: " + TEXTS[1] in printed  # long titles go to a legend

    picture = np.asarray(Image.open(heatmap).convert("RGB"))
    assert picture.shape[0] > 3 * 72 and picture.shape[1] > 2 * 72
    # The colour of a cell's corner follows its value: lowest at one end of the ramp, highest at the other.
    (lo_i, lo_j), (hi_i, hi_j) = (np.unravel_index(f(cosine), cosine.shape) for f in (np.argmin, np.argmax))
    height, width = picture.shape[:2]
    top, left = height - 1 - 3 * 72, width - 1 - 2 * 72
    corner = lambda i, j: tuple(picture[top + i * 72 + 4, left + j * 72 + 4])  # noqa: E731
    assert corner(lo_i, lo_j) == tuple(similarity_report.RAMP[0].astype(int))
    assert corner(hi_i, hi_j) == tuple(similarity_report.RAMP[-1].astype(int))

    with pytest.raises(SimilarityError, match="exists; pass --overwrite"):
        run_similarity(str(directory), image_files, TEXTS, heatmap=str(heatmap), out=io.StringIO())


def test_unreadable_image_and_empty_inputs_are_one_line_errors(tiny, image_files, tmp_path):
    directory, _ = tiny
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    for call, message in [
        (lambda: read_images([image_files[0], str(broken)]), "is not a readable image"),
        (lambda: run_similarity(str(directory), [], TEXTS, out=io.StringIO()), "at least one --image"),
        (lambda: run_similarity(str(directory), image_files, [" "], out=io.StringIO()), "non-empty --text"),
        (lambda: run_similarity(str(directory), image_files, TEXTS, heatmap="x.jpg"), "must end in .png"),
    ]:
        with pytest.raises(SimilarityError, match=message) as error:
            call()
        assert isinstance(error.value, UserError) and "\n" not in str(error.value)


def test_table_layout():
    table = similarity_report.format_table(np.array([[0.5, -0.25]]), ["img"], ["cat", "dog"], digits=2)
    assert table.splitlines() == ["      cat    dog", "img  0.50  -0.25"]
    with pytest.raises(ValueError, match="does not match"):
        similarity_report.format_table(np.zeros((2, 2)), ["a"], ["b", "c"])


def test_command_line_missing_image_is_one_error_line(tiny, tmp_path):
    directory, _ = tiny
    missing = tmp_path / "nowhere.png"
    result = subprocess.run(
        [sys.executable, "-m", "clip_ddpm.similarity", f"--clip_model={directory}", f"--image={missing}",
         "--text=a red circle"], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and result.stdout == ""
    assert lines == [f"error: --image {missing}: no such file"], result.stderr
